// Threads: every kernel gives bit-identical results on 1, 2 and 3 threads (runs in Node and in a
// cross-origin-isolated Chromium page). The split thresholds are lowered to 1 here, so that every
// shape is split over every thread as far as its tiles allow: the split is under test, not the size.
// Node-only checks (the builds on disk, process exit, killed workers) are in threads-node.test.ts.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { type LoRAWasm, LoRARangeError, LoRATypeError, init } from '../src/index.js';
import { splitPolicy } from '../src/kernel/scheduler.js';
import { BUILD, randInt, randomF32, rng } from './helpers.js';
import { SHAPES } from './shapes.js';

const COUNTS = [1, 2, 3];
const instances = (): Promise<LoRAWasm[]> => Promise.all(COUNTS.map((threads) => init({ simd: BUILD, threads })));

/** Runs `body` with every call split as finely as its tiles allow; checks the workers took part. */
async function splitEverything<T>(lws: LoRAWasm[], body: () => Promise<T> | T): Promise<T> {
  const saved = { ...splitPolicy };
  const runs = lws.map((lw) => lw.workerPool?.runs ?? 0);
  splitPolicy.minMacs = 1;
  splitPolicy.minBytes = 1;
  try {
    const result = await body();
    lws.slice(1).forEach((lw, i) => assert.ok(lw.workerPool!.runs > runs[i + 1]!, `threads ${lw.threads}: the workers ran jobs`));
    return result;
  } finally {
    Object.assign(splitPolicy, saved);
  }
}

/** Bits of a result, for exact comparison (NaN payloads and -0 included). */
const bits = (a: Float32Array | Uint16Array): string => Array.from(a instanceof Float32Array ? new Uint32Array(a.slice().buffer) : a).join(',');

function sameBits(results: (Float32Array | Uint16Array)[], label: string): void {
  for (let t = 1; t < results.length; t++) {
    const [a, b] = [results[0]!, results[t]!];
    if (bits(a) === bits(b)) continue;
    const i = Array.from(a).findIndex((v, j) => !Object.is(v, b[j]));
    assert.unreachable(`${label}: threads ${COUNTS[t]} differs from 1 thread at element ${i} (${b[i]} vs ${a[i]})`);
  }
}

test('init({ threads }) starts threads − 1 workers; lw.threads reports them; bad values are typed errors', async () => {
  const lws = await instances();
  assert.equal(lws.map((lw) => lw.threads), COUNTS);
  assert.is(lws[0]!.workerPool, undefined, 'threads: 1 starts no worker');
  assert.is(lws[0]!.memory.buffer instanceof ArrayBuffer, true, 'threads: 1 keeps the non-shared build and memory');
  assert.is(lws[1]!.memory.buffer instanceof SharedArrayBuffer, true, 'threads > 1 share the memory');
  const auto = await init({ simd: BUILD, threads: 'auto' });
  assert.ok(auto.threads >= 1 && auto.threads <= 8, `'auto' took ${auto.threads} threads`);
  for (const [bad, cls] of [[0, LoRARangeError], [1.5, LoRARangeError], [65, LoRARangeError], ['2', LoRATypeError], [null, LoRATypeError]] as const) {
    await init({ threads: bad as never }).then(
      () => assert.unreachable(`threads: ${String(bad)} was accepted`),
      (e: Error) => assert.instance(e, cls, `threads: ${String(bad)}`),
    );
  }
});

test('merge, unmerge, mergeInto, delta and the safe merge: bit-identical for 1, 2, 3 threads on the whole shape set', async () => {
  const lws = await instances();
  await splitEverything(lws, () => {
    const r = rng(11);
    for (const { dOut, dIn, r: rank } of SHAPES) {
      const W0 = randomF32(r, dOut * dIn);
      const A0 = randomF32(r, dOut * rank);
      const B0 = randomF32(r, rank * dIn);
      const scale = 0.25 + r();
      const label = `[${dOut}, ${dIn}] r=${rank}`;
      const outs = lws.map((lw) => {
        const [W, A, B] = [lw.matrix(dOut, dIn, W0), lw.matrix(dOut, rank, A0), lw.matrix(rank, dIn, B0)];
        lw.merge(W, A, B, { scale, safe: true });
        const merged = W.toFloat32();
        const into = lw.mergeInto(lw.matrix(dOut, dIn), W, A, B, { scale: -scale });
        lw.unmerge(W, A, B, { scale });
        const d = lw.delta(A, B, { scale });
        const res = [merged, into.toFloat32(), W.toFloat32(), d.toFloat32()];
        for (const m of [W, A, B, into, d]) m.dispose();
        return res;
      });
      for (let k = 0; k < 4; k++) sameBits(outs.map((o) => o[k]!), `${['merge', 'mergeInto', 'unmerge', 'delta'][k]} ${label}`);
    }
  });
});

test('half precision: f16 and bf16 merges and conversions are bit-identical across thread counts', async () => {
  const lws = await instances();
  await splitEverything(lws, () => {
    const r = rng(12);
    for (const { dOut, dIn, r: rank } of SHAPES.filter((_, i) => i % 3 === 0)) {
      for (const dtype of ['f16', 'bf16'] as const) {
        const W0 = randomF32(r, dOut * dIn, 4);
        const A0 = randomF32(r, dOut * rank);
        const B0 = randomF32(r, rank * dIn);
        const outs = lws.map((lw) => {
          const W = lw.matrix(dOut, dIn, W0, { dtype });
          const A = lw.matrix(dOut, rank, A0, { dtype });
          const B = lw.matrix(rank, dIn, B0);
          lw.merge(W, A, B, { scale: 0.5 });
          const back = lw.matrix(dOut, dIn);
          lw.convert(back, W);
          const res = [W.data.slice(), back.toFloat32()];
          for (const m of [W, A, B, back]) m.dispose();
          return res;
        });
        sameBits(outs.map((o) => o[0]!), `${dtype} merge [${dOut}, ${dIn}] r=${rank}`);
        sameBits(outs.map((o) => o[1]!), `${dtype} → f32 [${dOut}, ${dIn}]`);
      }
    }
  });
});

test('the NaN scan finds the same first bad element whichever thread scans it, and W stays untouched', async () => {
  const lws = await instances();
  await splitEverything(lws, () => {
    const r = rng(13);
    for (const [dOut, dIn, rank] of [[300, 257, 7], [64, 64, 64], [1000, 3, 2]] as const) {
      for (const at of [0, randInt(r, 0, dOut * rank - 1), dOut * rank - 1]) {
        const A0 = randomF32(r, dOut * rank);
        A0[at] = Number.NaN;
        if (at + 17 < A0.length) A0[at + 17] = Number.POSITIVE_INFINITY;
        const W0 = randomF32(r, dOut * dIn);
        const messages = lws.map((lw) => {
          const [W, A, B] = [lw.matrix(dOut, dIn, W0), lw.matrix(dOut, rank, A0), lw.matrix(rank, dIn, randomF32(r, rank * dIn))];
          let message = '';
          try {
            lw.merge(W, A, B, { scale: 1 });
          } catch (e) {
            message = (e as Error).message;
          }
          assert.is(bits(W.toFloat32()), bits(W0), 'W untouched');
          for (const m of [W, A, B]) m.dispose();
          return message;
        });
        assert.match(messages[0]!, `A[${Math.floor(at / rank)}, ${at % rank}] is NaN`);
        assert.equal(messages, [messages[0], messages[0], messages[0]]);
      }
    }
  });
});

test('GEMM in every transpose, with alpha and beta, and the batch-1 product: bit-identical across thread counts', async () => {
  const lws = await instances();
  await splitEverything(lws, () => {
    const r = rng(14);
    const shapes = [[1, 300, 257], [1, 7, 9], [2, 5, 3], [33, 70, 50], [100, 3, 300], [4, 520, 64], [67, 129, 1], [256, 96, 40]];
    for (let i = 0; i < 30; i++) shapes.push([randInt(r, 1, 90), randInt(r, 1, 90), randInt(r, 1, 300)]);
    for (const [n, m, k] of shapes as [number, number, number][]) {
      for (const [transX, transY] of [[false, false], [false, true], [true, false], [true, true]]) {
        const X0 = randomF32(r, n * k);
        const Y0 = randomF32(r, k * m);
        const C0 = randomF32(r, n * m);
        const alpha = 0.5 + r();
        const beta = [0, 1, -0.75][i3(r)]!;
        const outs = lws.map((lw) => {
          const X = transX ? lw.matrix(k, n, X0) : lw.matrix(n, k, X0);
          const Y = transY ? lw.matrix(m, k, Y0) : lw.matrix(k, m, Y0);
          const C = lw.matrix(n, m, C0);
          lw.gemm(C, X, Y, { transX, transY, alpha, beta });
          const res = C.toFloat32();
          for (const x of [X, Y, C]) x.dispose();
          return res;
        });
        sameBits(outs, `gemm n=${n} m=${m} k=${k} transX=${transX} transY=${transY} beta=${beta}`);
      }
    }
  });
});
const i3 = (r: () => number): number => Math.floor(r() * 3);

test('LoRA training (forward, backward, AdamW) and a Linear → ReLU → LoRALinear fit with SGD: bit-identical across thread counts', async () => {
  const lws = await instances();
  await splitEverything(lws, () => {
    const r = rng(15);
    const [n, dIn, dOut, rank] = [37, 70, 50, 5];
    const X0 = randomF32(r, n * dIn);
    const T0 = randomF32(r, n * dOut);
    const W0 = randomF32(r, dOut * dIn, 0.2);
    const B0 = randomF32(r, rank * dIn, 0.1);
    const outs = lws.map((lw) => {
      const layer = lw.linear({ W: { rows: dOut, cols: dIn, data: W0 }, r: rank, alpha: 8, seed: 3 });
      layer.B.data.set(B0);
      const opt = lw.adamw(layer.parameters(), { lr: 0.01, weightDecay: 0.01 });
      const X = lw.matrix(n, dIn, X0);
      const T = lw.matrix(n, dOut, T0);
      const grad = lw.matrix(n, dOut);
      const losses: number[] = [];
      for (let step = 0; step < 4; step++) {
        const Y = layer.forward(X);
        losses.push(lw.mseLoss(Y, T, grad));
        layer.backward(grad);
        opt.step();
      }
      const res = [layer.A.toFloat32(), layer.B.toFloat32(), layer.forward(X).toFloat32(), Float32Array.from(losses)];
      layer.dispose();
      for (const m of [X, T, grad]) m.dispose();
      return res;
    });
    for (let k = 0; k < 4; k++) sameBits(outs.map((o) => o[k]!), ['A', 'B', 'Y', 'losses'][k]!);

    const fits = lws.map((lw) => {
      const model = lw.sequential([
        lw.dense({ inFeatures: 24, outFeatures: 40, seed: 1 }),
        lw.relu(),
        lw.linear({ W: { rows: 6, cols: 40, data: randomF32(rng(5), 240, 0.3) }, r: 3, alpha: 3, seed: 2 }),
      ]);
      const Xs = randomF32(rng(6), 90 * 24);
      const labels = Array.from({ length: 90 }, (_, i) => i % 6);
      const opt = lw.sgd(model.parameters(), { lr: 0.05, momentum: 0.9 });
      const report = model.fit({ rows: 90, cols: 24, data: Xs }, labels, { loss: 'cross-entropy', optimizer: opt, epochs: 3, batchSize: 16 });
      const pred = model.predict({ rows: 90, cols: 24, data: Xs });
      const res = [pred.toFloat32(), Float32Array.from(report.epochLoss)];
      pred.dispose();
      model.dispose();
      return res;
    });
    sameBits(fits.map((o) => o[0]!), 'Sequential.fit predictions');
    sameBits(fits.map((o) => o[1]!), 'Sequential.fit epoch losses');
  });
});

test('extractAdapter and a pruned combineAdapters: the same factors, bit for bit, on 1, 2 and 3 threads', async () => {
  const lws = await instances();
  await splitEverything(lws, () => {
    const r = rng(18);
    const [rows, cols] = [150, 90];
    const base = randomF32(r, rows * cols);
    const tuned = base.map((x, i) => x + 0.3 * Math.sin(i * 0.37) * Math.cos(i * 0.011));
    const outs = lws.map((lw) => {
      const [T, B] = [lw.matrix(rows, cols, tuned), lw.matrix(rows, cols, base)];
      const res = lw.extractAdapter(T, B, { rank: 6 });
      const m = res.adapter.modules[0]!;
      const got = [m.A.toFloat32(), m.B.toFloat32(), Float32Array.from(res.modules[0]!.singularValues)];
      res.adapter.dispose();
      for (const x of [T, B]) x.dispose();
      return got;
    });
    for (let k = 0; k < 3; k++) sameBits(outs.map((o) => o[k]!), ['extract A', 'extract B', 'singular values'][k]!);
  });
});

test('memory that grows after the workers started is used by them (big allocations, then a split merge)', async () => {
  // fresh instances (a distinct memory cap is a distinct memo key): their memory is still small
  const lws = await Promise.all(COUNTS.map((threads) => init({ simd: BUILD, threads, maxMemoryBytes: 3 * 2 ** 28 })));
  await splitEverything(lws, () => {
    const r = rng(16);
    const [dOut, dIn, rank] = [700, 600, 9];
    const W0 = randomF32(r, dOut * dIn);
    const A0 = randomF32(r, dOut * rank);
    const B0 = randomF32(r, rank * dIn);
    const outs = lws.map((lw) => {
      const before = lw.memoryStats().memoryBytes;
      const filler = lw.matrix(2048, 2048); // 16 MiB: memory grows past where the workers first saw it
      const [W, A, B] = [lw.matrix(dOut, dIn, W0), lw.matrix(dOut, rank, A0), lw.matrix(rank, dIn, B0)];
      assert.ok(lw.memoryStats().memoryBytes > before, 'memory grew');
      lw.merge(W, A, B, { scale: 0.3 });
      const res = W.toFloat32();
      for (const m of [filler, W, A, B]) m.dispose();
      return res;
    });
    sameBits(outs, 'merge in grown memory');
  });
  for (const lw of lws) lw.dispose();
});

test('shared memory: a view of wasm memory that no Matrix owns is refused also after growth made memory.buffer a new object', async () => {
  const lw = await init({ simd: BUILD, threads: 2, maxMemoryBytes: 5 * 2 ** 28 });
  const buffer = lw.memory.buffer;
  const stray = new Float32Array(buffer, 1024, 4);
  const big = lw.matrix(1024, 1024); // grows memory: memory.buffer is another SharedArrayBuffer object now
  assert.is.not(lw.memory.buffer, buffer);
  const W = lw.matrix(2, 2);
  for (const view of [stray, new Float32Array(lw.memory.buffer, 1024, 4)]) {
    try {
      lw.merge(W, { rows: 2, cols: 2, data: view }, lw.matrix(2, 2));
      assert.unreachable('a stray view was accepted');
    } catch (e) {
      assert.instance(e, LoRATypeError);
      assert.match((e as Error).message, 'no Matrix owns');
    }
  }
  for (const m of [big, W]) m.dispose();
  lw.dispose();
});

test('below the thresholds a call stays on the calling thread (same results, no worker involved)', async () => {
  const [, lw2] = await instances();
  const pool = lw2!.workerPool!;
  const r = rng(17);
  const W = lw2!.matrix(64, 64, randomF32(r, 4096));
  const A = lw2!.matrix(64, 4, randomF32(r, 256));
  const B = lw2!.matrix(4, 64, randomF32(r, 256));
  const runs = pool.runs;
  lw2!.merge(W, A, B, { scale: 1 });
  assert.is(pool.runs, runs, 'a 64×64 r=4 merge did not use the pool');
  for (const m of [W, A, B]) m.dispose();
});

test.run();
