/**
 * GEMM 256×4096×4096 (64×4096×4096 with --quick) (Y = X·Wᵀ) with W stored [out, in] (nn.Linear) and stored transposed [in, out],
 * against tfjs-backend-wasm's matMul with and without transposeB; plus the 4×8 micro-kernel's
 * in-cache throughput (a 64×256×256 product whose panels stay in L1/L2), the ceiling the rank-r
 * kernel is measured against.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Matrix } from '../src/index.js';
import { linearElement } from '../test/reference.js';
import { type Case, type Ctx, random, suite, verify } from './common.js';

export async function benchGemm(ctx: Ctx): Promise<void> {
  const n = ctx.quick ? 64 : 256, k = 4096, m = 4096; // --quick: 64 rows (tfjs's transposeB path is a scalar loop, ~5 s a call at 256)
  const x = random(n * k, 11), w = random(m * k, 12);
  const wt = new Float32Array(k * m);
  for (let j = 0; j < m; j++) for (let q = 0; q < k; q++) wt[q * m + j] = w[j * k + q]!;
  const held: Matrix[] = [];
  const cases: Case[] = [];
  for (const lw of ctx.builds) {
    const build = lw.build;
    const X = lw.matrix(n, k, x), W = lw.matrix(m, k, w), Wt = lw.matrix(k, m, wt), Y = lw.matrix(n, m);
    held.push(X, W, Wt, Y);
    lw.gemm(Y, X, W, { transY: true });
    verify(`gemm X·Wᵀ ${build}`, Y.data, n, m, k, linearElement(x, w, n, m, k));
    lw.gemm(Y, X, Wt);
    verify(`gemm X·Wt ${build}`, Y.data, n, m, k, linearElement(x, w, n, m, k));
    cases.push({ name: `X·Wᵀ, W [out, in] (${build})`, by: 'lora-wasm', build, fn: () => () => lw.gemm(Y, X, W, { transY: true }) });
    cases.push({ name: `X·Wt, Wt [in, out] (${build})`, by: 'lora-wasm', build, fn: () => () => lw.gemm(Y, X, Wt) });
  }
  const tX = tf.tensor2d(x, [n, k]), tW = tf.tensor2d(w, [m, k]), tWt = tf.tensor2d(wt, [k, m]);
  const tfRun = (transB: boolean) => (transB ? tf.matMul(tX, tW, false, true) : tf.matMul(tX, tWt));
  for (const transB of [false, true]) {
    const t = tfRun(transB);
    verify(`tfjs matMul transB=${transB}`, t.dataSync() as Float32Array, n, m, k, linearElement(x, w, n, m, k));
    t.dispose();
  }
  cases.push({ name: 'tfjs-wasm matMul(X, Wt)', by: 'tfjs-wasm', speed: 'slow', fn: () => () => tfRun(false).dispose() });
  cases.push({ name: 'tfjs-wasm matMul(X, W, false, true)', by: 'tfjs-wasm', speed: 'glacial', fn: () => () => tfRun(true).dispose() });
  await suite(ctx, 'gemm', `${n}×4096×4096`, 2 * n * m * k, 4 * n * m, cases);
  for (const t of [tX, tW, tWt]) t.dispose();
  for (const h of held) h.dispose();

  // Batch-1 GEMV y = x·Wᵀ (nn.Linear at batch 1): memory-bound, 64 MiB of W read per call. tfjs's
  // batch-1 fast path is matMul(x, Wt) with Wt [in, out]; onnxruntime's Gemm is in its own group.
  const gx = x.subarray(0, k);
  const gemv: Case[] = [];
  held.length = 0;
  for (const lw of ctx.builds) {
    const X1 = lw.matrix(1, k, gx), W = lw.matrix(m, k, w), Y1 = lw.matrix(1, m);
    held.push(X1, W, Y1);
    lw.gemm(Y1, X1, W, { transY: true });
    verify(`gemv ${lw.build}`, Y1.data, 1, m, k, linearElement(gx, w, 1, m, k));
    gemv.push({ name: `gemm(Y, x, W, { transY }) (${lw.build})`, by: 'lora-wasm', build: lw.build, fn: () => () => lw.gemm(Y1, X1, W, { transY: true }) });
  }
  const tx1 = tf.tensor2d(gx, [1, k]), tWt1 = tf.tensor2d(wt, [k, m]);
  const tfGemv = () => tf.matMul(tx1, tWt1);
  const tv = tfGemv();
  verify('tfjs gemv', tv.dataSync() as Float32Array, 1, m, k, linearElement(gx, w, 1, m, k));
  tv.dispose();
  gemv.push({ name: 'tfjs-wasm matMul(x, Wt)', by: 'tfjs-wasm', fn: () => () => tfGemv().dispose() });
  await suite(ctx, 'gemv', `1×${k} · (${m}×${k})ᵀ`, 2 * m * k, 4 * m * k, gemv);
  for (const t of [tx1, tWt1]) t.dispose();
  for (const h of held) h.dispose();
  held.length = 0;

  // In-cache micro-kernel: 64×256×256, X 64 KB and W 256 KB stay in L2 across calls.
  const mn = 64, mk = 256, mm = 256;
  const mx = random(mn * mk, 13), mw = random(mm * mk, 14);
  const micro: Case[] = [];
  for (const lw of ctx.builds) {
    const X = lw.matrix(mn, mk, mx), W = lw.matrix(mm, mk, mw), Y = lw.matrix(mn, mm);
    held.length = 0;
    held.push(X, W, Y);
    lw.gemm(Y, X, W, { transY: true });
    verify(`micro ${lw.build}`, Y.data, mn, mm, mk, linearElement(mx, mw, mn, mm, mk));
    micro.push({ name: `4×8 tile in cache, 64×256×256 (${lw.build})`, by: 'lora-wasm', build: lw.build, fn: () => () => lw.gemm(Y, X, W, { transY: true }) });
  }
  await suite(ctx, 'micro-kernel', '64×256×256 in cache', 2 * mn * mm * mk, 0, micro);
  for (const h of held) h.dispose();
}
