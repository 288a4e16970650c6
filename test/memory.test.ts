import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRADisposedError, LoRAMemoryError, LoRANonFiniteError, LoRARangeError, LoRAShapeError, LoRATypeError, Matrix, init } from '../src/index.js';
import { BUILD, assertBitIdentical, assertThrowsTyped, lwUnderTest, randomF32, rng } from './helpers.js';
import { assertWithinBound, rankReference } from './reference.js';
import { type Block, WasmHeap } from '../src/memory/heap.js';
import { DTYPES, ITEM_BYTES } from '../src/memory/dtype.js';

const GiB = 2 ** 30;

test('10,000 allocate/dispose cycles leave wasm memory the same size', async () => {
  const lw = await lwUnderTest();
  // Warm up to the high-water mark once, then cycle.
  const r = rng(3);
  const sizes = Array.from({ length: 64 }, () => [1 + Math.floor(r() * 300), 1 + Math.floor(r() * 300)] as const);
  for (const [rows, cols] of sizes) lw.matrix(rows, cols).dispose();
  const before = lw.memoryStats();
  using A = lw.matrix(64, 4, randomF32(r, 256));
  using B = lw.matrix(4, 48, randomF32(r, 192));
  for (let i = 0; i < 10_000; i++) {
    const [rows, cols] = sizes[i % sizes.length]!;
    const m = lw.matrix(rows, cols);
    const n = lw.matrix(1 + (i % 17), 1 + (i % 23));
    if (i % 100 === 0) {
      const d = lw.delta(A, B); // operations allocate scratch too
      d.dispose();
    }
    (i % 2 ? m : n).dispose();
    (i % 2 ? n : m).dispose();
  }
  const after = lw.memoryStats();
  assert.is(after.memoryBytes, before.memoryBytes, 'memory did not grow');
  assert.is(after.liveBlocks, before.liveBlocks + 2, 'only A and B are live');
});

test('interleaved frees coalesce: a block freed in the middle is reused', async () => {
  const lw = await init({ build: BUILD, maxMemoryBytes: 41 * 2 ** 20 }); // its own heap: no holes left by other suites
  const a = lw.matrix(100, 100), b = lw.matrix(100, 100), c = lw.matrix(100, 100);
  const bPtr = b.ptr;
  b.dispose();
  const d = lw.matrix(50, 100); // fits in b's hole
  assert.ok(d.ptr >= bPtr && d.ptr < bPtr + 40_000, 'reused the freed block');
  for (const m of [a, c, d]) m.dispose();
});

test('Matrix.data stays valid after wasm memory grows; stored views detach', async () => {
  const lw = await init({ build: BUILD, threads: 1 }); // views detach only on non-shared memory
  const values = randomF32(rng(9), 35 * 3);
  using m = lw.matrix(35, 3, values);
  const stale = m.data;
  const grownFrom = lw.memoryStats().memoryBytes;
  using big = lw.matrix(4096, 1024 + Math.floor(grownFrom / 4096)); // larger than all of memory: forces growth
  assert.ok(lw.memoryStats().memoryBytes > grownFrom, 'memory grew');
  assertBitIdentical(m.data, values, 'm.data after growth');
  assert.is(stale.length, 0, 'a view taken before growth is detached (non-shared memory)');
  assert.is(m.data.buffer, lw.memory.buffer);
  assertBitIdentical(m.toArray(), values, 'toArray after growth');
  assert.is(big.data.length, big.rows * big.cols);
});

test('matrix() zero-fills, copies data, and toArray() returns a copy', async () => {
  const lw = await lwUnderTest();
  const dirty = lw.matrix(40, 40, new Float32Array(1600).fill(7));
  dirty.dispose();
  using z = lw.matrix(40, 40); // reuses the dirty block
  assert.ok(z.data.every((v) => v === 0), 'zero-filled even when reusing memory');
  using m = lw.matrix(2, 3, [1, 2, 3, 4, 5, 6]);
  const copy = m.toArray();
  copy[0] = 99;
  assert.is(m.data[0], 1, 'toArray is a copy');
  assert.is(m.length, 6);
  assert.is(String(Object.prototype.toString.call(m)), '[object Matrix [2, 3]]');
});

test('ITEM_BYTES is the element size of every dtype: the data view and the block agree with it', async () => {
  const lw = await lwUnderTest();
  assert.equal([...DTYPES], Object.keys(ITEM_BYTES), 'one entry per dtype');
  for (const dtype of DTYPES) {
    using m = dtype === 'f32' ? lw.matrix(3, 5) : lw.matrix(3, 5, undefined, { dtype });
    assert.is(m.data.BYTES_PER_ELEMENT, ITEM_BYTES[dtype], `${dtype} view`);
    assert.ok(m.block.size >= 15 * ITEM_BYTES[dtype], `${dtype} block holds 15 elements`);
  }
});

test('dispose() is idempotent, works with `using`, and later use throws LoRADisposedError', async () => {
  const lw = await lwUnderTest();
  const live = lw.memoryStats().liveBlocks;
  let escaped: Matrix;
  {
    using m = lw.matrix(3, 3);
    escaped = m;
    assert.is(lw.memoryStats().liveBlocks, live + 1);
  }
  assert.is(lw.memoryStats().liveBlocks, live, '`using` disposed it');
  assert.ok(escaped.disposed);
  escaped.dispose();
  assertThrowsTyped(() => escaped.data, LoRADisposedError, ['[3, 3]', 'disposed']);
  assertThrowsTyped(() => escaped.toArray(), LoRADisposedError);
});

test('a Matrix that is never disposed is freed after garbage collection (leak backstop)', async () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.type(gc, 'function', 'scripts/test.mjs runs node with --expose-gc');
  const lw = await lwUnderTest();
  const collect = async () => {
    gc!();
    await new Promise((resolve) => setTimeout(resolve, 10));
  };
  // Other suites in this process may have dropped matrices too: let those go first.
  for (let stable = 0, last = -1; stable < 3; ) {
    await collect();
    const now = lw.memoryStats().liveBlocks;
    stable = now === last ? stable + 1 : 0;
    last = now;
  }
  const live = lw.memoryStats().liveBlocks;
  (() => {
    for (let i = 0; i < 10; i++) lw.matrix(8, 8); // dropped without dispose()
  })();
  assert.is(lw.memoryStats().liveBlocks, live + 10);
  for (let i = 0; i < 50 && lw.memoryStats().liveBlocks > live; i++) await collect();
  assert.ok(lw.memoryStats().liveBlocks <= live, 'the FinalizationRegistry freed them');
});

test('a cap from init({ maxMemoryBytes }) gives LoRAMemoryError and leaves earlier matrices intact', async () => {
  const lw = await init({ build: BUILD, maxMemoryBytes: 8 * 2 ** 20 });
  const values = randomF32(rng(4), 1000 * 1500);
  using keep = lw.matrix(1000, 1500, values); // 6 MB of 8
  assertThrowsTyped(() => lw.matrix(1000, 1500), LoRAMemoryError, ['matrix:', 'cannot allocate', 'maxMemoryBytes']);
  using A = lw.matrix(1000, 1, new Float32Array(1000).fill(1));
  using B = lw.matrix(1, 1500, new Float32Array(1500).fill(1));
  const live = lw.memoryStats().liveBlocks;
  assertThrowsTyped(() => lw.delta(A, B), LoRAMemoryError, ['delta:']);
  const plainW = { rows: 1000, cols: 1500, data: values.slice() };
  assertThrowsTyped(() => lw.merge(plainW, A, B), LoRAMemoryError, ['merge:']);
  assertBitIdentical(plainW.data, values, 'plain W untouched');
  assert.is(lw.memoryStats().liveBlocks, live, 'failed calls freed what they had allocated');
  assertBitIdentical(keep.data, values, 'earlier matrix intact');
  lw.merge(keep, A, B); // still usable
  assert.is(lw.memoryStats().liveBlocks, live);
  assert.is(keep.data[0], values[0]! + 1);
});

test('allocation past the 4 GiB wasm32 limit throws LoRAMemoryError and earlier matrices stay intact', async () => {
  const lw = await init({ build: BUILD, maxMemoryBytes: 4 * GiB });
  assertThrowsTyped(() => lw.matrix(65536, 65536), LoRAMemoryError, ['16.00 GiB', 'wasm32 maximum']);
  const big = lw.matrix(24576, 32768); // 3 GiB, zero pages are not touched
  big.data[0] = 1.5;
  big.data[big.length - 1] = -2.5;
  assertThrowsTyped(() => lw.matrix(16384, 32768), LoRAMemoryError, ['2.00 GiB']);
  assert.is(big.data[0], 1.5);
  assert.is(big.data[big.length - 1], -2.5);
  // Kernels on matrices above 3 GiB: pointers past 2^31 must not be read as negative.
  const r = rng(12);
  const w = randomF32(r, 37 * 29), a = randomF32(r, 37 * 5), b = randomF32(r, 5 * 29);
  {
    using W = lw.matrix(37, 29, w);
    using A = lw.matrix(37, 5, a);
    using B = lw.matrix(5, 29, b);
    assert.ok(W.ptr > 3 * GiB && B.ptr > 3 * GiB, 'allocated above 3 GiB');
    lw.merge(W, A, B, { scale: 0.5, safe: true });
    assertWithinBound(W.data, rankReference(w, a, b, 37, 5, 29, 0.5), 5, 'merge above 3 GiB');
    A.data[7] = Number.NaN;
    assertThrowsTyped(() => lw.merge(W, A, B), LoRANonFiniteError, ['A[1, 2] is NaN']);
  }
  big.dispose();
  assert.is(lw.memoryStats().liveBlocks, 0);
});

test('init rejects a bad maxMemoryBytes: out of range is a LoRARangeError, not a number a LoRATypeError', async () => {
  for (const [bad, cls] of [[0, LoRARangeError], [-1, LoRARangeError], [1024, LoRARangeError], [5 * GiB, LoRARangeError], [Number.NaN, LoRARangeError], ['1GB', LoRATypeError]] as const) {
    try {
      await init({ maxMemoryBytes: bad as number });
      assert.unreachable(`accepted ${String(bad)}`);
    } catch (e) {
      assert.instance(e, cls, String(bad));
      assert.match((e as Error).message, /init: options\.maxMemoryBytes/);
    }
  }
});

test('matrix() rejects bad dims and data with typed errors', async () => {
  const lw = await lwUnderTest();
  for (const [rows, cols] of [[0, 3], [-1, 3], [2.5, 3], [Number.NaN, 3], [3, Infinity], ['3', 3], [3, null]] as const) {
    assertThrowsTyped(() => lw.matrix(rows as number, cols as number), LoRAShapeError, ['matrix:', 'positive integer']);
  }
  assertThrowsTyped(() => lw.matrix(2, 2, new Float64Array(4) as unknown as Float32Array), LoRATypeError, ['Float64Array', 'Float32Array.from']);
  assertThrowsTyped(() => lw.matrix(2, 2, [1, 2, 3]), LoRAShapeError, ['length 3', '[2, 2]', '4']);
  assertThrowsTyped(() => lw.matrix(2, 2, 'abcd' as unknown as number[]), LoRATypeError);
});

test('heap property test: random alloc/free never overlaps, keeps the free list sorted and coalesced, and lowers the top', () => {
  const heap = new WasmHeap(new WebAssembly.Memory({ initial: 1, maximum: 512 }), 1000, 512 * 65536);
  const g = rng(77);
  const live: Block[] = [];
  const check = (step: number) => {
    const { base, top, free, live: blocks } = heap.layout();
    const ranges = [...blocks.map((b) => ({ ...b, kind: 'live' })), ...free.map((f) => ({ ...f, kind: 'free' }))].sort((a, b) => a.ptr - b.ptr);
    let at = base;
    for (const r of ranges) {
      assert.ok(r.ptr % 64 === 0 && r.size % 64 === 0 && r.size > 0, `step ${step}: aligned ${r.kind} range`);
      assert.is(r.ptr, at, `step ${step}: ranges tile [base, top) with no overlap and no gap (at ${r.ptr}, expected ${at})`);
      at = r.ptr + r.size;
    }
    assert.is(at, top, `step ${step}: the ranges end at the top`);
    for (let i = 1; i < free.length; i++) {
      assert.ok(free[i - 1]!.ptr + free[i - 1]!.size < free[i]!.ptr, `step ${step}: free list sorted and coalesced`);
    }
    const last = ranges.at(-1);
    assert.ok(!last || last.kind === 'live', `step ${step}: no free range at the top (the top was lowered)`);
    assert.is(blocks.length, live.length, `step ${step}: live count`);
  };
  for (let step = 0; step < 4000; step++) {
    if (live.length === 0 || g() < 0.55) {
      const bytes = g() < 0.1 ? 1 + Math.floor(g() * 200_000) : 1 + Math.floor(g() * 3000);
      live.push(heap.alloc(bytes, 'prop'));
    } else {
      const [b] = live.splice(Math.floor(g() * live.length), 1);
      heap.free(b!);
      assert.not.ok(heap.isLive(b!), 'a freed block is dead');
    }
    check(step);
  }
  for (const b of live.splice(0)) heap.free(b);
  check(-1);
  const end = heap.layout();
  assert.is(end.top, end.base, 'everything freed: the top is back at the base');
  assert.equal(end.free, [], 'and the free list is empty');
  assert.is(heap.stats().allocations > 2000, true);
});

test.run();
