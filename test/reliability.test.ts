// What a careful tester broke (issue 8, section 1), one claim per test, in the order.
// Every test here failed on the main before the kernel layer; each now holds in both flavours.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  LoRADisposedError, LoRAError, LoRAMemoryError, LoRANonFiniteError, LoRARangeError, LoRAStateError, LoRATypeError,
  type LoRAWasm, type Matrix, init,
} from '../src/index.js';
import { KernelLayer } from '../src/kernel/kernel.js';
import type { Kernels } from '../src/kernel/kernels.js';
import { WasmHeap } from '../src/memory/heap.js';
import { LoRAWasm as Facade } from '../src/lorawasm.js';
import { BUILD, assertBitIdentical, assertThrowsTyped, lwUnderTest, randomF32, rng } from './helpers.js';
import { bound } from './reference.js';

/** A fresh instance of its own (a distinct cap gives a distinct memoised instance). */
const fresh = (mib: number): Promise<LoRAWasm> => init({ simd: BUILD, maxMemoryBytes: mib * 2 ** 20 });
const snapshot = (ms: Matrix[]): Float32Array[] => ms.map((m) => m.toArray());
const assertUnchanged = (ms: Matrix[], before: Float32Array[], label: string): void =>
  ms.forEach((m, i) => assertBitIdentical(m.data, before[i]!, `${label}: matrix ${i} unchanged`));

// ---------------------------------------------------------------- safe merges that overflowed in f32

test('safe merge: s·A that overflows f32 is placed so the exact, finite result comes out (1e10 + 1, B = 0, 1.5e38)', async () => {
  const lw = await lwUnderTest();
  const f = Math.fround;
  for (const [a, b, s] of [[1e10, 1e-30, 1e30], [1e10, 0, 1e30], [2, 0.25, 3e38]] as const) {
    const exact = f(a) * f(b) * f(s); // the true Δ of the f32 inputs, in f64
    const within = (got: number, want: number, what: string) =>
      assert.ok(Number.isFinite(got) && Math.abs(got - want) <= bound(1, 4, Math.abs(want)), `${what} a=${a} b=${b} s=${s}: ${got} vs ${want}`);
    for (const safe of [true, false]) {
      using W = lw.matrix(1, 1, [1]);
      using A = lw.matrix(1, 1, [a]);
      using B = lw.matrix(1, 1, [b]);
      lw.merge(W, A, B, { scale: s, safe });
      within(W.data[0]!, 1 + exact, `merge safe=${safe}`);
      using W0 = lw.matrix(1, 1, [1]);
      using out = lw.matrix(1, 1);
      lw.mergeInto(out, W0, A, B, { scale: s, safe });
      assert.is(out.data[0], W.data[0], 'mergeInto equals merge bit for bit');
    }
    using A = lw.matrix(1, 1, [a]);
    using B = lw.matrix(1, 1, [b]);
    using D = lw.delta(A, B, { scale: s });
    within(D.data[0]!, exact, 'delta');
  }
});

test('a merge whose s·A·B cannot be formed in f32, or overflows, is refused with W untouched (safe or not)', async () => {
  const lw = await lwUnderTest();
  for (const safe of [true, false]) {
    using W = lw.matrix(1, 2, [1, 2]);
    using A = lw.matrix(1, 1, [3e38]);
    using B = lw.matrix(1, 2, [3e38, 1]);
    assertThrowsTyped(() => lw.merge(W, A, B, { scale: 3e38, safe }), LoRANonFiniteError, ['merge:', 'W']);
    assert.equal(Array.from(W.data), [1, 2], `safe=${safe}: W untouched`);
    using A2 = lw.matrix(1, 2, [3e38, 3e38]);
    using B2 = lw.matrix(2, 2, [1, 1, 1, 1]);
    assertThrowsTyped(() => lw.merge(W, A2, B2, { safe }), LoRANonFiniteError, ['overflow']);
    assert.equal(Array.from(W.data), [1, 2]);
    assertThrowsTyped(() => lw.delta(A2, B2), LoRANonFiniteError, ['delta:', 'overflows f32']);
  }
});

// ---------------------------------------------------------------- cross-instance

test("optimizers, layers and sequential refuse another instance's matrices and layers", async () => {
  const lw = await lwUnderTest();
  const other = await fresh(33);
  using stranger = lw.matrix(64, 64, randomF32(rng(1), 64 * 64));
  const before = stranger.toArray();
  const value = other.matrix(64, 64, randomF32(rng(2), 64 * 64));
  const grad = other.matrix(64, 64, randomF32(rng(3), 64 * 64));
  const live = lw.memoryStats().liveBlocks;
  assertThrowsTyped(() => lw.adamw([{ name: 'p', value, grad }]), LoRATypeError, ['adamw:', 'another lora-wasm instance']);
  assertThrowsTyped(() => lw.sgd([{ name: 'p', value, grad }]), LoRATypeError, ['sgd:', 'another lora-wasm instance']);
  assertThrowsTyped(() => lw.linear({ W: value, r: 2 }), LoRATypeError, ['linear:', 'another lora-wasm instance']);
  assertThrowsTyped(() => lw.sequential([other.relu()]), LoRATypeError, ['sequential:', 'layers[0]', 'another lora-wasm instance']);
  assert.is(lw.memoryStats().liveBlocks, live, 'nothing leaked');
  assertBitIdentical(stranger.data, before, 'no unrelated matrix changed');
  value.dispose();
  grad.dispose();
});

// ---------------------------------------------------------------- disposed memory behind a layer's back

test("a LoRALinear whose W was disposed refuses forward and merge; the block's new owner is untouched", async () => {
  const lw = await lwUnderTest();
  const W = lw.matrix(4, 4, new Float32Array(16).fill(1));
  const layer = lw.linear({ W, r: 2 });
  W.dispose();
  using stranger = lw.matrix(4, 4, new Float32Array(16).fill(7)); // reuses W's block
  assertThrowsTyped(() => layer.forward(lw.matrix(2, 4, new Float32Array(8).fill(1))), LoRADisposedError, ['forward:', 'W']);
  assertThrowsTyped(() => layer.merge(), LoRADisposedError, ['merge:', 'W']);
  assert.ok(stranger.data.every((v) => v === 7), 'stranger untouched');
  layer.dispose();
});

test('a disposed gradA makes backward throw before it writes; the new owner of the block is untouched', async () => {
  const lw = await lwUnderTest();
  using W = lw.matrix(6, 5, randomF32(rng(4), 30));
  const layer = lw.linear({ W, r: 3 });
  layer.forward(lw.matrix(2, 5, randomF32(rng(5), 10)));
  layer.gradA.dispose();
  using stranger = lw.matrix(6, 3, new Float32Array(18).fill(7));
  const B = layer.gradB.toArray();
  assertThrowsTyped(() => layer.backward(lw.matrix(2, 6, randomF32(rng(6), 12))), LoRADisposedError, ['backward:', 'gradA']);
  assert.ok(stranger.data.every((v) => v === 7), 'stranger untouched');
  assertBitIdentical(layer.gradB.data, B, 'gradB untouched');
  layer.dispose();
});

test('a disposed ReLU refuses forward and backward', async () => {
  const lw = await lwUnderTest();
  const relu = lw.relu();
  relu.forward({ rows: 1, cols: 2, data: Float32Array.from([1, -1]) });
  relu.dispose();
  assertThrowsTyped(() => relu.forward({ rows: 1, cols: 2, data: Float32Array.from([1, -1]) }), LoRADisposedError, ['forward:', 'disposed']);
  assertThrowsTyped(() => relu.backward({ rows: 1, cols: 2, data: Float32Array.from([1, 1]) }), LoRADisposedError, ['backward:', 'disposed']);
});

test("sgd.step() with a disposed grad throws and reads no stranger's block", async () => {
  const lw = await lwUnderTest();
  using value = lw.matrix(8, 8, new Float32Array(64).fill(1));
  const grad = lw.matrix(8, 8, new Float32Array(64).fill(1));
  const opt = lw.sgd([{ name: 'p', value, grad }], { lr: 0.5 });
  grad.dispose();
  using stranger = lw.matrix(8, 8, new Float32Array(64).fill(7));
  assertThrowsTyped(() => opt.step(), LoRADisposedError, ['step:', 'params[0].grad']);
  assert.ok(value.data.every((v) => v === 1), 'parameter untouched');
  assert.ok(stranger.data.every((v) => v === 7), 'stranger untouched');
  opt.dispose();
});

// ---------------------------------------------------------------- bare views

test('a bare m.data view is refused once its Matrix is disposed, and an unowned view on wasm memory is refused', async () => {
  const lw = await lwUnderTest();
  const m = lw.matrix(4, 4, new Float32Array(16).fill(1));
  const view = m.data;
  m.dispose();
  using stranger = lw.matrix(4, 4, new Float32Array(16).fill(7)); // takes m's block
  using A = lw.matrix(4, 1, [1, 1, 1, 1]);
  using B = lw.matrix(1, 4, [1, 1, 1, 1]);
  assertThrowsTyped(() => lw.merge({ rows: 4, cols: 4, data: view }, A, B), LoRADisposedError, ['merge:', 'W.data', 'disposed or garbage-collected']);
  assert.ok(stranger.data.every((v) => v === 7), 'stranger untouched');
  const unowned = new Float32Array(lw.memory.buffer, stranger.data.byteOffset, 16);
  assertThrowsTyped(() => lw.merge({ rows: 4, cols: 4, data: unowned }, A, B), LoRATypeError, ['no Matrix owns']);
  lw.merge({ rows: 4, cols: 4, data: stranger.data }, A, B); // its own live view is used in place
  assert.ok(stranger.data.every((v) => v === 8));
});

test('a bare view is refused after its dropped Matrix is garbage-collected', async () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) return; // Node runs with --expose-gc, Chromium with --js-flags=--expose-gc
  const lw = await fresh(35);
  let view: Float32Array | undefined = (() => lw.matrix(16, 16, new Float32Array(256).fill(1)).data)();
  for (let i = 0; i < 50 && lw.memoryStats().liveBlocks > 0; i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.is(lw.memoryStats().liveBlocks, 0, 'the backstop freed the dropped Matrix');
  using stranger = lw.matrix(16, 16, new Float32Array(256).fill(7));
  using A = lw.matrix(16, 1, new Float32Array(16).fill(1));
  using B = lw.matrix(1, 16, new Float32Array(16).fill(1));
  assertThrowsTyped(() => lw.merge({ rows: 16, cols: 16, data: view! }, A, B), LoRADisposedError, ['disposed or garbage-collected']);
  assert.ok(stranger.data.every((v) => v === 7), 'stranger untouched');
  view = undefined;
});

// ---------------------------------------------------------------- sources whose allocation grows memory

test('lw.matrix(r, c, src.data), lw.linear({ W: { data: m.data } }) and a bias view survive the memory growth of their own allocation', async () => {
  const lw = await fresh(37);
  const n = 512;
  const values = randomF32(rng(7), n * n);
  const src = lw.matrix(n, n, values);
  const grownFrom = lw.memoryStats().memoryBytes;
  const live = lw.memoryStats().liveBlocks;
  const copy = lw.matrix(n, n, src.data);
  assert.ok(lw.memoryStats().memoryBytes > grownFrom, 'the copy grew memory');
  assertBitIdentical(copy.data, values, 'copy');
  assert.is(lw.memoryStats().liveBlocks, live + 1);
  const bias = lw.matrix(1, n, randomF32(rng(8), n));
  const before = lw.memoryStats().memoryBytes;
  const layer = lw.linear({ W: { rows: n, cols: n, data: copy.data }, bias: { rows: 1, cols: n, data: bias.data }, r: 4 });
  assert.ok(lw.memoryStats().memoryBytes > before, 'the layer grew memory');
  assertBitIdentical(layer.W.data, values, 'layer W');
  assertBitIdentical(layer.bias!.data, bias.data, 'layer bias');
  for (const m of [src, copy, bias, layer]) m.dispose();
  assert.is(lw.memoryStats().liveBlocks, 0, 'nothing leaked');
});

// ---------------------------------------------------------------- failed calls leave nothing behind

test('a forward that runs out of memory leaves the last forward intact: backward still uses its X', async () => {
  const lw = await fresh(3);
  const g = rng(9);
  const w = randomF32(g, 32 * 24), x = randomF32(g, 5 * 24), gy = randomF32(g, 5 * 32);
  const make = (eng: LoRAWasm) => {
    const layer = eng.linear({ W: { rows: 32, cols: 24, data: w }, r: 4, seed: 3 });
    layer.A.data.set(randomF32(rng(10), 32 * 4));
    return layer;
  };
  const layer = make(lw);
  layer.forward({ rows: 5, cols: 24, data: x });
  // X [20000, 24] (1.9 MB) fits under the 3 MiB cap, Y [20000, 32] does not: the failure comes after X could be copied.
  assertThrowsTyped(() => layer.forward({ rows: 20_000, cols: 24, data: randomF32(rng(24), 20_000 * 24) }), LoRAMemoryError, ['forward:']);
  layer.backward({ rows: 5, cols: 32, data: gy });
  const ref = make(await lwUnderTest());
  ref.forward({ rows: 5, cols: 24, data: x });
  ref.backward({ rows: 5, cols: 32, data: gy });
  assertBitIdentical(layer.gradA.data, ref.gradA.data, 'gradA from the batch before the failure');
  assertBitIdentical(layer.gradB.data, ref.gradB.data, 'gradB');
  layer.dispose();
  ref.dispose();
});

test('after fit fails with LoRAMemoryError, a smaller batch succeeds as on a fresh model', async () => {
  // 2 MiB, a 32→256→256→4 MLP and a full batch of 256: the configuration that failed every retry before.
  const lw = await fresh(2);
  const N = 256;
  const x = Float32Array.from({ length: N * 32 }, (_, i) => Math.sin(i));
  const labels = Array.from({ length: N }, (_, i) => i % 4);
  const model = lw.sequential([
    lw.dense({ inFeatures: 32, outFeatures: 256 }), lw.relu(), lw.dense({ inFeatures: 256, outFeatures: 256 }), lw.relu(),
    lw.dense({ inFeatures: 256, outFeatures: 4 }),
  ]);
  const opt = lw.adamw(model.parameters());
  const live = lw.memoryStats().liveBlocks;
  assertThrowsTyped(() => model.fit({ rows: N, cols: 32, data: x }, labels, { loss: 'cross-entropy', optimizer: opt, batchSize: N }), LoRAMemoryError);
  assert.is(lw.memoryStats().liveBlocks, live, 'the failed run freed its batch buffers and activations');
  const r = model.fit({ rows: N, cols: 32, data: x }, labels, { loss: 'cross-entropy', optimizer: opt, batchSize: 32 });
  assert.is(r.steps, N / 32);
  model.dispose();
  opt.dispose();
});

test('an optimizer over two layers, one disposed, updates nothing before it throws', async () => {
  const lw = await lwUnderTest();
  using W1 = lw.matrix(6, 5, randomF32(rng(12), 30));
  using W2 = lw.matrix(4, 6, randomF32(rng(13), 24));
  const l1 = lw.linear({ W: W1, r: 2 }), l2 = lw.linear({ W: W2, r: 2 });
  const model = lw.sequential([l1, l2]);
  model.forward(lw.matrix(3, 5, randomF32(rng(14), 15)));
  model.backward(lw.matrix(3, 4, randomF32(rng(15), 12)));
  const opt = lw.adamw(model.parameters(), { lr: 0.1 });
  const before = snapshot([l1.A, l1.B]);
  l2.dispose();
  assertThrowsTyped(() => opt.step(), LoRADisposedError, ['step:']);
  assertUnchanged([l1.A, l1.B], before, 'first layer');
  assert.is(opt.t, 0, 'no step counted');
  l1.dispose();
  opt.dispose();
});

test('a failed optimizer construction leaks nothing', async () => {
  const lw = await lwUnderTest();
  using value = lw.matrix(3, 3), grad = lw.matrix(3, 3);
  const params = [{ name: 'p', value, grad }];
  const live = lw.memoryStats().liveBlocks;
  assertThrowsTyped(() => lw.adamw(params, { lr: Number.NaN }), LoRANonFiniteError, ['adamw: options.lr']);
  assertThrowsTyped(() => lw.adamw(params, { lr: -1 }), LoRARangeError, ['adamw: options.lr']);
  assertThrowsTyped(() => lw.adamw(params, { beta1: 1 }), LoRARangeError, ['options.beta1']);
  assertThrowsTyped(() => lw.sgd(params, { momentum: 2 }), LoRARangeError, ['options.momentum']);
  assertThrowsTyped(() => lw.sgd(params, { nesterov: true }), LoRARangeError, ['options.nesterov']);
  assert.is(lw.memoryStats().liveBlocks, live, 'no state allocated');
});

// ---------------------------------------------------------------- fit validates everything before the first update

test('fit refuses NaN/Inf data, bad labels (undefined, holes, 2³², 2³² + 1, 2³¹ in a later batch) and bad options before any update', async () => {
  const lw = await lwUnderTest();
  using W = lw.matrix(3, 4, randomF32(rng(16), 12));
  const layer = lw.linear({ W, r: 2 });
  layer.A.data.set(randomF32(rng(17), 6));
  const model = lw.sequential([layer]);
  const opt = lw.sgd(model.parameters(), { lr: 0.1 });
  const before = snapshot([layer.A, layer.B]);
  const N = 8;
  const x = randomF32(rng(18), N * 4);
  const X = { rows: N, cols: 4, data: x };
  const ce = { loss: 'cross-entropy' as const, optimizer: opt, batchSize: 2 };
  const badX = x.slice();
  badX[5] = Number.NaN;
  assertThrowsTyped(() => model.fit({ rows: N, cols: 4, data: badX }, [0, 1, 2, 0, 1, 2, 0, 1], ce), LoRANonFiniteError, ['fit: X[1, 1] is NaN']);
  const t = randomF32(rng(19), N * 3);
  t[7] = Number.POSITIVE_INFINITY;
  assertThrowsTyped(() => model.fit(X, { rows: N, cols: 3, data: t }, { loss: 'mse', optimizer: opt }), LoRANonFiniteError, ['fit: targets[2, 1] is Infinity']);
  const labelCases: [unknown[], string][] = [
    [[0, 1, undefined, 0, 1, 2, 0, 1], 'labels[2] is undefined'],
    // biome-ignore lint/suspicious/noSparseArray: a hole is the point
    [[0, 1, , 0, 1, 2, 0, 1], 'labels[2] is undefined'],
    [[0, 1, 2 ** 32, 0, 1, 2, 0, 1], `labels[2] is ${2 ** 32}`],
    [[0, 1, 2 ** 32 + 1, 0, 1, 2, 0, 1], `labels[2] is ${2 ** 32 + 1}`],
    [[0, 1, 2, 0, 1, 2, 0, 2 ** 31], `labels[7] is ${2 ** 31}`],
    [[0, 1, 2, 0, 1, 2, 0, 3], 'labels[7] is 3; labels must be integers in [0, 3)'],
  ];
  for (const [labels, words] of labelCases) {
    assertThrowsTyped(() => model.fit(X, labels as number[], ce), LoRARangeError, [words]);
  }
  assertThrowsTyped(() => model.fit(X, [0, 1, 2, 0, 1, 2, 0, 1], { ...ce, onProgress: 'x' as never }), LoRATypeError, ['options.onProgress']);
  assertThrowsTyped(() => model.fit(X, [0, 1, 2, 0, 1, 2, 0, 1], { ...ce, batchSize: '4' as never }), LoRATypeError, ['options.batchSize', '"4"']);
  assertThrowsTyped(() => model.fit(X, [0, 1, 2, 0, 1, 2, 0, 1], { ...ce, batchSize: 10.5 }), LoRARangeError, ['options.batchSize', '10.5']);
  assertUnchanged([layer.A, layer.B], before, 'no update');
  assert.is(lw.memoryStats().liveBlocks > 0, true);
  model.dispose();
  opt.dispose();
});

// ---------------------------------------------------------------- options finite in f64 but not in f32

test('options finite in f64 but not in f32 are refused, and lr is checked whenever it is set', async () => {
  const lw = await lwUnderTest();
  using X = lw.matrix(2, 3), Y = lw.matrix(3, 2), C = lw.matrix(2, 2);
  assertThrowsTyped(() => lw.gemm(C, X, Y, { alpha: 1e39 }), LoRANonFiniteError, ['gemm: options.alpha', 'f32']);
  assertThrowsTyped(() => lw.gemm(C, X, Y, { beta: 1e39 }), LoRANonFiniteError, ['gemm: options.beta']);
  using W = lw.matrix(4, 4);
  assertThrowsTyped(() => lw.linear({ W, r: 2, alpha: 1e39 }), LoRANonFiniteError, ['loraScale', 'f32']);
  using value = lw.matrix(2, 2), grad = lw.matrix(2, 2);
  assertThrowsTyped(() => lw.adamw([{ name: 'p', value, grad }], { lr: Number.POSITIVE_INFINITY }), LoRANonFiniteError, ['options.lr']);
  assertThrowsTyped(() => lw.adamw([{ name: 'p', value, grad }], { eps: 0 }), LoRARangeError, ['options.eps', '(0,']);
  const opt = lw.adamw([{ name: 'p', value, grad }], { lr: 0.01 });
  assertThrowsTyped(() => { opt.lr = Number.NaN; }, LoRANonFiniteError, ['adamw: lr']);
  assertThrowsTyped(() => { opt.lr = -1; }, LoRARangeError, ['adamw: lr']);
  assert.is(opt.lr, Math.fround(0.01), 'lr kept');
  opt.lr = 0.5;
  assert.is(opt.lr, 0.5);
  opt.dispose();
});

// ---------------------------------------------------------------- aliasing and values

test('mseLoss refuses a grad that overlaps pred; lw.matrix refuses non-numbers', async () => {
  const lw = await lwUnderTest();
  const buf = Float32Array.from([1, 2, 3, 4, 5, 6]);
  const target = { rows: 2, cols: 3, data: new Float32Array(6) };
  assertThrowsTyped(() => lw.mseLoss({ rows: 2, cols: 3, data: buf }, target, { rows: 2, cols: 3, data: buf }), LoRATypeError, ['mseLoss: grad', 'shares memory with pred']);
  using P = lw.matrix(2, 3, buf);
  assertThrowsTyped(() => lw.mseLoss(P, target, P), LoRATypeError, ['shares memory with pred']);
  assert.is(lw.mseLoss(P, target), (1 + 4 + 9 + 16 + 25 + 36) / 6);
  assertThrowsTyped(() => lw.matrix(1, 3, [1, 'x', {}] as never), LoRATypeError, ['matrix: data[1] is "x"']);
  using L = lw.matrix(2, 3);
  assertThrowsTyped(() => lw.softmaxCrossEntropy(L, [0, 1], L), LoRATypeError, ['grad', 'shares memory with logits']);
});

// ---------------------------------------------------------------- init

test('init never throws synchronously, and its errors are LoRAErrors of the right kind', async () => {
  const calls: [unknown, abstract new (...a: never[]) => Error, string][] = [
    [null, LoRATypeError, 'init: options must be an object'],
    [{ wasm: null }, LoRATypeError, 'init: options.wasm'],
    [{ wasm: { fast: new Uint8Array(8) } }, LoRATypeError, 'init: options.wasm'],
    [{ simd: 'fast' }, LoRATypeError, 'options.simd'],
    [{ maxMemoryBytes: '1GB' }, LoRATypeError, 'options.maxMemoryBytes'],
    // a valid module without our exports
    [{ wasm: new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]) }, LoRAError, "not a lora-wasm module of this version: it lacks 'heapBase'"],
  ];
  for (const [opts, cls, words] of calls) {
    let p: Promise<unknown> | undefined;
    try {
      p = init(opts as never);
    } catch (e) {
      assert.unreachable(`init(${JSON.stringify(opts)}) threw synchronously: ${(e as Error).message}`);
    }
    try {
      await p;
      assert.unreachable('resolved');
    } catch (e) {
      assert.instance(e, cls);
      assert.instance(e, LoRAError);
      assert.ok((e as Error).message.includes(words), (e as Error).message);
    }
  }
});

// ---------------------------------------------------------------- traps

async function wasmBytes(): Promise<ArrayBuffer | Uint8Array> {
  if ((globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node) {
    const fs = await import('node:fs');
    return fs.readFileSync(new URL(`../build/lora-${BUILD}.wasm`, import.meta.url));
  }
  return (await fetch(`/build/lora-${BUILD}.wasm`)).arrayBuffer();
}

test('a wasm trap inside a layer, an optimizer, fit or a merge surfaces as a LoRAError', async () => {
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 1024 });
  const { instance } = await WebAssembly.instantiate(await wasmBytes() as BufferSource, { env: { memory } });
  const real = instance.exports as unknown as Kernels;
  for (const [kernel, run] of [
    ['gemm', (lw: Facade) => lw.linear({ W: lw.matrix(8, 8), r: 2 }).forward(lw.matrix(4, 8))],
    ['adamwStep', (lw: Facade) => lw.adamw([{ name: 'p', value: lw.matrix(2, 2), grad: lw.matrix(2, 2) }]).step()],
    ['softmaxCrossEntropy', (lw: Facade) => {
      const model = lw.sequential([lw.dense({ inFeatures: 3, outFeatures: 2 })]);
      model.fit(lw.matrix(4, 3), [0, 1, 0, 1], { loss: 'cross-entropy', optimizer: lw.sgd(model.parameters()) });
    }],
    ['rankUpdate', (lw: Facade) => lw.merge(lw.matrix(4, 4), lw.matrix(4, 1), lw.matrix(1, 4))],
  ] as const) {
    const trapping = { ...real, [kernel]: () => { throw new WebAssembly.RuntimeError('unreachable executed'); } } as Kernels;
    const heap = new WasmHeap(memory, real.heapBase(), 1024 * 65536);
    const lw = new Facade({ build: BUILD, heap, kernel: new KernelLayer(heap, trapping) });
    try {
      run(lw);
      assert.unreachable(`${kernel}: no error`);
    } catch (e) {
      assert.instance(e, LoRAError, `${kernel}: ${(e as Error).name}`);
      assert.not.instance(e, WebAssembly.RuntimeError);
      assert.match((e as Error).message, /internal error, the wasm kernel trapped \(unreachable executed\)/);
    }
  }
});

// ---------------------------------------------------------------- memory floor

test('training fits under a small memory cap: scratch scales with the problem', async () => {
  const lw = await init({ simd: BUILD, maxMemoryBytes: 256 * 1024 });
  using W = lw.matrix(16, 12, randomF32(rng(20), 192));
  const model = lw.sequential([lw.linear({ W, r: 2 })]);
  const opt = lw.adamw(model.parameters(), { lr: 0.01 });
  const r = model.fit({ rows: 32, cols: 12, data: randomF32(rng(21), 384) }, { rows: 32, cols: 16, data: randomF32(rng(22), 512) }, { loss: 'mse', optimizer: opt, epochs: 2, batchSize: 8 });
  assert.is(r.steps, 8);
  assert.ok(lw.memoryStats().memoryBytes <= 256 * 1024);
  model.dispose();
  opt.dispose();
});

// ---------------------------------------------------------------- found by reading

test('layer.merge() refuses a NaN/Inf adapter like lw.merge does', async () => {
  const lw = await lwUnderTest();
  using W = lw.matrix(4, 4);
  const layer = lw.linear({ W, r: 2 });
  layer.A.data[3] = Number.NaN;
  assertThrowsTyped(() => layer.merge(), LoRANonFiniteError, ['A[1, 1] is NaN']);
  assert.not.ok(layer.merged, 'not merged');
  layer.dispose();
});

test('a merged layer re-merges when A or B changed (an optimizer step or a write to A.data): it never serves a stale W′', async () => {
  const lw = await lwUnderTest();
  const g = rng(23);
  using W = lw.matrix(5, 6, randomF32(g, 30));
  const layer = lw.linear({ W, r: 2, alpha: 4 });
  layer.A.data.set(randomF32(g, 10));
  const X = { rows: 3, cols: 6, data: randomF32(g, 18) };
  const onTheFly = () => {
    layer.unmerge();
    const y = layer.forward(X).toArray();
    layer.merge();
    return y;
  };
  const close = (a: Float32Array, b: Float32Array, label: string) =>
    a.forEach((v, i) => assert.ok(Math.abs(v - b[i]!) < 1e-5, `${label}: ${v} vs ${b[i]}`));
  // an optimizer step after merge
  layer.forward(X);
  layer.backward({ rows: 3, cols: 5, data: randomF32(g, 15) });
  const opt = lw.sgd(layer.parameters(), { lr: 0.5 });
  layer.merge();
  const stale = layer.forward(X).toArray();
  opt.step();
  const y1 = layer.forward(X).toArray();
  close(y1, onTheFly(), 'after step');
  assert.ok(y1.some((v, i) => v !== stale[i]), 'the step changed the output');
  // a direct write
  layer.B.data[0] = 3;
  const y2 = layer.forward(X).toArray();
  close(y2, onTheFly(), 'after a write to B.data');
  opt.dispose();
  layer.dispose();
});

test.run();
