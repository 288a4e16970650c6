/**
 * Half-precision merges: W ← round_half(f32(W) + s·A·B) on 4096×4096 at r = 16, with W in f16 and
 * in bf16, in one pass (no f32 copy of W), against:
 *   the f32 merge at the same r (issue 9's target: a half merge costs ≤ 1.15× it),
 *   the copy of the half W (Uint16Array.set: half the bytes of the f32 copy),
 *   tfjs-backend-wasm, which has no f16/bf16 dtype: a JS user decodes W (the f16 polyfill), runs
 *   add(W, mul(s, matMul(A, B))), and encodes back (on 1024×1024: see tfjsPeer),
 *   numpy's (W.astype(f32) + s·A@B).astype(f16) (no bf16 in numpy).
 * Every case is checked against float64 rounded once before it is timed. Also measured: how many
 * weights come back bit-exact after merge → unmerge in half precision (it rounds twice).
 */
import { spawnSync } from 'node:child_process';
import { getFloat16, setFloat16 } from '@petamoriken/float16';
import * as tf from '@tensorflow/tfjs-core';
import type { DType, Matrix } from '../src/index.js';
import { U, halfUlp, rankElement } from '../test/reference.js';
import { type Case, type Ctx, random, suite } from './common.js';

const D = 4096;
const R = 16;
const S = 0.5;

/** Sampled check of a half (or f32) result ([d, d]) against the float64 reference rounded once. */
function verifyRounded(name: string, got: ArrayLike<number>, dtype: DType, want: (i: number, j: number) => { value: number; mag: number }, d = D): void {
  for (const i of [0, 1, 5, d >> 1, d - 1]) {
    for (let j = 0; j < d; j += j < 16 ? 1 : 97) {
      const { value, mag } = want(i, j);
      const g = got[i * d + j]!;
      if (!(Math.abs(g - value) <= halfUlp(value, dtype) * 1.0001 + (R + 6) * U * mag * 2)) {
        throw new Error(`${name}: wrong result at [${i}, ${j}]: ${g} vs ${value}; refusing to time a wrong kernel`);
      }
    }
  }
}

const f16Encode = (x: Float32Array): Uint16Array => {
  const out = new Uint16Array(x.length);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < x.length; i++) setFloat16(dv, 2 * i, x[i]!, true);
  return out;
};
const f16Decode = (h: Uint16Array): Float32Array => {
  const dv = new DataView(h.buffer, h.byteOffset, h.byteLength);
  return Float32Array.from({ length: h.length }, (_, i) => getFloat16(dv, 2 * i, true));
};

/**
 * tfjs-backend-wasm has no half dtype, so a JS user decodes W in JS (the f16 polyfill), merges in f32
 * and encodes back. That conversion dominates (about 43 s per call at 4096×4096 here), so this peer
 * runs on 1024×1024 r=16, in its own table beside lora-wasm's f16 merge of the same W.
 */
async function tfjsPeer(ctx: Ctx): Promise<void> {
  const d = 1024;
  const w = random(d * d, 94, 0.05), a = random(d * R, 95, 0.02), b = random(R * d, 96, 0.05);
  const w16 = f16Encode(w);
  const want = rankElement(f16Decode(w16), a, b, d, R, d, S);
  const cases: Case[] = [];
  const held: Matrix<DType>[] = [];
  for (const lw of ctx.builds) {
    const W = lw.matrix(d, d, w, { dtype: 'f16' }), A = lw.matrix(d, R, a), B = lw.matrix(R, d, b);
    held.push(W, A, B);
    lw.merge(W, A, B, { scale: S });
    verifyRounded(`merge f16 ${lw.build} ${d}`, W.toFloat32(), 'f16', want, d);
    lw.unmerge(W, A, B, { scale: S });
    let sign = 1;
    cases.push({ name: `merge, W f16 (${lw.build})`, by: 'lora-wasm', build: lw.build, fn: () => () => {
      lw.merge(W, A, B, { scale: sign * S });
      sign = -sign;
    } });
  }
  const tA = tf.tensor2d(a, [d, R]), tB = tf.tensor2d(b, [R, d]);
  const tfMerge = (): Uint16Array => {
    const merged = tf.tidy(() => tf.add(tf.tensor2d(f16Decode(w16), [d, d]), tf.mul(S, tf.matMul(tA, tB))));
    const out = f16Encode(merged.dataSync() as Float32Array);
    merged.dispose();
    return out;
  };
  verifyRounded('tfjs cast → add → cast', f16Decode(tfMerge()), 'f16', want, d);
  cases.push({ name: 'tfjs-wasm: decode f16 in JS, add(W, mul(s, matMul(A, B))), encode', by: 'tfjs-wasm', speed: 'glacial', fn: () => () => tfMerge() });
  await suite(ctx, 'half merge vs tfjs', `${d}×${d} r=16`, 2 * R * d * d, 4 * d * d, cases);
  tA.dispose();
  tB.dispose();
  for (const m of held) m.dispose();
}

export async function benchHalf(ctx: Ctx): Promise<void> {
  const w = random(D * D, 91, 0.05), a = random(D * R, 92, 0.02), b = random(R * D, 93, 0.05);
  const held: Matrix<DType>[] = [];
  const cases: Case[] = [];
  const src16 = new Uint16Array(D * D), dst16 = new Uint16Array(D * D);
  cases.push({ name: 'copy of a half W (Uint16Array.set)', by: 'copy', fn: () => () => dst16.set(src16) });
  for (const lw of ctx.builds) {
    const build = lw.build;
    const A = lw.matrix(D, R, a), B = lw.matrix(R, D, b);
    held.push(A, B);
    for (const dtype of ['f32', 'f16', 'bf16'] as const) {
      const W = lw.matrix(D, D, w, { dtype: dtype as 'f16' });
      held.push(W);
      const w0 = W.toFloat32();
      lw.merge(W, A, B, { scale: S });
      const merged = W.toFloat32();
      verifyRounded(`merge ${dtype} ${build}`, merged, dtype, rankElement(w0, a, b, D, R, D, S));
      if (dtype !== 'f32') {
        // merge → unmerge rounds twice in half precision: how many weights come back bit-exact, and how far
        // off are the others, in ulps of the larger of |W0| and |W0 + Δ| (where the two roundings happen)?
        lw.unmerge(W, A, B, { scale: S });
        const back = W.toFloat32();
        let exact = 0, worst = 0;
        for (let q = 0; q < back.length; q++) {
          if (Object.is(back[q], w0[q])) exact++;
          else worst = Math.max(worst, Math.abs(back[q]! - w0[q]!) / (2 * halfUlp(Math.max(Math.abs(w0[q]!), Math.abs(merged[q]!)), dtype)));
        }
        ctx.notes.push(`${dtype} merge → unmerge (${build}, 4096×4096, r = 16, s = 0.5): ${(100 * exact / back.length).toFixed(2)} % of weights come back bit-exact, the rest off by at most ${worst.toFixed(2)} ulp of max(|W0|, |W0 + Δ|); mergeInto from a kept W0 is exact`);
        const W0 = lw.matrix(D, D, w0);
        lw.convert(W, W0); // back to W0 for the timed runs
        W0.dispose();
      }
      let sign = 1;
      cases.push({ name: `merge, W ${dtype} (${build})`, by: 'lora-wasm', build, fn: () => () => {
        lw.merge(W, A, B, { scale: sign * S });
        sign = -sign;
      } });
    }
  }
  await suite(ctx, 'half merge', `4096×4096 r=16`, 2 * R * D * D, 4 * D * D, cases); // GB/s: a half W read and written once
  for (const m of held) m.dispose();
  await tfjsPeer(ctx);

  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: '1' };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const run = spawnSync('python3', ['bench/peers/numpy_half_merge.py'], { input: JSON.stringify({ d_out: D, d_in: D, r: R, reps: ctx.quick ? 3 : 11, seed: 3 }), encoding: 'utf8', env, timeout: 600_000 });
  if (run.error || run.status !== 0) {
    ctx.notes.push(`numpy half peer skipped: python3 with numpy is not available here (${run.error?.message ?? run.stderr.trim().split('\n').at(-1)})`);
    return;
  }
  const res = JSON.parse(run.stdout) as { numpy: string; median_s: number; row0_rel_err: number };
  if (!(res.row0_rel_err < 1e-2)) throw new Error(`numpy half merge is wrong (rel err ${res.row0_rel_err})`);
  ctx.rows.push({ group: 'half merge', shape: '4096×4096 r=16', name: 'numpy (W.astype(f32) + s·A@B).astype(f16)', by: 'numpy', ms: res.median_s * 1e3, flops: 2 * R * D * D, bytes: 4 * D * D });
}
