/**
 * Merge, delta and mergeInto on shapes from real models, against:
 *   the W copy (Float32Array.set: reads and writes W once, the memory floor), plain JS loops written
 *   the way the seed article's W + s·A·B reads, ml-matrix, tfjs-backend-wasm's W + s·matMul(A, B),
 *   and the seed's numpy W + A @ B (single-threaded OpenBLAS, timed inside Python).
 */
import { spawnSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs-core';
import { Matrix as MlMatrix } from 'ml-matrix';
import type { Matrix } from '../src/index.js';
import { rankElement } from '../test/reference.js';
import { type Case, type Ctx, random, suite, verify } from './common.js';

interface Shape {
  label: string;
  dOut: number;
  dIn: number;
  r: number;
}

export const MERGE_SHAPES: Shape[] = [
  { label: '768×768 r=8 (BERT-base attention)', dOut: 768, dIn: 768, r: 8 },
  { label: '4096×4096 r=8 (7B attention)', dOut: 4096, dIn: 4096, r: 8 },
  { label: '4096×4096 r=16', dOut: 4096, dIn: 4096, r: 16 },
  { label: '4096×4096 r=64', dOut: 4096, dIn: 4096, r: 64 },
  { label: '4096×11008 r=16 (7B MLP)', dOut: 4096, dIn: 11008, r: 16 },
];
/** --quick: one small and one 7B-sized shape; the JS peers (seconds per call at 4096²) on the small one only, no delta table. */
const QUICK = new Set(['768×768 r=8 (BERT-base attention)', '4096×4096 r=8 (7B attention)']);
const QUICK_JS_MACS = 768 * 768 * 8;

/** float64 W0 + s·A·B at (i, j), with the magnitude the f32 error scales with. */
const mergeRef = (w: Float32Array | undefined, a: Float32Array, bm: Float32Array, sh: Shape, s: number) => rankElement(w, a, bm, sh.dOut, sh.r, sh.dIn, s);

async function benchShape(ctx: Ctx, sh: Shape): Promise<void> {
  const { dOut, dIn, r } = sh;
  const s = 0.5;
  const w0 = random(dOut * dIn, dOut + dIn + r, 0.05);
  const a = random(dOut * r, 2 * r + 1, 0.02);
  const bm = random(r * dIn, 3 * r + 7, 0.05);
  const flops = 2 * r * dOut * dIn;
  const macs = dOut * dIn * r;
  const held: Matrix[] = [];
  const merge: Case[] = [];
  const delta: Case[] = [];

  const copyDst = new Float32Array(dOut * dIn);
  copyDst.set(w0);
  if (copyDst.some((v, i) => !Object.is(v, w0[i]))) throw new Error('copy of W: wrong result; refusing to time it');
  merge.push({ name: 'copy of W (Float32Array.set)', by: 'copy', fn: () => () => copyDst.set(w0) });

  for (const lw of ctx.builds) {
    const build = lw.build;
    const W = lw.matrix(dOut, dIn, w0), A = lw.matrix(dOut, r, a), B = lw.matrix(r, dIn, bm), out = lw.matrix(dOut, dIn);
    held.push(W, A, B, out);
    lw.mergeInto(out, W, A, B, { scale: s });
    verify(`mergeInto ${build}`, out.data, dOut, dIn, r, mergeRef(w0, a, bm, sh, s));
    const D = lw.delta(A, B, { scale: s });
    verify(`delta ${build}`, D.data, dOut, dIn, r, mergeRef(undefined, a, bm, sh, s));
    D.dispose();
    for (const safe of [true, false]) {
      lw.merge(W, A, B, { scale: s, safe });
      verify(`merge${safe ? ' safe' : ''} ${build}`, W.data, dOut, dIn, r, mergeRef(w0, a, bm, sh, s));
      lw.unmerge(W, A, B, { scale: s, safe });
      // back to W0 within one rounding of W0 + Δ and one of W0: the magnitude is |W0| + |s·Δ|
      const merged = mergeRef(w0, a, bm, sh, s);
      verify(`unmerge${safe ? ' safe' : ''} ${build}`, W.data, dOut, dIn, r, (i, j) => ({ value: w0[i * dIn + j]!, mag: merged(i, j).mag }));
    }
    // merge and unmerge are the same kernel at the same cost; alternating keeps W bounded.
    const alternate = (safe: boolean) => () => {
      let sign = 1;
      return () => {
        if (sign > 0) lw.merge(W, A, B, { scale: s, safe });
        else lw.unmerge(W, A, B, { scale: s, safe });
        sign = -sign;
      };
    };
    merge.push({ name: `merge (${build})`, by: 'lora-wasm', build, fn: alternate(false) });
    merge.push({ name: `merge safe (${build})`, by: 'lora-wasm', build, fn: alternate(true) });
    merge.push({ name: `mergeInto (${build})`, by: 'lora-wasm', build, fn: () => () => lw.mergeInto(out, W, A, B, { scale: s }) });
    delta.push({ name: `delta (${build})`, by: 'lora-wasm', build, fn: () => () => lw.delta(A, B, { scale: s }).dispose() });
  }

  // Plain JS, as the seed's W + s·A·B reads, on typed arrays.
  if (!ctx.quick || macs <= QUICK_JS_MACS) {
    const plain = new Float32Array(w0);
    const run = (sign: number) => {
      for (let i = 0; i < dOut; i++) {
        for (let j = 0; j < dIn; j++) {
          let acc = 0;
          for (let k = 0; k < r; k++) acc += a[i * r + k]! * bm[k * dIn + j]!;
          plain[i * dIn + j] = plain[i * dIn + j]! + sign * s * acc;
        }
      }
    };
    run(1);
    verify('plain JS', plain, dOut, dIn, r, mergeRef(w0, a, bm, sh, s));
    run(-1);
    merge.push({ name: 'plain JS loops', by: 'plain JS', speed: 'glacial', fn: () => {
      let sign = 1;
      return () => {
        run(sign);
        sign = -sign;
      };
    } });
  }

  // ml-matrix: W.add(A.mmul(B).mul(s)), in place like a merge.
  if (!ctx.quick || macs <= QUICK_JS_MACS) {
    const mW = new MlMatrix(dOut, dIn);
    for (let i = 0; i < dOut; i++) mW.setRow(i, Array.from(w0.subarray(i * dIn, (i + 1) * dIn)));
    const mA = new MlMatrix(dOut, r), mB = new MlMatrix(r, dIn);
    for (let i = 0; i < dOut; i++) mA.setRow(i, Array.from(a.subarray(i * r, (i + 1) * r)));
    for (let k = 0; k < r; k++) mB.setRow(k, Array.from(bm.subarray(k * dIn, (k + 1) * dIn)));
    mW.add(mA.mmul(mB).mul(s));
    verify('ml-matrix', Float64Array.from({ length: 8 * dIn }, (_, q) => mW.get(Math.floor(q / dIn), q % dIn)), 8, dIn, r, mergeRef(w0, a, bm, sh, s));
    mW.sub(mA.mmul(mB).mul(s));
    merge.push({ name: 'ml-matrix W.add(A.mmul(B).mul(s))', by: 'ml-matrix', speed: 'glacial', fn: () => {
      let sign = 1;
      return () => {
        mW.add(mA.mmul(mB).mul(sign * s));
        sign = -sign;
      };
    } });
  }

  // tfjs-backend-wasm (XNNPACK): W + s·matMul(A, B), as a tfjs user writes it.
  const tW = tf.tensor2d(w0, [dOut, dIn]), tA = tf.tensor2d(a, [dOut, r]), tB = tf.tensor2d(bm, [r, dIn]);
  const tfMerge = () => tf.tidy(() => tf.add(tW, tf.mul(s, tf.matMul(tA, tB))));
  const tfDelta = () => tf.tidy(() => tf.mul(s, tf.matMul(tA, tB)));
  for (const [name, run, ref] of [['merge', tfMerge, w0], ['delta', tfDelta, undefined]] as const) {
    const t = run();
    verify(`tfjs ${name}`, t.dataSync() as Float32Array, dOut, dIn, r, mergeRef(ref, a, bm, sh, s));
    t.dispose();
  }
  merge.push({ name: 'tfjs-wasm add(W, mul(s, matMul(A, B)))', by: 'tfjs-wasm', speed: 'slow', fn: () => () => tfMerge().dispose() });
  delta.push({ name: 'tfjs-wasm mul(s, matMul(A, B))', by: 'tfjs-wasm', speed: 'slow', fn: () => () => tfDelta().dispose() });

  await suite(ctx, 'merge', sh.label, flops, 8 * dOut * dIn, merge);
  if (!ctx.quick) await suite(ctx, 'delta', sh.label, flops, 4 * dOut * dIn, delta);
  for (const t of [tW, tA, tB]) t.dispose();
  for (const m of held) m.dispose();
}

/** The seed's numpy merge, timed inside Python with single-threaded OpenBLAS on its native kernel. */
function benchNumpy(ctx: Ctx, shapes: Shape[]): void {
  const job = { cases: shapes.map((sh, i) => ({ label: sh.label, d_out: sh.dOut, d_in: sh.dIn, r: sh.r, reps: ctx.quick ? 3 : 11, seed: i })) };
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: '1' };
  // OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE pin old kernels on this workplace; unset them for this peer only.
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const run = spawnSync('python3', ['bench/peers/numpy_merge.py'], { input: JSON.stringify(job), encoding: 'utf8', env, timeout: 600_000 });
  if (run.error || run.status !== 0) {
    ctx.notes.push(`numpy peer skipped: python3 with numpy is not available here (${run.error?.message ?? run.stderr.trim().split('\n').at(-1)})`);
    return;
  }
  const res = JSON.parse(run.stdout) as { numpy: string; openblas_core: string; openblas_threads: number; cases: { label: string; median_s: number; row0_rel_err: number; d_out: number; d_in: number; r: number }[] };
  ctx.notes.push(`numpy ${res.numpy}, OpenBLAS kernel ${res.openblas_core}, ${res.openblas_threads} thread(s); times W + A @ B (the seed code) inside Python`);
  for (const c of res.cases) {
    if (!(c.row0_rel_err < 1e-3)) throw new Error(`numpy merge for ${c.label} is wrong (rel err ${c.row0_rel_err})`);
    ctx.rows.push({ group: 'merge', shape: c.label, name: 'numpy W + A @ B', by: 'numpy', ms: c.median_s * 1e3, flops: 2 * c.r * c.d_out * c.d_in, bytes: 8 * c.d_out * c.d_in });
  }
}

/**
 * A profile of where merge time goes: the same kernel on a W that stays in L2 (64×1024, 256 KB)
 * measures its compute rate with memory traffic taken out. If streaming a 4096×4096 W runs at about
 * the same GFLOP/s, the merge is compute-bound, not memory-bound.
 */
async function benchInCache(ctx: Ctx): Promise<void> {
  for (const r of ctx.quick ? [8] : [8, 64]) {
    const rows = 64, cols = 1024;
    const w = random(rows * cols, 41, 0.05), a = random(rows * r, 42, 0.02), bm = random(r * cols, 43, 0.05);
    const cases: Case[] = [];
    const held: Matrix[] = [];
    for (const lw of ctx.builds) {
      const W = lw.matrix(rows, cols, w), A = lw.matrix(rows, r, a), B = lw.matrix(r, cols, bm);
      held.push(W, A, B);
      lw.merge(W, A, B, { scale: 0.5 });
      verify(`merge in cache ${lw.build}`, W.data, rows, cols, r, rankElement(w, a, bm, rows, r, cols, 0.5));
      lw.unmerge(W, A, B, { scale: 0.5 });
      let sign = 1;
      cases.push({ name: `merge, W in cache (${lw.build})`, by: 'lora-wasm', build: lw.build, fn: () => () => {
        if (sign > 0) lw.merge(W, A, B, { scale: 0.5 });
        else lw.unmerge(W, A, B, { scale: 0.5 });
        sign = -sign;
      } });
    }
    await suite(ctx, 'merge in cache', `64×1024 r=${r} (W in L2)`, 2 * r * rows * cols, 8 * rows * cols, cases);
    for (const m of held) m.dispose();
  }
}

export async function benchRank(ctx: Ctx): Promise<void> {
  const shapes = MERGE_SHAPES.filter((sh) => !ctx.quick || QUICK.has(sh.label));
  for (const sh of shapes) await benchShape(ctx, sh);
  await benchInCache(ctx);
  benchNumpy(ctx, shapes);
}
