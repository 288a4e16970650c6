/**
 * The adapter algebra at model size, single thread:
 *   extract  extractAdapter of a 4096×4096 fine-tune at k = 16 (randomized SVD: 6 GEMM passes with a
 *            26-column sketch), against the GEMM's own GFLOP/s on 256×4096×4096 in the same run;
 *   serve    adapterSet.forward of a batch of 32 rows with random adapters out of 64 (r = 16) over a
 *            4096×4096 base, against the base GEMM alone, (a) looping over the adapters one by one
 *            (each its own base GEMM and low-rank path on its rows) and (b) merging per request.
 * Every case is checked against float64 before it is timed.
 */
import type { LoRAWasm, Matrix } from '../src/index.js';
import { gemmElement, linearElement } from '../test/reference.js';
import { type Case, type Ctx, random, suite, verify } from './common.js';
import { pairedRatio } from './threads.bench.js';

const D = 4096;

async function extract(ctx: Ctx, lw: LoRAWasm): Promise<void> {
  const k = 16;
  const base = random(D * D, 301, 0.05);
  const u = random(D * 32, 302, 0.05);
  const v = random(32 * D, 303, 0.05);
  // tuned = base + a rank-32 update with a decaying spectrum (so rank 16 is a real truncation)
  const Wb = lw.matrix(D, D, base);
  const Wt = lw.matrix(D, D, base);
  const U = lw.matrix(D, 32, u.map((x, i) => x * 0.9 ** (i % 32)));
  const V = lw.matrix(32, D, v);
  lw.merge(Wt, U, V);
  const res = lw.extractAdapter(Wt, Wb, { rank: k });
  const m = res.adapter.modules[0]!;
  // check: the extracted rank-16 product against the difference on sampled entries, within the truncation error
  const [a, b, wt] = [m.A.toFloat32(), m.B.toFloat32(), Wt.toFloat32()];
  let err = 0;
  let norm = 0;
  for (let i = 0; i < D; i += 97) for (let j = 0; j < D; j += 89) {
    let s = 0;
    for (let q = 0; q < k; q++) s += a[i * k + q]! * b[q * D + j]!;
    const dd = wt[i * D + j]! - base[i * D + j]!;
    err += (s - dd) ** 2;
    norm += dd * dd;
  }
  if (!(Math.sqrt(err / norm) < Math.sqrt(1 - res.modules[0]!.energy) * 1.5 + 1e-3)) throw new Error('extractAdapter: the rank-16 factors do not reproduce ΔW; refusing to time it');
  ctx.notes.push(`extractAdapter 4096×4096 k=16 kept ${(100 * res.modules[0]!.energy).toFixed(1)} % of ‖ΔW‖²; σ₁…σ₄ ${Array.from(res.modules[0]!.singularValues.slice(0, 4)).map((x) => x.toPrecision(3)).join(', ')}`);
  res.adapter.dispose();
  const X = lw.matrix(256, D, random(256 * D, 304));
  const Y = lw.matrix(256, D);
  lw.gemm(Y, X, Wb, { transY: true });
  verify('gemm', Y.data, 256, D, D, linearElement(X.toFloat32(), base, 256, D, D));
  const l = Math.ceil((k + 10) / 8) * 8; // the sketch width rsvd.ts uses: k + 10, in whole 8-column strips
  const gemmFlops = 6 * 2 * D * D * l; // Y = MΩ, 2 × (MᵀQ, MQ), Bᵀ = MᵀQ
  // the extraction's own GEMM shapes: ΔW·Ω and ΔWᵀ·Q with l = 32 columns
  const Om = lw.matrix(D, l, random(D * l, 305)), Sk = lw.matrix(D, l);
  lw.gemm(Sk, Wb, Om);
  verify('thin gemm', Sk.data, D, l, D, (i, j) => gemmElement({ data: base, rows: D, cols: D }, { data: Om.toFloat32(), rows: D, cols: l }, i, j));
  const cases: Case[] = [
    { name: `GEMM 256×4096×4096 X·Wᵀ (${lw.build})`, by: 'lora-wasm', build: lw.build, speed: 'slow', fn: () => () => lw.gemm(Y, X, Wb, { transY: true }) },
    { name: `GEMM 4096×4096 · 4096×${l}, then its transpose product (${lw.build})`, by: 'lora-wasm', build: lw.build, speed: 'slow', fn: () => () => {
      lw.gemm(Sk, Wb, Om);
      lw.gemm(Sk, Wb, Om, { transX: true });
    } },
    { name: `extractAdapter k=16 (${lw.build})`, by: 'lora-wasm', build: lw.build, speed: 'slow', fn: () => () => lw.extractAdapter(Wt, Wb, { rank: k }).adapter.dispose() },
  ];
  await suite(ctx, 'adapters: extract', '4096×4096, k=16', gemmFlops, 0, cases);
  const rows = ctx.rows.filter((r) => r.group === 'adapters: extract');
  rows.find((r) => r.name.startsWith('GEMM 256'))!.flops = 2 * 256 * D * D;
  rows.find((r) => r.name.startsWith('GEMM 4096'))!.flops = 2 * 2 * D * D * l;
  // the target's ratio, paired and interleaved: the GEMM time of the six passes alone over the whole call
  const passes = () => {
    for (let i = 0; i < 3; i++) {
      lw.gemm(Sk, Wb, Om);
      lw.gemm(Sk, Wb, Om, { transX: true });
    }
  };
  const p = pairedRatio(passes, () => lw.extractAdapter(Wt, Wb, { rank: k }).adapter.dispose(), ctx.quick ? 3 : 15);
  (ctx.paired ??= []).push({ group: 'adapters: extract', shape: '4096×4096, k=16', pairs: ctx.quick ? 3 : 15, ...p });
  for (const x of [Wb, Wt, U, V, X, Y, Om, Sk]) x.dispose();
}

async function serve(ctx: Ctx, lw: LoRAWasm): Promise<void> {
  const [count, r, batch] = [64, 16, 32];
  const w = random(D * D, 401, 0.05);
  const W = lw.matrix(D, D, w);
  const adapters: { A: Matrix; B: Matrix; scale: number; a: Float32Array; b: Float32Array }[] = [];
  for (let i = 0; i < count; i++) {
    const a = random(D * r, 500 + i, 0.02), b = random(r * D, 600 + i, 0.02);
    adapters.push({ A: lw.matrix(D, r, a), B: lw.matrix(r, D, b), scale: 2, a, b });
  }
  const pick = random(batch, 402).map((x) => Math.floor((x + 1) * count / 2) % count);
  const rowAdapter = Array.from(pick);
  const x = random(batch * D, 403);
  const X = lw.matrix(batch, D, x);
  const Y = lw.matrix(batch, D);
  const set = lw.adapterSet(W, adapters);
  set.forward(X, rowAdapter, Y);
  // float64: y_i = x_i·Wᵀ + s·(x_i·B_aᵀ)·A_aᵀ, sampled
  verify('adapterSet.forward', Y.data, batch, D, D + r, (i, j) => {
    const base = gemmElement({ data: x, rows: batch, cols: D }, { data: w, rows: D, cols: D, trans: true }, i, j);
    const ad = adapters[rowAdapter[i]!]!;
    let lo = 0;
    let mag = 0;
    for (let q = 0; q < r; q++) {
      let h = 0;
      let hm = 0;
      for (let k2 = 0; k2 < D; k2++) {
        h += x[i * D + k2]! * ad.b[q * D + k2]!;
        hm += Math.abs(x[i * D + k2]! * ad.b[q * D + k2]!);
      }
      lo += ad.scale * h * ad.a[j * r + q]!;
      mag += Math.abs(ad.scale * ad.a[j * r + q]!) * hm;
    }
    return { value: base.value + lo, mag: base.mag + mag };
  }, 12);
  const groups = new Map<number, number[]>();
  rowAdapter.forEach((a, i) => groups.set(a, [...(groups.get(a) ?? []), i]));
  // (a) one adapter at a time: its rows through the base GEMM and its low-rank path
  const loop = () => {
    for (const [a, rows] of groups) {
      const ad = adapters[a]!;
      const xs = lw.matrix(rows.length, D);
      rows.forEach((i, j) => xs.data.set(X.data.subarray(i * D, (i + 1) * D), j * D));
      const ys = lw.matmul(xs, W, { transY: true });
      const h = lw.matmul(xs, ad.B, { transY: true });
      lw.gemm(ys, h, ad.A, { transY: true, alpha: ad.scale, beta: 1 });
      rows.forEach((i, j) => Y.data.set(ys.data.subarray(j * D, (j + 1) * D), i * D));
      for (const m of [xs, ys, h]) m.dispose();
    }
  };
  // (b) merge per request: W' = W + s·A·B for the row's adapter, then y = x·W'ᵀ
  const wMerged = lw.matrix(D, D);
  const yRow = lw.matrix(1, D);
  const xRow = lw.matrix(1, D);
  const perRequest = () => {
    for (let i = 0; i < batch; i++) {
      const ad = adapters[rowAdapter[i]!]!;
      lw.mergeInto(wMerged, W, ad.A, ad.B, { scale: ad.scale });
      xRow.data.set(X.data.subarray(i * D, (i + 1) * D));
      lw.gemm(yRow, xRow, wMerged, { transY: true });
    }
  };
  loop();
  verify('loop over adapters', Y.data, batch, D, D + r, (i, j) => {
    const ad = adapters[rowAdapter[i]!]!;
    const base = gemmElement({ data: x, rows: batch, cols: D }, { data: w, rows: D, cols: D, trans: true }, i, j);
    let lo = 0;
    for (let q = 0; q < r; q++) {
      let h = 0;
      for (let k2 = 0; k2 < D; k2++) h += x[i * D + k2]! * ad.b[q * D + k2]!;
      lo += ad.scale * h * ad.a[j * r + q]!;
    }
    return { value: base.value + lo, mag: base.mag + Math.abs(lo) * 4 + 1e-3 };
  }, 12);
  const cases: Case[] = [
    { name: `base GEMM alone, X·Wᵀ (${lw.build})`, by: 'lora-wasm', build: lw.build, speed: 'slow', fn: () => () => lw.gemm(Y, X, W, { transY: true }) },
    { name: `adapterSet.forward (${lw.build})`, by: 'lora-wasm', build: lw.build, speed: 'slow', fn: () => () => set.forward(X, rowAdapter, Y) },
    { name: `(a) loop over the adapters one by one (${lw.build})`, by: 'lora-wasm', build: lw.build, speed: 'slow', fn: () => loop },
    ...(ctx.quick ? [] : [{ name: `(b) merge per request (${lw.build})`, by: 'lora-wasm', build: lw.build, speed: 'glacial', fn: () => perRequest } as Case]),
  ];
  const shape = `batch ${batch}, ${groups.size} of ${count} adapters r=${r}, 4096×4096`;
  await suite(ctx, 'adapters: serve', shape, 2 * batch * D * D, 0, cases);
  // the target's ratio, paired and interleaved (medians taken seconds apart swing on this machine)
  const p = pairedRatio(() => lw.gemm(Y, X, W, { transY: true }), () => set.forward(X, rowAdapter, Y), ctx.quick ? 5 : 30);
  (ctx.paired ??= []).push({ group: 'adapters: serve', shape, pairs: ctx.quick ? 5 : 30, ...p });
  set.dispose();
  for (const m of [W, X, Y, wMerged, yRow, xRow, ...adapters.flatMap((a) => [a.A, a.B])]) m.dispose();
}

export async function benchAdapters(ctx: Ctx): Promise<void> {
  const lw = ctx.builds.at(-1)!;
  await extract(ctx, lw);
  await serve(ctx, lw);
}

