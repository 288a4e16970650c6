/**
 * Batch-1 GEMV, y = x·Wᵀ with W [4096, 4096] f32 stored [out, in] (64 MiB read per call), measured
 * paired and interleaved (one call of each case per round, medians over rounds) because the machine
 * is shared: lora-wasm (each build; optionally an older build's .wasm beside it), tfjs-backend-wasm's
 * matMul(x, Wt) (its fast batch-1 path), and the copy of W (Float32Array.prototype.set: 64 MiB read
 * and 64 MiB written), the bandwidth yardstick. GB/s counts the bytes of W read.
 *
 *   node --experimental-wasm-relaxed-simd --import tsx bench/gemv.paired.ts [--rounds=60] [--old=DIR] [--threads=2] [--tfjs-transposed]
 *
 * --old=DIR loads DIR/lora-<build>.wasm as "old" for a before/after pair (e.g. a copy of build/ made
 * before rebuilding). --threads=N also runs lora-wasm on N threads (the threads builds).
 * Every case is checked against a float64 reference before it is timed.
 */
import path from 'node:path';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { type LoRAWasm, detectFeatures, init } from '../src/index.js';
import { interleaved, random } from './common.js';

const arg = (name: string): string | undefined => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1];
const rounds = Number(arg('rounds') ?? 60);
const oldDir = arg('old');
const threads = Number(arg('threads') ?? 1);
const M = 4096, K = 4096;
const bytes = M * K * 4;

setWasmPaths(`${path.resolve('node_modules/@tensorflow/tfjs-backend-wasm/dist')}/`);
await tf.setBackend('wasm');

const x = random(K, 21), w = random(M * K, 22);
const want = new Float64Array(M);
for (let j = 0; j < M; j++) {
  let s = 0;
  for (let q = 0; q < K; q++) s += w[j * K + q]! * x[q]!;
  want[j] = s;
}
const check = (name: string, got: ArrayLike<number>): void => {
  for (let j = 0; j < M; j++) {
    // (K + 4)·u·Σ|w·x| with |w|, |x| ≤ 1
    if (!(Math.abs(got[j]! - want[j]!) <= (K + 4) * 2 ** -24 * K)) throw new Error(`${name}: y[${j}] = ${got[j]} vs ${want[j]}; refusing to time a wrong kernel`);
  }
};

interface Case { name: string; run: () => unknown }
const cases: Case[] = [];
const builds: ('baseline' | 'relaxed')[] = detectFeatures().relaxed ? ['baseline', 'relaxed'] : ['baseline'];
const held: LoRAWasm[] = [];
for (const build of builds) {
  const variants: [string, LoRAWasm][] = [[`lora-wasm ${build}`, await init({ build })]];
  if (oldDir) variants.push([`old lora-wasm ${build}`, await init({ build, wasm: path.resolve(oldDir, `lora-${build}.wasm`) })]);
  if (threads > 1) variants.push([`lora-wasm ${build}, ${threads} threads`, await init({ build, threads })]);
  for (const [name, lw] of variants) {
    held.push(lw);
    const X = lw.matrix(1, K, x), W = lw.matrix(M, K, w), Y = lw.matrix(1, M);
    lw.gemm(Y, X, W, { transY: true });
    check(name, Y.data);
    cases.push({ name, run: () => lw.gemm(Y, X, W, { transY: true }) });
  }
}
// tfjs-wasm's fast batch-1 path takes W transposed, [in, out] (its matMul(x, W, false, true) on W as
// stored [out, in] is ~8× slower, --tfjs-transposed adds it)
const wt = new Float32Array(K * M);
for (let j = 0; j < M; j++) for (let q = 0; q < K; q++) wt[q * M + j] = w[j * K + q]!;
const tX = tf.tensor2d(x, [1, K]), tW = tf.tensor2d(w, [M, K]), tWt = tf.tensor2d(wt, [K, M]);
const tfRuns: [string, () => tf.Tensor][] = [['tfjs-wasm matMul(x, Wt), Wt [in, out]', () => tf.matMul(tX, tWt)]];
if (process.argv.includes('--tfjs-transposed')) tfRuns.push(['tfjs-wasm matMul(x, W, false, true)', () => tf.matMul(tX, tW, false, true)]);
for (const [name, run] of tfRuns) {
  const t0 = run();
  check(name, t0.dataSync() as Float32Array);
  t0.dispose();
  cases.push({ name, run: () => run().dispose() });
}
const dst = new Float32Array(M * K);
cases.push({ name: 'copy of W (Float32Array.set: 64 MiB read + written)', run: () => dst.set(w) });

const { median, pairedRatio } = interleaved(cases, rounds, 3);
const med = cases.map((_, i) => median(i));
const ours = cases.findIndex((c) => c.name === `lora-wasm ${builds.at(-1)}`);
console.log(`batch-1 GEMV 1×${K} · [${M}, ${K}]ᵀ, ${rounds} interleaved rounds, medians (GB/s = W bytes / time; ratio = median per-round time / lora-wasm ${builds.at(-1)})`);
for (const [i, c] of cases.entries()) {
  console.log(`  ${c.name.padEnd(52)} ${med[i]!.toFixed(3).padStart(7)} ms ${(bytes / med[i]! / 1e6).toFixed(1).padStart(6)} GB/s ${pairedRatio(i, ours).toFixed(2).padStart(6)}×`);
}
for (const t of [tX, tW, tWt]) t.dispose();
process.exit(0);
