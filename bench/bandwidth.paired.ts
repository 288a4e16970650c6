/**
 * The profile that shows the batch-1 GEMV's limit: how fast this machine streams W's 64 MiB, and how
 * close each GEMV comes to it. One process per thread count (onnxruntime-web reads numThreads once),
 * each timing its cases interleaved, round after round (medians; ratios are medians of per-round pairs):
 *
 *   node --experimental-wasm-relaxed-simd --import tsx bench/bandwidth.paired.ts [--rounds=25] [--threads=1,2] [--no-native]
 *
 *   wasm read         the wasm SIMD read ceiling: W summed with f32x4.add into 8 accumulators, 128 B a step
 *                     (a probe module compiled here from AssemblyScript; 2 threads = the caller + 1 worker,
 *                     contiguous halves, on one shared memory)
 *   wasm gemv probe   the kernel's loop (16 floats a step, 4 accumulators) in the same probe module, twice:
 *                     x as the product needs it (16 KiB, re-read every row), and x confined to an 8 KiB window
 *                     (same instructions and W stream, a wrong product): the difference is the cost of
 *                     re-fetching x, which the W stream pushes out of L1 once x is larger than ~8–12 KiB
 *   lora-wasm gemv    lw.gemm(Y, X, W, { transY: true }), the relaxed build
 *   onnxruntime-web   Gemm(X, W, transB = 1), W an initializer (bench/peers/onnxruntime-cases.ts 'gemv')
 *   native …          a C program (gcc -O3 -march=native, OpenMP threads) run as a subprocess once per
 *                     round: AVX-512 and SSE (128-bit, wasm's width) reads, an AVX-512 GEMV and the same with
 *                     software prefetch 1 KiB ahead (what onnxruntime-node's MLAS kernels can use and wasm cannot)
 *
 * Every case runs twice back to back and the second call is timed (thread pools hot), with a 60 ms
 * gap between cases so one case's spinning workers do not steal the next case's core. Each product is
 * checked against float64 before it is timed. GB/s counts the 64 MiB of W read per call.
 * A busy machine (load above the core count) makes every figure meaningless: check /proc/loadavg first.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import asc from 'assemblyscript/dist/asc.js';
import { init } from '../src/index.js';
import { random, verify } from './common.js';
import { ORT_CASES, caseData } from './peers/onnxruntime-cases.js';
import { onnxModel } from './peers/onnx.js';

const arg = (name: string): string | undefined => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1];
const rounds = Number(arg('rounds') ?? 25);
const M = 4096, K = 4096;
const BYTES = M * K * 4;
const GAP_MS = 60;

interface Result { threads: number; cases: { name: string; ms: number; ratio: number }[]; ref: string }

// ------------------------------------------------------------------ parent: one child per thread count
if (!arg('child')) {
  const list = (arg('threads') ?? '1,2').split(',').map(Number);
  const results: Result[] = [];
  for (const t of list) {
    const run = spawnSync(process.execPath, [...process.execArgv, ...process.argv.slice(1), `--child=${t}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 22 });
    const line = run.stdout.trim().split('\n').at(-1) ?? '';
    if (run.status !== 0 || !line.startsWith('{')) throw new Error(`bandwidth: the ${t}-thread run failed (status ${run.status}): ${run.stdout}`);
    results.push(JSON.parse(line) as Result);
  }
  console.log(`batch-1 GEMV limit, W [${M}, ${K}] f32 (64 MiB read per call); ${rounds} interleaved rounds per thread count, medians`);
  console.log(`${os.cpus()[0]?.model ?? '?'}, ${os.cpus().length} cores, Node ${process.version}`);
  const names = [...new Set(results.flatMap((r) => r.cases.map((c) => c.name)))];
  const cols = results.map((r) => r.threads);
  console.log(`\n| case | ${cols.map((t) => `${t} thread${t > 1 ? 's' : ''}: ms | GB/s | % of wasm read`).join(' | ')} |`);
  console.log(`|---|${cols.map(() => '---:|---:|---:').join('|')}|`);
  for (const n of names) {
    const cells = results.map((r) => {
      const c = r.cases.find((x) => x.name === n);
      return c ? `${c.ms.toFixed(3)} | ${(BYTES / c.ms / 1e6).toFixed(1)} | ${(100 / c.ratio).toFixed(0)} %` : '– | – | –';
    });
    console.log(`| ${n} | ${cells.join(' | ')} |`);
  }
  console.log('\n% of wasm read = median over rounds of time(wasm read) / time(case), paired within each round.');
  for (const r of results) {
    const get = (n: string) => r.cases.find((c) => c.name === n);
    const ours = get('lora-wasm gemv (relaxed)'), ort = get('onnxruntime-web Gemm'), read = get('wasm read (8 × f32x4 accumulators)');
    if (ours && ort && read) {
      console.log(`${r.threads} thread(s): onnxruntime-web / lora-wasm = ${(ort.ratio / ours.ratio).toFixed(2)}× (quotient of their paired ratios to the wasm read); the wasm read ceiling would be ${(ort.ms / read.ms).toFixed(2)}× onnxruntime-web (the issue asks 1.2×)`);
    }
  }
  process.exit(0);
}

// ------------------------------------------------------------------ child: one thread count
const threads = Number(arg('child'));
const x = random(K, 21), w = random(M * K, 22);
const want = new Float64Array(M), mag = new Float64Array(M);
for (let j = 0; j < M; j++) {
  let s = 0, a = 0;
  for (let q = 0; q < K; q++) {
    s += w[j * K + q]! * x[q]!;
    a += Math.abs(w[j * K + q]! * x[q]!);
  }
  want[j] = s;
  mag[j] = a;
}
const check = (name: string, got: ArrayLike<number>): void => verify(name, got, 1, M, K, (_, j) => ({ value: want[j]!, mag: mag[j]! }));

// --- the probe module: the read ceiling and the kernel's loop, baseline SIMD (runs on every engine)
const PROBE = `
@inline function hsum(v: v128): f32 {
  return (f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 1)) + (f32x4.extract_lane(v, 2) + f32x4.extract_lane(v, 3));
}
/** Sum of bytes/4 floats from p, 8 independent accumulators, 128 bytes a step. */
export function stream(p: usize, bytes: usize): f32 {
  const end = p + bytes;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  let a4 = f32x4.splat(0), a5 = f32x4.splat(0), a6 = f32x4.splat(0), a7 = f32x4.splat(0);
  while (p < end) {
    a0 = f32x4.add(a0, v128.load(p, 0)); a1 = f32x4.add(a1, v128.load(p, 16));
    a2 = f32x4.add(a2, v128.load(p, 32)); a3 = f32x4.add(a3, v128.load(p, 48));
    a4 = f32x4.add(a4, v128.load(p, 64)); a5 = f32x4.add(a5, v128.load(p, 80));
    a6 = f32x4.add(a6, v128.load(p, 96)); a7 = f32x4.add(a7, v128.load(p, 112));
    p += 128;
  }
  return hsum(f32x4.add(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)), f32x4.add(f32x4.add(a4, a5), f32x4.add(a6, a7))));
}
/** c[j] = Σ y[j, q]·x[q & window] for K a multiple of 16; window = K·4 − 1 is the product. */
export function gemv(c: usize, x: usize, y: usize, m: i32, k: i32, window: usize): void {
  const ld = <usize>k << 2;
  for (let j = 0; j < m; j++) {
    const row = y + <usize>j * ld;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    for (let i: usize = 0; i < ld; i += 64) {
      const p = row + i, xp = x + (i & window);
      a0 = f32x4.add(f32x4.mul(v128.load(p, 0), v128.load(xp, 0)), a0);
      a1 = f32x4.add(f32x4.mul(v128.load(p, 16), v128.load(xp, 16)), a1);
      a2 = f32x4.add(f32x4.mul(v128.load(p, 32), v128.load(xp, 32)), a2);
      a3 = f32x4.add(f32x4.mul(v128.load(p, 48), v128.load(xp, 48)), a3);
    }
    store<f32>(c + (<usize>j << 2), hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3))));
  }
}`;
const compiled = await asc.compileString(PROBE, {
  enable: ['simd', 'threads'], runtime: 'stub', importMemory: true, sharedMemory: true, initialMemory: 1100, maximumMemory: 1100,
  optimizeLevel: 3, shrinkLevel: 0, noAssert: true,
});
if (!compiled.binary) throw new Error(`bandwidth: the probe module did not compile:\n${compiled.stderr.toString()}`);
const probeModule = await WebAssembly.compile(new Uint8Array(compiled.binary));
const memory = new WebAssembly.Memory({ initial: 1100, maximum: 1100, shared: true });
const PX = 1 << 20, PC = 2 << 20, PW = 4 << 20; // x, y, W in the probe memory (W 64-byte aligned)
new Float32Array(memory.buffer, PX, K).set(x);
new Float32Array(memory.buffer, PW, M * K).set(w);
type ProbeExports = { stream(p: number, bytes: number): number; gemv(c: number, x: number, y: number, m: number, k: number, window: number): void };
const probe = (await WebAssembly.instantiate(probeModule, { env: { memory, abort() {} } })).exports as unknown as ProbeExports;

// helper threads for the probe: ctrl = [seq, done, fn, a0..a5]; the caller takes part 0, worker i part i + 1
const ctrl = new Int32Array(new SharedArrayBuffer(64));
const workers: Worker[] = [];
for (let i = 1; i < threads; i++) {
  workers.push(new Worker(`
    const { workerData: { module, memory, ctrl } } = require('node:worker_threads');
    const e = new WebAssembly.Instance(module, { env: { memory, abort() {} } }).exports;
    let seen = 0;
    for (;;) {
      // poll 50 ms by the clock before sleeping, as the library's pool does
      const t = Date.now();
      while (Atomics.load(ctrl, 0) === seen && Date.now() - t < 50);
      Atomics.wait(ctrl, 0, seen);
      seen = Atomics.load(ctrl, 0);
      const part = ${i}, parts = ${threads};
      const m0 = Math.floor((ctrl[3] * part) / parts), m1 = Math.floor((ctrl[3] * (part + 1)) / parts);
      if (ctrl[2] === 0) e.stream(ctrl[4] + m0 * ctrl[5] * 4, (m1 - m0) * ctrl[5] * 4);
      else e.gemv(ctrl[7] + m0 * 4, ctrl[6], ctrl[4] + m0 * ctrl[5] * 4, m1 - m0, ctrl[5], ctrl[8]);
      Atomics.add(ctrl, 1, 1);
    }`, { eval: true, workerData: { module: probeModule, memory, ctrl } }));
  workers.at(-1)!.unref();
}
/** fn 0 = stream over rows [m0, m1) of W; fn 1 = gemv of those rows. Split in contiguous row halves. */
const probeRun = (fn: 0 | 1, window = K * 4 - 1): void => {
  ctrl.set([fn, M, PW, K, PX, PC, window], 2);
  Atomics.store(ctrl, 1, 0);
  Atomics.add(ctrl, 0, 1);
  Atomics.notify(ctrl, 0);
  const m1 = Math.floor(M / threads);
  if (fn === 0) probe.stream(PW, m1 * K * 4);
  else probe.gemv(PC, PX, PW, m1, K, window);
  while (Atomics.load(ctrl, 1) < threads - 1);
};
// the probe's gemv must be the product when x is not windowed
probeRun(1);
check('probe gemv', new Float32Array(memory.buffer, PC, M).slice());

interface Case { name: string; run: () => unknown }
const cases: Case[] = [
  { name: 'wasm read (8 × f32x4 accumulators)', run: () => probeRun(0) },
  { name: 'wasm gemv probe, x 16 KiB (the product)', run: () => probeRun(1) },
  { name: 'wasm gemv probe, x confined to 8 KiB (not a product)', run: () => probeRun(1, 8192 - 1) },
];

// --- lora-wasm
const lw = await init({ build: 'relaxed', threads });
const X = lw.matrix(1, K, x), W = lw.matrix(M, K, w), Y = lw.matrix(1, M);
lw.gemm(Y, X, W, { transY: true });
check('lora-wasm', Y.data);
cases.push({ name: 'lora-wasm gemv (relaxed)', run: () => lw.gemm(Y, X, W, { transY: true }) });

// --- onnxruntime-web, the wasm backend with SIMD, numThreads = threads
const ort = await import('onnxruntime-web');
ort.env.wasm.numThreads = threads;
ort.env.wasm.simd = true;
const d = caseData(ORT_CASES.find((c) => c.id === 'gemv')!);
const session = await ort.InferenceSession.create(onnxModel(d.graph), { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
const feeds = Object.fromEntries(d.feeds.map((f) => [f.name, new ort.Tensor('float32', f.data, f.shape)]));
const first = await session.run(feeds);
verify('onnxruntime-web', first.Y!.data as Float32Array, d.rows, d.cols, d.k, d.want);
cases.push({ name: 'onnxruntime-web Gemm', run: async () => (await session.run(feeds)).Y!.dispose() });

// --- native: compiled once per machine into the temp directory
const NATIVE = `
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define M ${M}
#define K ${K}
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }
static float *w, *x, *y; static volatile float sink;
static void read512(int j0, int j1) {
  __m512 a[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps() };
  for (const float *p = w + (size_t)j0 * K, *e = w + (size_t)j1 * K; p < e; p += 64)
    for (int u = 0; u < 4; u++) a[u] = _mm512_add_ps(a[u], _mm512_load_ps(p + 16 * u));
  sink = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
}
static void read128(int j0, int j1) {
  __m128 a[8]; for (int u = 0; u < 8; u++) a[u] = _mm_setzero_ps();
  for (const float *p = w + (size_t)j0 * K, *e = w + (size_t)j1 * K; p < e; p += 32)
    for (int u = 0; u < 8; u++) a[u] = _mm_add_ps(a[u], _mm_load_ps(p + 4 * u));
  __m128 s = _mm_setzero_ps(); for (int u = 0; u < 8; u++) s = _mm_add_ps(s, a[u]);
  float f[4]; _mm_storeu_ps(f, s); sink = f[0] + f[1] + f[2] + f[3];
}
static void gemv512(int j0, int j1, int pf) {
  for (int j = j0; j < j1; j++) {
    const float *p = w + (size_t)j * K;
    __m512 a[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps() };
    for (int q = 0; q < K; q += 64) {
      if (pf) _mm_prefetch((const char *)(p + q) + 1024, _MM_HINT_T0);
      for (int u = 0; u < 4; u++) a[u] = _mm512_fmadd_ps(_mm512_load_ps(p + q + 16 * u), _mm512_load_ps(x + q + 16 * u), a[u]);
    }
    y[j] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
  }
}
static void run(int c, int T) {
  #pragma omp parallel num_threads(T)
  {
    int t = omp_get_thread_num(), j0 = M * t / T, j1 = M * (t + 1) / T;
    if (c == 0) read512(j0, j1); else if (c == 1) read128(j0, j1); else gemv512(j0, j1, c == 3);
  }
}
static int cmp(const void *a, const void *b) { double d = *(const double *)a - *(const double *)b; return (d > 0) - (d < 0); }
int main(int argc, char **argv) {
  int T = atoi(argv[1]), R = atoi(argv[2]);
  w = aligned_alloc(64, (size_t)M * K * 4); x = aligned_alloc(64, K * 4); y = aligned_alloc(64, M * 4);
  FILE *f = fopen(argv[3], "rb"); if (!f || fread(w, 4, (size_t)M * K, f) != (size_t)M * K || fread(x, 4, K, f) != K) return 2; fclose(f);
  double t[4][64];
  for (int r = -2; r < R; r++) for (int c = 0; c < 4; c++) { run(c, T); double t0 = now(); run(c, T); if (r >= 0) t[c][r] = now() - t0; }
  for (int j = 0; j < M; j++) fwrite(&y[j], 4, 1, stdout);
  for (int c = 0; c < 4; c++) { qsort(t[c], R, sizeof(double), cmp); fprintf(stderr, "%f\\n", t[c][R / 2]); }
  return 0;
}`;
const NATIVE_NAMES = ['native read, AVX-512', 'native read, SSE (128-bit)', 'native gemv, AVX-512 FMA', 'native gemv, AVX-512 FMA + prefetch 1 KiB ahead'];
let native: ((r: number) => number[]) | undefined;
if (!process.argv.includes('--no-native')) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-bandwidth-'));
  fs.writeFileSync(path.join(dir, 'read.c'), NATIVE);
  const cc = spawnSync('gcc', ['-O3', '-march=native', '-fopenmp', '-o', path.join(dir, 'read'), path.join(dir, 'read.c')], { encoding: 'utf8' });
  if (cc.status === 0) {
    const data = path.join(dir, 'w.bin');
    fs.writeFileSync(data, Buffer.concat([Buffer.from(w.buffer), Buffer.from(x.buffer)]));
    native = () => {
      const run = spawnSync(path.join(dir, 'read'), [String(threads), '5', data], { maxBuffer: 1 << 20, env: { ...process.env, OMP_WAIT_POLICY: 'active' } });
      if (run.status !== 0) throw new Error(`bandwidth: native run failed: ${run.stderr}`);
      const yN = new Float32Array(run.stdout.buffer.slice(run.stdout.byteOffset, run.stdout.byteOffset + M * 4));
      check('native gemv', yN);
      return run.stderr.toString().trim().split('\n').map(Number);
    };
    native(0);
  } else console.error(`bandwidth: no native case (gcc failed: ${cc.stderr.split('\n')[0]})`);
}

// --- interleaved rounds
const times: number[][] = [...cases.map(() => []), ...(native ? NATIVE_NAMES.map(() => []) : [])];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
for (let r = 0; r < rounds; r++) {
  for (const [i, c] of cases.entries()) {
    await c.run();
    const t0 = performance.now();
    await c.run();
    times[i]!.push(performance.now() - t0);
    await sleep(GAP_MS);
  }
  if (native) for (const [i, ms] of native(r).entries()) times[cases.length + i]!.push(ms);
}
const median = (a: number[]): number => a.slice().sort((p, q) => p - q)[a.length >> 1]!;
const names = [...cases.map((c) => c.name), ...(native ? NATIVE_NAMES : [])];
const result: Result = {
  threads, ref: names[0]!,
  cases: names.map((name, i) => ({ name, ms: median(times[i]!), ratio: median(times[i]!.map((t, r) => t / times[0]![r]!)) })),
};
await session.release();
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
