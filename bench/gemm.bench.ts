/**
 * GEMM and training-step benchmarks (benny), peers in the same run:
 *   - @tensorflow/tfjs-backend-wasm 4.22 (XNNPACK, single thread): matMul(X, Wt) on a pre-transposed
 *     W, and matMul(X, W, false, true), the nn.Linear layout
 *   - both lora-wasm flavours (relaxed needs node --experimental-wasm-relaxed-simd on Node 20)
 *
 *   npm run bench:gemm             npm run bench:gemm -- --quick
 *
 * Every case checks sampled rows of its output against float64 before it is timed.
 */
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import b from 'benny';
import { type LoRAWasm, type Matrix, detectFeatures, init, seededRandom } from '../src/index.js';

const quick = process.argv.includes('--quick');
const slow = { minSamples: 2, maxTime: quick ? 1 : 4 };
const fast = { minSamples: quick ? 3 : 5, maxTime: quick ? 1 : 3 };

const random = (n: number, seed: number) => {
  const next = seededRandom(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = 2 * next() - 1;
  return x;
};

/** Rows `rows` of y = x·wᵀ (w: [m, k]) in float64; throws if `got` is off by more than the f32 bound. */
function verify(name: string, got: Float32Array, x: Float32Array, w: Float32Array, n: number, m: number, k: number): void {
  for (const i of [0, 1, n >> 1, n - 1]) {
    for (let j = 0; j < m; j += 7) {
      let acc = 0, abs = 0;
      for (let q = 0; q < k; q++) {
        acc += x[i * k + q]! * w[j * k + q]!;
        abs += Math.abs(x[i * k + q]! * w[j * k + q]!);
      }
      if (!(Math.abs(got[i * m + j]! - acc) <= (k + 4) * 2 ** -24 * abs)) {
        throw new Error(`${name}: wrong result at [${i}, ${j}]: ${got[i * m + j]} vs ${acc}; refusing to time it`);
      }
    }
  }
}

interface Row { suite: string; name: string; ms: number; gflops: number }
const rows: Row[] = [];
const collect = (suite: string, flops: number) => b.complete((summary) => {
  for (const r of summary.results) rows.push({ suite, name: r.name, ms: r.details.median * 1e3, gflops: flops / (r.details.median * 1e9) });
});
const save = (file: string) => [
  b.save({ folder: 'bench/results', file, format: 'json', details: false }),
  b.save({ folder: 'bench/results', file, format: 'csv', details: false }),
  b.save({ folder: 'bench/results', file, format: 'chart.html', details: false }),
];

setWasmPaths(`${path.resolve('node_modules/@tensorflow/tfjs-backend-wasm/dist')}/`);
await tf.setBackend('wasm');
await tf.ready();

const builds: LoRAWasm[] = [await init({ simd: 'baseline' })];
if (detectFeatures().relaxed) builds.push(await init({ simd: 'relaxed' }));

// --- GEMM 256×4096×4096: Y = X·Wᵀ, W stored [out, in] (nn.Linear) and stored transposed [in, out]
{
  const n = 256, k = 4096, m = 4096;
  const flops = 2 * n * m * k;
  const x = random(n * k, 1), w = random(m * k, 2);
  const wt = new Float32Array(k * m);
  for (let j = 0; j < m; j++) for (let q = 0; q < k; q++) wt[q * m + j] = w[j * k + q]!;
  const cases = [];
  const held: Matrix[] = [];
  for (const lw of builds) {
    const X = lw.matrix(n, k, x), W = lw.matrix(m, k, w), Wt = lw.matrix(k, m, wt), Y = lw.matrix(n, m);
    held.push(X, W, Wt, Y);
    lw.gemm(Y, X, W, { transY: true });
    verify(`gemm X·Wᵀ ${lw.build}`, Y.data, x, w, n, m, k);
    lw.gemm(Y, X, Wt);
    verify(`gemm X·Wt ${lw.build}`, Y.data, x, w, n, m, k);
    cases.push(b.add(`lora-wasm X·Wᵀ, W [out, in] (${lw.build})`, () => () => lw.gemm(Y, X, W, { transY: true }), fast));
    cases.push(b.add(`lora-wasm X·Wt, Wt [in, out] (${lw.build})`, () => () => lw.gemm(Y, X, Wt), fast));
  }
  const tX = tf.tensor2d(x, [n, k]), tW = tf.tensor2d(w, [m, k]), tWt = tf.tensor2d(wt, [k, m]);
  const tfRun = (transB: boolean) => {
    const y = transB ? tf.matMul(tX, tW, false, true) : tf.matMul(tX, tWt);
    const data = y.dataSync() as Float32Array;
    y.dispose();
    return data;
  };
  verify('tfjs matMul(X, Wt)', tfRun(false), x, w, n, m, k);
  verify('tfjs matMul(X, W, false, true)', tfRun(true), x, w, n, m, k);
  cases.push(b.add('tfjs-wasm matMul(X, Wt)', () => () => tfRun(false), fast));
  cases.push(b.add('tfjs-wasm matMul(X, W, false, true)', () => () => tfRun(true), slow));
  await b.suite('GEMM 256×4096×4096', ...cases, b.cycle(), collect('gemm', flops), ...save('gemm-256x4096x4096'));
  for (const t of [tX, tW, tWt]) t.dispose();
  for (const h of held) h.dispose();
}

// --- One training step vs the forward GEMM alone: X [64, 4096], W [4096, 4096], r = 16
{
  const n = 64, d = 4096, r = 16;
  const x = random(n * d, 3), w = random(d * d, 4), target = random(n * d, 5);
  const cases = [];
  for (const lw of builds) {
    const X = lw.matrix(n, d, x), W = lw.matrix(d, d, w), T = lw.matrix(n, d, target), G = lw.matrix(n, d), Y = lw.matrix(n, d);
    const layer = lw.linear({ W, r, alpha: 32, inputGrad: false });
    const opt = lw.adamw(layer.parameters(), { lr: 1e-4 });
    verify(`forward ${lw.build}`, layer.forward(X).data, x, w, n, d, d);
    cases.push(b.add(`forward GEMM X·Wᵀ alone (${lw.build})`, () => () => lw.gemm(Y, X, W, { transY: true }), fast));
    cases.push(b.add(`training step: forward + backward + AdamW (${lw.build})`, () => () => {
      const y = layer.forward(X);
      lw.mseLoss(y, T, G);
      layer.backward(G);
      opt.step();
    }, fast));
  }
  await b.suite('training step, X [64, 4096], W [4096, 4096], r = 16', ...cases, b.cycle(), collect('train', 2 * n * d * d), ...save('train-step-64x4096-r16'));
}

console.log('\nMedians, single thread.');
console.log(`${'case'.padEnd(52)} ${'ms'.padStart(9)} ${'GFLOP/s'.padStart(8)}  ratio`);
const tfFast = rows.find((r) => r.name === 'tfjs-wasm matMul(X, Wt)');
const tfT = rows.find((r) => r.name === 'tfjs-wasm matMul(X, W, false, true)');
for (const r of rows) {
  let ratio = '';
  if (r.suite === 'gemm' && tfFast && tfT && r.name.startsWith('lora-wasm')) {
    ratio = `${(tfFast.ms / r.ms).toFixed(2)}× tfjs matMul(X, Wt), ${(tfT.ms / r.ms).toFixed(1)}× tfjs transposeB`;
  }
  if (r.suite === 'train' && r.name.startsWith('training')) {
    const build = r.name.match(/\((\w+)\)$/)![1];
    const fwd = rows.find((q) => q.suite === 'train' && q.name === `forward GEMM X·Wᵀ alone (${build})`)!;
    ratio = `${(r.ms / fwd.ms).toFixed(2)}× the forward GEMM`;
  }
  console.log(`${r.name.padEnd(52)} ${r.ms.toFixed(2).padStart(9)} ${(r.suite === 'train' && r.name.startsWith('training') ? '' : r.gflops.toFixed(1)).padStart(8)}  ${ratio}`);
}
