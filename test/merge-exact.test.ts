// The float64 merge kernel (assembly/merge-exact.ts, KernelLayer.mergeExact): W ← f32(W + s·Σ_k A·B)
// with the sum in float64, k ascending, bit for bit with a float64 loop in JavaScript, on shapes that
// are not multiples of the SIMD width, r = 1 and r = min(rows, cols), on 1 and 2 threads.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Engine } from '../src/runtime/engine.js';
import { loadEngine } from '../src/runtime/load.js';
import { BUILD, randomF32, rng } from './helpers.js';

const engines = new Map<number, Promise<Engine>>();
const engine = (threads: number) => engines.get(threads) ?? (engines.set(threads, loadEngine({ build: BUILD, threads })), engines.get(threads)!);

function run(e: Engine, w: Float32Array, a: Float32Array, b: Float32Array, rows: number, cols: number, r: number, s: number): Float32Array {
  const [pw, pa, pb] = [w, a, b].map((x) => {
    const blk = e.heap.alloc(x.length * 4 + 4, 'test');
    e.heap.f32At(blk.ptr, x.length).set(x);
    return blk;
  });
  try {
    e.kernel.mergeExact('test', pw!.ptr, pa!.ptr, pb!.ptr, rows, cols, r, s);
    return e.heap.f32At(pw!.ptr, w.length).slice();
  } finally {
    for (const blk of [pw, pa, pb]) e.heap.free(blk!);
  }
}

function reference(w: Float32Array, a: Float32Array, b: Float32Array, rows: number, cols: number, r: number, s: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      let d = 0;
      for (let k = 0; k < r; k++) d += a[i * r + k]! * b[k * cols + j]!;
      out[i * cols + j] = w[i * cols + j]! + s * d;
    }
  }
  return out;
}

const bits = (x: Float32Array) => new Uint32Array(x.buffer, x.byteOffset, x.length);

test('mergeExact equals the float64 loop rounded once, bit for bit, on odd shapes, r = 1 and r = min(rows, cols)', async () => {
  const g = rng(3);
  for (const [rows, cols, r] of [[1, 1, 1], [3, 5, 1], [7, 13, 3], [17, 4, 4], [33, 67, 8], [9, 9, 9], [5, 130, 5], [64, 257, 16]] as const) {
    const w = randomF32(g, rows * cols, 2), a = randomF32(g, rows * r, 0.3), b = randomF32(g, r * cols, 0.3);
    const s = 1 / Math.sqrt(r) + 1e-9; // a float64 scale that is not an f32
    const want = reference(w, a, b, rows, cols, r, s);
    for (const threads of [1, 2]) {
      const got = run(await engine(threads), w, a, b, rows, cols, r, s);
      assert.equal(bits(got), bits(want), `${rows}×${cols} r=${r}, ${threads} thread(s)`);
    }
  }
});

test('mergeExact on a large product split over threads gives the same bits as one thread', async () => {
  const g = rng(4);
  const [rows, cols, r] = [301, 1029, 16];
  const w = randomF32(g, rows * cols, 1), a = randomF32(g, rows * r, 0.1), b = randomF32(g, r * cols, 0.1);
  const one = run(await engine(1), w, a, b, rows, cols, r, 0.75);
  const two = run(await engine(2), w, a, b, rows, cols, r, 0.75);
  assert.equal(bits(two), bits(one));
  assert.equal(bits(one), bits(reference(w, a, b, rows, cols, r, 0.75)));
});

test.run();
