/**
 * Threads: the merge, GEMM and a training step on 1–4 threads (init({ threads })), in one run with
 * the single-thread copy of W, tfjs-backend-wasm and numpy at their best thread counts, plus the
 * per-call overhead below the split threshold and the measurement that chose the threshold.
 *
 * Every lora-wasm case is checked against float64 before it is timed (and threads > 1 must equal
 * threads = 1 bit for bit, which test/threads.test.ts asserts; here the same check guards the timing).
 */
import { spawnSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs-core';
import { type LoRAWasm, type Matrix, detectFeatures, init } from '../src/index.js';
import { splitPolicy } from '../src/kernel/scheduler.js';
import { linearElement, rankElement } from '../test/reference.js';
import { type Case, type Ctx, type Paired, random, suite, verify } from './common.js';

export const THREAD_COUNTS = [1, 2, 3, 4];

/**
 * This machine is shared and its load changes from second to second, so a ratio of two medians taken
 * seconds apart can swing by a third. A paired measurement alternates the two calls, times each pair
 * back to back, and takes the median of the per-pair ratios: slow spells hit both sides of a pair.
 */
export function pairedRatio(one: () => unknown, two: () => unknown, pairs: number): { ratio: number; msOne: number; msTwo: number } {
  const time = (f: () => unknown): number => {
    const t = performance.now();
    f();
    return performance.now() - t;
  };
  one();
  two();
  const t1: number[] = [];
  const t2: number[] = [];
  for (let i = 0; i < pairs; i++) {
    // alternate which side goes first
    if (i % 2 === 0) {
      t1.push(time(one));
      t2.push(time(two));
    } else {
      t2.push(time(two));
      t1.push(time(one));
    }
  }
  const median = (x: number[]) => [...x].sort((p, q) => p - q)[x.length >> 1]!;
  return { ratio: median(t1.map((a, i) => a / t2[i]!)), msOne: median(t1), msTwo: median(t2) };
}

const sameBits = (a: Float32Array, b: Float32Array, what: string): void => {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  if (x.length !== y.length || x.some((v, i) => v !== y[i])) throw new Error(`${what}: differs from 1 thread; refusing to time it`);
};

function recordPaired(ctx: Ctx, group: string, shape: string, one: () => unknown, two: () => unknown, pairs: number): Paired {
  const p = { group, shape, pairs, ...pairedRatio(one, two, pairs) };
  (ctx.paired ??= []).push(p);
  return p;
}

/** --quick: 1 and 2 threads (this machine's cores), the merge at r = 8 and the GEMM only, fewer pairs, no threshold sweep. */
const threadCounts = (ctx: Ctx): number[] => (ctx.quick ? THREAD_COUNTS.slice(0, 2) : THREAD_COUNTS);

async function instances(ctx: Ctx): Promise<LoRAWasm[]> {
  const build = detectFeatures().relaxed ? 'relaxed' : 'baseline';
  return Promise.all(threadCounts(ctx).map((threads) => init({ build, threads })));
}

async function mergeShape(ctx: Ctx, lws: LoRAWasm[], d: number, r: number): Promise<void> {
  const s = 0.5;
  const w0 = random(d * d, 51 + r, 0.05), a = random(d * r, 52, 0.02), bm = random(r * d, 53, 0.05);
  const cases: Case[] = [];
  const held: Matrix[] = [];
  const calls: (() => void)[] = [];
  const copyDst = new Float32Array(d * d);
  cases.push({ name: 'copy of W (Float32Array.set), 1 thread', by: 'copy', fn: () => () => copyDst.set(w0) });
  let first: Float32Array | undefined;
  for (const lw of lws) {
    const W = lw.matrix(d, d, w0), A = lw.matrix(d, r, a), B = lw.matrix(r, d, bm);
    held.push(W, A, B);
    lw.merge(W, A, B, { scale: s });
    verify(`merge ${lw.threads} threads`, W.data, d, d, r, rankElement(w0, a, bm, d, r, d, s));
    first ??= W.toFloat32();
    sameBits(W.toFloat32(), first, `merge on ${lw.threads} threads`);
    lw.unmerge(W, A, B, { scale: s });
    let sign = 1;
    const call = () => {
      if (sign > 0) lw.merge(W, A, B, { scale: s });
      else lw.unmerge(W, A, B, { scale: s });
      sign = -sign;
    };
    calls.push(call);
    cases.push({ name: `merge, ${lw.threads} thread${lw.threads > 1 ? 's' : ''} (${lw.build})`, by: 'lora-wasm', build: lw.build, threads: lw.threads, fn: () => call });
  }
  const tW = tf.tensor2d(w0, [d, d]), tA = tf.tensor2d(a, [d, r]), tB = tf.tensor2d(bm, [r, d]);
  const tfMerge = () => tf.tidy(() => tf.add(tW, tf.mul(s, tf.matMul(tA, tB))));
  const t = tfMerge();
  verify('tfjs merge', t.dataSync() as Float32Array, d, d, r, rankElement(w0, a, bm, d, r, d, s));
  t.dispose();
  cases.push({ name: 'tfjs-wasm add(W, mul(s, matMul(A, B))), 1 thread', by: 'tfjs-wasm', threads: 1, speed: 'slow', fn: () => () => tfMerge().dispose() });
  await suite(ctx, 'threads: merge', `${d}×${d} r=${r}`, 2 * r * d * d, 8 * d * d, cases);
  recordPaired(ctx, 'threads: merge', `${d}×${d} r=${r}`, calls[0]!, calls[1]!, ctx.quick ? 10 : 60);
  // the copy of W against the 2-thread merge, paired the same way (ratio = copy time / merge time)
  recordPaired(ctx, 'threads: merge vs copy', `${d}×${d} r=${r}`, () => copyDst.set(w0), calls[1]!, ctx.quick ? 10 : 60);
  for (const x of [tW, tA, tB]) x.dispose();
  for (const m of held) m.dispose();
}

async function gemmShape(ctx: Ctx, lws: LoRAWasm[], n: number, d: number): Promise<void> {
  const x = random(n * d, 61), w = random(d * d, 62, 0.05);
  const cases: Case[] = [];
  const held: Matrix[] = [];
  const calls: (() => void)[] = [];
  let first: Float32Array | undefined;
  for (const lw of lws) {
    const X = lw.matrix(n, d, x), W = lw.matrix(d, d, w), Y = lw.matrix(n, d);
    held.push(X, W, Y);
    lw.gemm(Y, X, W, { transY: true });
    verify(`gemm ${lw.threads} threads`, Y.data, n, d, d, linearElement(x, w, n, d, d));
    first ??= Y.toFloat32();
    sameBits(Y.toFloat32(), first, `gemm on ${lw.threads} threads`);
    const call = () => lw.gemm(Y, X, W, { transY: true });
    calls.push(call);
    cases.push({ name: `X·Wᵀ, ${lw.threads} thread${lw.threads > 1 ? 's' : ''} (${lw.build})`, by: 'lora-wasm', build: lw.build, threads: lw.threads, speed: 'slow', fn: () => call });
  }
  // tfjs's fast path wants Wᵀ stored [in, out] (with transposeB it leaves XNNPACK): hand it that
  const wt = new Float32Array(d * d);
  for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) wt[j * d + i] = w[i * d + j]!;
  const tX = tf.tensor2d(x, [n, d]), tWtc = tf.tensor2d(wt, [d, d]);
  const tfg = () => tf.tidy(() => tf.matMul(tX, tWtc));
  const t = tfg();
  verify('tfjs gemm', t.dataSync() as Float32Array, n, d, d, linearElement(x, w, n, d, d));
  t.dispose();
  cases.push({ name: 'tfjs-wasm matMul(X, Wt), 1 thread', by: 'tfjs-wasm', threads: 1, speed: 'slow', fn: () => () => tfg().dispose() });
  await suite(ctx, 'threads: gemm', `${n}×${d}×${d}`, 2 * n * d * d, 4 * n * d, cases);
  recordPaired(ctx, 'threads: gemm', `${n}×${d}×${d}`, calls[0]!, calls[1]!, ctx.quick ? 3 : 15);
  for (const v of [tX, tWtc]) v.dispose();
  for (const m of held) m.dispose();
}

async function trainingStep(ctx: Ctx, lws: LoRAWasm[]): Promise<void> {
  const [n, D, R] = [64, 4096, 16];
  const x = random(n * D, 71), w = random(D * D, 72, 0.05), target = random(n * D, 73);
  const cases: Case[] = [];
  const held: { dispose(): void }[] = [];
  const calls: (() => void)[] = [];
  let first: Float32Array | undefined;
  for (const lw of lws) {
    const X = lw.matrix(n, D, x), W = lw.matrix(D, D, w), T = lw.matrix(n, D, target), G = lw.matrix(n, D);
    const layer = lw.linear({ W, r: R, alpha: 32, inputGrad: false, seed: 4 });
    const opt = lw.adamw(layer.parameters(), { lr: 1e-4 });
    held.push(layer, opt, X, W, T, G);
    verify(`training forward ${lw.threads} threads`, layer.forward(X).data, n, D, D, linearElement(x, w, n, D, D));
    lw.mseLoss(layer.forward(X), T, G);
    layer.backward(G);
    first ??= layer.gradB.toFloat32();
    sameBits(layer.gradB.toFloat32(), first, `∂B on ${lw.threads} threads`);
    const call = () => {
      lw.mseLoss(layer.forward(X), T, G);
      layer.backward(G);
      opt.step();
    };
    calls.push(call);
    cases.push({ name: `training step, ${lw.threads} thread${lw.threads > 1 ? 's' : ''} (${lw.build})`, by: 'lora-wasm', build: lw.build, threads: lw.threads, speed: 'slow', fn: () => call });
  }
  await suite(ctx, 'threads: training step', `batch ${n}, ${D}×${D} r=${R}`, 2 * n * D * D, 0, cases);
  recordPaired(ctx, 'threads: training step', `batch ${n}, ${D}×${D} r=${R}`, calls[0]!, calls[1]!, ctx.quick ? 10 : 30);
  for (const h of held) h.dispose();
}

/** A merge below the split threshold on an instance with a pool: it must cost what it costs without one. */
async function overhead(ctx: Ctx, lws: LoRAWasm[]): Promise<void> {
  const [d, r] = [128, 8]; // 131 k multiply-adds < 2·MIN_MACS_PER_THREAD: stays on the calling thread
  const w0 = random(d * d, 81, 0.05), a = random(d * r, 82, 0.02), bm = random(r * d, 83, 0.05);
  const cases: Case[] = [];
  const held: Matrix[] = [];
  for (const lw of lws.slice(0, 2)) {
    const W = lw.matrix(d, d, w0), A = lw.matrix(d, r, a), B = lw.matrix(r, d, bm);
    held.push(W, A, B);
    let sign = 1;
    cases.push({ name: `merge below the threshold, init({ threads: ${lw.threads} })`, by: 'lora-wasm', build: lw.build, threads: lw.threads, fn: () => () => {
      if (sign > 0) lw.merge(W, A, B, { scale: 0.5 });
      else lw.unmerge(W, A, B, { scale: 0.5 });
      sign = -sign;
    } });
  }
  const runs = lws[1]!.workerPool?.runs ?? 0;
  await suite(ctx, 'threads: per-call overhead', `${d}×${d} r=${r}`, 2 * r * d * d, 8 * d * d, cases);
  recordPaired(ctx, 'threads: per-call overhead', `${d}×${d} r=${r}`, cases[0]!.fn(), cases[1]!.fn(), ctx.quick ? 501 : 2001);
  if ((lws[1]!.workerPool?.runs ?? 0) !== runs) throw new Error('the small merge used the pool: the threshold is not what this bench assumes');
  for (const m of held) m.dispose();
}

/**
 * How the split thresholds were chosen: merges and f32 → f16 conversions of growing size, forced
 * onto 2 threads (thresholds set to 1) against 1 thread, paired and interleaved (pairedRatio), and
 * the bare round trip of a pool run. Where 2 threads start to win sets MIN_MACS_PER_THREAD and
 * MIN_BYTES_PER_THREAD (src/kernel/scheduler.ts). Printed as notes.
 */
async function threshold(ctx: Ctx, lws: LoRAWasm[]): Promise<void> {
  const saved = { ...splitPolicy };
  const [lw1, lw2] = [lws[0]!, lws[1]!];
  const pool = lw2.workerPool!;
  const trips: number[] = [];
  for (let i = 0; i < 2001; i++) {
    const t = performance.now();
    pool.run('bench', [['absMax', 0, 0, 0], ['absMax', 0, 0, 0]], () => 0);
    trips.push(performance.now() - t);
  }
  trips.sort((a, b) => a - b);
  ctx.notes.push(`a pool run with one empty job on a worker: ${(trips[1000]! * 1e3).toFixed(1)} µs median round trip (workers poll for WORKER_SPIN_MS, 50 ms, before they sleep: calls within that find them awake)`);
  const lines: string[] = [];
  splitPolicy.minMacs = 1;
  splitPolicy.minBytes = 1;
  try {
    for (const d of [64, 128, 256, 512, 1024]) {
      const r = 8;
      const w0 = random(d * d, 91, 0.05), a = random(d * r, 92, 0.02), bm = random(r * d, 93, 0.05);
      const ms = [lw1, lw2].map((lw) => [lw.matrix(d, d, w0), lw.matrix(d, r, a), lw.matrix(r, d, bm)] as const);
      const calls = ms.map(([W, A, B], k) => {
        const lw = [lw1, lw2][k]!;
        let sign = 1;
        return () => {
          if (sign > 0) lw.merge(W, A, B, { scale: 0.5 });
          else lw.unmerge(W, A, B, { scale: 0.5 });
          sign = -sign;
        };
      });
      const p = pairedRatio(calls[0]!, calls[1]!, d <= 256 ? 1001 : 201);
      lines.push(`merge ${d}×${d} r=${r} (${((d * d * r) / 1024).toFixed(0)} k multiply-adds): 1 thread ${(p.msOne * 1e3).toFixed(0)} µs, 2 threads ${(p.msTwo * 1e3).toFixed(0)} µs, ×${p.ratio.toFixed(2)}`);
      for (const m of ms.flat()) m.dispose();
    }
    for (const n of [4096, 16384, 65536, 262144, 1048576]) {
      const src = random(n, 94);
      const ms = [lw1, lw2].map((lw) => [lw.matrix(1, n, src), lw.matrix(1, n, undefined, { dtype: 'f16' })] as const);
      const calls = ms.map(([S, H], k) => () => [lw1, lw2][k]!.convert(H, S));
      const p = pairedRatio(calls[0]!, calls[1]!, n <= 65536 ? 1001 : 201);
      lines.push(`f32 → f16 of ${n / 1024} k elements (${(6 * n) / 1024} KB touched): 1 thread ${(p.msOne * 1e3).toFixed(0)} µs, 2 threads ${(p.msTwo * 1e3).toFixed(0)} µs, ×${p.ratio.toFixed(2)}`);
      for (const m of ms.flat()) m.dispose();
    }
  } finally {
    Object.assign(splitPolicy, saved);
  }
  ctx.notes.push(`split threshold measurement (forced onto 2 threads vs 1, paired medians): ${lines.join('; ')}`);
}

/** numpy at 1 and 2 OpenBLAS threads; the faster of the two is the peer row. */
function numpyPeers(ctx: Ctx): void {
  const job = {
    cases: [
      { kind: 'merge', d_out: 4096, d_in: 4096, r: 8, group: 'threads: merge', shape: '4096×4096 r=8' },
      { kind: 'merge', d_out: 4096, d_in: 4096, r: 16, group: 'threads: merge', shape: '4096×4096 r=16' },
      { kind: 'gemm', n: 256, m: 4096, k: 4096, group: 'threads: gemm', shape: '256×4096×4096' },
    ].filter((c) => !ctx.quick || c.shape !== '4096×4096 r=16').map((c, i) => ({ ...c, reps: ctx.quick ? 3 : 11, seed: i })),
  };
  type Res = { numpy: string; cases: { group: string; shape: string; kind: string; median_s: number; row0_rel_err: number; r?: number; n?: number }[] };
  const runs: { threads: number; res: Res }[] = [];
  for (const threads of [1, 2]) {
    const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads) };
    delete env.OPENBLAS_CORETYPE;
    delete env.OPENBLAS_L2_SIZE;
    const run = spawnSync('python3', ['bench/peers/numpy_threads.py'], { input: JSON.stringify(job), encoding: 'utf8', env, timeout: 600_000 });
    if (run.error || run.status !== 0) {
      ctx.notes.push(`numpy threads peer skipped: python3 with numpy is not available here (${run.error?.message ?? run.stderr.trim().split('\n').at(-1)})`);
      return;
    }
    runs.push({ threads, res: JSON.parse(run.stdout) as Res });
  }
  job.cases.forEach((c, i) => {
    const best = runs.map((r) => ({ threads: r.threads, c: r.res.cases[i]! })).sort((p, q) => p.c.median_s - q.c.median_s)[0]!;
    if (!(best.c.row0_rel_err < 1e-3)) throw new Error(`numpy ${c.kind} ${c.shape} is wrong (rel err ${best.c.row0_rel_err})`);
    const flops = c.kind === 'merge' ? 2 * c.r! * c.d_out! * c.d_in! : 2 * c.n! * c.m! * c.k!;
    const times = runs.map((r) => `${r.threads}: ${(r.res.cases[i]!.median_s * 1e3).toFixed(1)} ms`).join(', ');
    ctx.rows.push({
      group: c.group, shape: c.shape, name: `numpy ${c.kind === 'merge' ? 'W + A @ B' : 'X @ W.T'}, best of 1–2 threads (${times})`,
      by: 'numpy', threads: best.threads, ms: best.c.median_s * 1e3, flops, bytes: c.kind === 'merge' ? 8 * c.d_out! * c.d_in! : 4 * c.n! * c.m!,
    });
  });
  ctx.notes.push(`numpy ${runs[0]!.res.numpy} in the threads tables: OPENBLAS_NUM_THREADS 1 and 2, the faster kept (numpy's elementwise W + … is single-threaded either way)`);
}

/**
 * The merge after an idle gap: each call alone, `gap` ms after the last call of either side (the event
 * loop sleeps, so the pool's workers go back to waiting), 1 thread against 2, paired and alternated.
 * Users' calls are rarely back to back; a pool that is fast only while its workers spin gains nothing.
 */
async function afterIdle(ctx: Ctx, lws: LoRAWasm[], d: number, r: number, gap: number): Promise<void> {
  const w0 = random(d * d, 71 + r, 0.05), a = random(d * r, 72, 0.02), bm = random(r * d, 73, 0.05);
  const sides = lws.slice(0, 2).map((lw) => {
    const W = lw.matrix(d, d, w0), A = lw.matrix(d, r, a), B = lw.matrix(r, d, bm);
    let sign = 1;
    return {
      held: [W, A, B],
      call: () => {
        lw.merge(W, A, B, { scale: 0.5 * sign });
        sign = -sign;
      },
    };
  });
  const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));
  const time = async (f: () => void): Promise<number> => {
    await sleep(gap);
    const t = performance.now();
    f();
    return performance.now() - t;
  };
  const pairs = ctx.quick ? 10 : 40;
  const t1: number[] = [];
  const t2: number[] = [];
  for (let i = 0; i < pairs + 1; i++) {
    const [x, y] = i % 2 ? [await time(sides[1]!.call), await time(sides[0]!.call)] : [await time(sides[0]!.call), await time(sides[1]!.call)];
    if (i === 0) continue; // the first call of each side compiles and warms
    t1.push(i % 2 ? y : x);
    t2.push(i % 2 ? x : y);
  }
  const median = (x: number[]) => [...x].sort((p, q) => p - q)[x.length >> 1]!;
  const shape = `${d}×${d} r=${r}`;
  (ctx.paired ??= []).push({ group: `threads: merge after ${gap} ms idle`, shape, pairs, ratio: median(t1.map((v, i) => v / t2[i]!)), msOne: median(t1), msTwo: median(t2) });
  for (const side of sides) side.held.forEach((m) => m.dispose());
}

export async function benchThreads(ctx: Ctx): Promise<void> {
  const lws = await instances(ctx);
  if (lws.some((lw, i) => lw.threads !== threadCounts(ctx)[i])) throw new Error(`asked for ${threadCounts(ctx)} threads, got ${lws.map((lw) => lw.threads)}`);
  ctx.notes.push(`threads tables: ${lws[0]!.build} build; this machine has ${(await import('node:os')).availableParallelism()} cores, so 3 and 4 threads oversubscribe them`);
  ctx.notes.push('tfjs-backend-wasm runs single-threaded in Node (WASM_HAS_MULTITHREAD_SUPPORT is off), so 1 thread is its best here');
  await mergeShape(ctx, lws, 4096, 8);
  if (!ctx.quick) await mergeShape(ctx, lws, 4096, 16);
  await gemmShape(ctx, lws, 256, 4096);
  if (!ctx.quick) await trainingStep(ctx, lws);
  await afterIdle(ctx, lws, 4096, 8, 30);
  await afterIdle(ctx, lws, 1024, 16, 30);
  await overhead(ctx, lws);
  if (!ctx.quick) await threshold(ctx, lws);
  numpyPeers(ctx);
  for (const lw of lws) lw.dispose();
}
