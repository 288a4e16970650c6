/**
 * ggml block quantization (src/gguf/quant.ts): quantize and dequantize of 2²⁰ values (4 MiB of f32)
 * per ggml type, on 1 thread and on 2, interleaved (one call of each case per round, medians over
 * rounds) because the machine is shared; the 1-thread and 2-thread cases run in separate phases (see
 * below). MB/s counts the f32 side (n·4 bytes) per second, both ways.
 *
 *   node --experimental-wasm-relaxed-simd --import tsx bench/quants.paired.ts [--rounds=15] [--build=relaxed] [--types=Q4_K,Q8_0] [--ggml]
 *
 * --ggml adds the native peer: llama.cpp's own libggml-base.so (node-llama-cpp's linux-x64 build), one
 * thread, timed inside the C harness of the tests (test/fixtures/ggml-ref.c, compiled with cc) on the
 * same values; the ratio is its time over ours (above 1: we are faster).
 *
 * Before timing, each type is checked: 2 threads give the 1-thread bytes, and the round trip is
 * within the type's error (RMS relative error per 256 values); test/gguf-quants.test.ts proves the
 * bytes equal llama.cpp's.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { detectFeatures } from '../src/index.js';
import { QUANT_TYPES, dequantize, quantize, quantizedBytes } from '../src/gguf/quant.js';
import { GGML_TYPE, type GgmlTypeName } from '../src/io/gguf-types.js';
import type { Engine } from '../src/runtime/engine.js';
import { loadEngine } from '../src/runtime/load.js';
import { interleaved } from './common.js';
import { seededRandom } from '../src/index.js';

const arg = (name: string): string | undefined => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1];
const rounds = Number(arg('rounds') ?? 15);
const builds = (arg('build')?.split(',') ?? (detectFeatures().relaxed ? ['relaxed'] : ['baseline'])) as ('baseline' | 'relaxed')[];
const types = (arg('types')?.split(',') ?? QUANT_TYPES.filter((t) => !['F32', 'F16', 'BF16'].includes(t))) as GgmlTypeName[];
const N = 1 << 20;

/** RMS error over RMS value a type must reach on normal data (well above what each gives). */
const TOLERANCE: Partial<Record<GgmlTypeName, number>> = {
  Q2_K: 0.45, Q3_K: 0.25, Q4_0: 0.15, Q4_1: 0.15, Q4_K: 0.12, Q5_0: 0.08, Q5_1: 0.08, Q5_K: 0.06, Q6_K: 0.03, Q8_0: 0.01,
};

/** Native ggml: type → [quantize ms, dequantize ms] of N values, or undefined without --ggml. */
function nativePeer(): ((type: GgmlTypeName) => [number, number]) | undefined {
  if (!process.argv.includes('--ggml')) return undefined;
  const root = fileURLToPath(new URL('..', import.meta.url));
  const lib = path.join(root, 'node_modules/@node-llama-cpp/linux-x64/bins/linux-x64');
  const dir = mkdtempSync(path.join(tmpdir(), 'lora-wasm-ggml-bench-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const exe = path.join(dir, 'ggml-ref');
  execFileSync('cc', ['-O2', '-o', exe, path.join(root, 'test/fixtures/ggml-ref.c'), `-L${lib}`, '-l:libggml-base.so', `-Wl,-rpath,${lib}`]);
  const input = path.join(dir, 'x.f32');
  writeFileSync(input, new Uint8Array(x.buffer));
  return (type) => execFileSync(exe, ['time', String(GGML_TYPE[type]), '4096', input, String(rounds)]).toString().trim().split(' ').map(Number) as [number, number];
}

const next = seededRandom(7);
const x = Float32Array.from({ length: N }, () => 0.02 * Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next()));

/** The native columns: ggml's MB/s and its time over ours. */
function peer(type: GgmlTypeName, msQ: number, msD: number): string {
  if (!native) return '';
  const [q, d] = native(type);
  const mb = (ms: number): string => ((N * 4) / (ms * 1e3)).toFixed(0);
  return `   ${mb(q).padStart(6)} (${(q / msQ).toFixed(2)}×) ${mb(d).padStart(6)} (${(d / msD).toFixed(2)}×)`;
}

interface Side { e: Engine; src: number; q: number; back: number }
function side(e: Engine, type: GgmlTypeName): Side {
  const src = e.heap.alloc(N * 4, 'bench x').ptr;
  const q = e.heap.alloc(quantizedBytes(type, N), 'bench q').ptr;
  const back = e.heap.alloc(N * 4, 'bench back').ptr;
  e.heap.f32At(src, N).set(x);
  return { e, src, q, back };
}

const native = nativePeer();
for (const build of builds) {
  const one = await loadEngine({ build, threads: 1 });
  const two = await loadEngine({ build, threads: 2 });
  console.log(`\n# ${build} build, ${N} values (${(N * 4) / 2 ** 20} MiB f32), ${rounds} rounds; MB/s of f32 (10⁶ B/s)`);
  console.log(`${'type'.padEnd(6)} ${'quantize 1T'.padStart(12)} ${'2T'.padStart(8)} ${'2T/1T'.padStart(6)}   ${'dequantize 1T'.padStart(13)} ${'2T'.padStart(8)} ${'2T/1T'.padStart(6)}   rms err${native ? '   ggml 1T: quantize, dequantize MB/s (ggml/ours 1T)' : ''}`);
  for (const type of types) {
    const a = side(one, type), b = side(two, type);
    // checks: identical bytes on 2 threads, and a sane round trip
    quantize(one, type, a.q, a.src, N);
    quantize(two, type, b.q, b.src, N);
    const qa = new Uint8Array(one.heap.memory.buffer, a.q, quantizedBytes(type, N));
    const qb = new Uint8Array(two.heap.memory.buffer, b.q, quantizedBytes(type, N));
    if (qa.some((v, i) => v !== qb[i])) throw new Error(`${type}: 2 threads gave other bytes than 1; refusing to time`);
    dequantize(one, type, a.back, a.q, N);
    const y = one.heap.f32At(a.back, N);
    let err = 0, ref = 0;
    for (let i = 0; i < N; i++) {
      err += (y[i]! - x[i]!) ** 2;
      ref += x[i]! ** 2;
    }
    const rel = Math.sqrt(err / ref);
    if (!(rel <= (TOLERANCE[type] ?? 0.5))) throw new Error(`${type}: round-trip RMS error ${rel} is too large; refusing to time`);
    // 1 thread and 2 threads in separate phases: after a pool call the worker polls for 50 ms
    // (src/pool/), which on 2 cores would take a core from a 1-thread case run right after it
    const t1 = interleaved([{ run: () => quantize(one, type, a.q, a.src, N) }, { run: () => dequantize(one, type, a.back, a.q, N) }], rounds);
    const t2 = interleaved([{ run: () => quantize(two, type, b.q, b.src, N) }, { run: () => dequantize(two, type, b.back, b.q, N) }], rounds);
    const ms = [t1.median(0), t2.median(0), t1.median(1), t2.median(1)];
    const mbs = (i: number): string => ((N * 4) / (ms[i]! * 1e3)).toFixed(0);
    console.log(
      `${type.padEnd(6)} ${mbs(0).padStart(12)} ${mbs(1).padStart(8)} ${(ms[0]! / ms[1]!).toFixed(2).padStart(6)}   ` +
        `${mbs(2).padStart(13)} ${mbs(3).padStart(8)} ${(ms[2]! / ms[3]!).toFixed(2).padStart(6)}   ${rel.toFixed(4)}` + peer(type, ms[0]!, ms[2]!),
    );
  }
  two.kernel.endPool();
}
