// ggml's block quantization against the real llama.cpp: for every type with a kernel, our quantized
// bytes must equal ggml_quantize_chunk's (no importance matrix: quantize_row_*_ref) byte for byte, and
// our dequantization of ggml's bytes must equal dequantize_row_* bit for bit, on data of many shapes.
// The oracle is libggml-base.so from node-llama-cpp (a devDependency), driven through a small C
// harness (test/fixtures/ggml-ref.c) compiled here with `cc`; a missing compiler or library FAILS
// this suite (CI installs both).
// Node only (child processes and a C compiler).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRAFormatError, LoRARangeError } from '../src/errors.js';
import { QUANT_TYPES, dequantize, quantize, quantizedBytes } from '../src/gguf/quant.js';
import { GGML_TYPE, type GgmlType, type GgmlTypeName, ggmlType } from '../src/io/gguf-types.js';
import { QUANT_TMP_BYTES } from '../src/kernel/kernels.js';
import { splitPolicy } from '../src/kernel/scheduler.js';
import type { Engine } from '../src/runtime/engine.js';
import { loadEngine } from '../src/runtime/load.js';
import { BUILD, assertThrowsTyped, rng } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const LIB_DIR = path.join(root, 'node_modules/@node-llama-cpp/linux-x64/bins/linux-x64');
const BLOCK_TYPES: GgmlTypeName[] = ['Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K'];
const ROW = 512;
const info = (name: GgmlTypeName): GgmlType => ggmlType(name)!; // values per row: two K-quant super-blocks, sixteen 32-value blocks

// ------------------------------------------------------------ the oracle

let harness: { exe: string; dir: string } | undefined;
/** The compiled C harness (once per run). Throws, failing the test, when cc or the library is missing. */
function ggmlRef(): { exe: string; dir: string } {
  if (harness) return harness;
  const lib = path.join(LIB_DIR, 'libggml-base.so');
  if (!existsSync(lib)) {
    throw new Error(`ggml oracle: ${lib} is missing; install the devDependencies (npm ci: node-llama-cpp 3.21.1 ships it for linux-x64)`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'lora-wasm-ggml-'));
  const exe = path.join(dir, 'ggml-ref');
  try {
    execFileSync('cc', ['-O2', '-o', exe, path.join(root, 'test/fixtures/ggml-ref.c'), `-L${LIB_DIR}`, '-l:libggml-base.so', `-Wl,-rpath,${LIB_DIR}`], { stdio: 'pipe' });
  } catch (e) {
    const err = e as { code?: string; stderr?: Buffer };
    throw new Error(err.code === 'ENOENT'
      ? 'ggml oracle: no C compiler `cc` on PATH; install gcc (CI does) to compare with llama.cpp'
      : `ggml oracle: compiling test/fixtures/ggml-ref.c failed: ${err.stderr?.toString() ?? String(e)}`);
  }
  harness = { exe, dir };
  return harness;
}

/** ggml's bytes for x (rows of ROW values) and its dequantization of them. */
function ggmlQuantize(type: number, x: Float32Array): { bytes: Uint8Array; values: Float32Array } {
  const { exe, dir } = ggmlRef();
  const [inF, outQ, outF] = ['in.f32', 'out.q', 'out.f32'].map((f) => path.join(dir, f)) as [string, string, string];
  writeFileSync(inF, new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
  execFileSync(exe, ['quantize', String(type), String(ROW), inF, outQ, outF]);
  const values = readFileSync(outF);
  return { bytes: new Uint8Array(readFileSync(outQ)), values: new Float32Array(values.buffer, values.byteOffset, values.byteLength / 4) };
}

/** ggml's dequantization of arbitrary blocks. */
function ggmlDequantize(type: number, bytes: Uint8Array): Float32Array {
  const { exe, dir } = ggmlRef();
  const [inQ, outF] = ['in.q', 'out.f32'].map((f) => path.join(dir, f)) as [string, string];
  writeFileSync(inQ, bytes);
  execFileSync(exe, ['dequantize', String(type), inQ, outF]);
  const values = readFileSync(outF);
  return new Float32Array(values.buffer, values.byteOffset, values.byteLength / 4);
}

// ------------------------------------------------------------ data

/** Seeded standard normal values (Box–Muller). */
function normal(r: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

/** Test inputs: name → rows·ROW f32 values. Each distribution has 8 rows (128 legacy blocks, 16 super-blocks). */
function distributions(): [string, Float32Array][] {
  const rows = 8;
  const n = rows * ROW;
  const make = (seed: number, f: (i: number, r: () => number, g: () => number) => number): Float32Array => {
    const r = rng(seed);
    const g = normal(r);
    return Float32Array.from({ length: n }, (_, i) => f(i, r, g));
  };
  return [
    ['normal σ=1', make(1, (_, __, g) => g())],
    ['normal σ=0.02 (weights)', make(2, (_, __, g) => 0.02 * g())],
    ['uniform [−1, 1)', make(3, (_, r) => 2 * r() - 1)],
    ['uniform [0.5, 1.5) (all positive)', make(4, (_, r) => 0.5 + r())],
    ['uniform [−3, −1) (all negative)', make(5, (_, r) => -1 - 2 * r())],
    ['normal with 1 % outliers ×40', make(6, (_, r, g) => (r() < 0.01 ? 40 : 1) * g())],
    ['all zeros', new Float32Array(n)],
    ['tiny values (1e−20)', make(7, (_, __, g) => 1e-20 * g())],
    ['subnormal values (1e−39)', make(8, (_, __, g) => 1e-39 * g())],
    ['constant blocks (0.7, −3 per 32)', make(9, (i) => ((i >> 5) % 2 ? 0.7 : -3))],
    ['large magnitudes (±1e4)', make(10, (_, __, g) => 1e4 * g())],
    ['one huge value per 32-block', make(11, (i, r, g) => (i % 32 === 7 ? 1000 * (r() < 0.5 ? -1 : 1) : g()))],
    ['sparse (90 % zeros)', make(12, (_, r, g) => (r() < 0.9 ? 0 : g()))],
    ['few levels (integers −3..3)', make(13, (_, r) => Math.floor(7 * r()) - 3)],
  ];
}

// ------------------------------------------------------------ the library under test

let engines: Partial<Record<'one' | 'two', Promise<Engine>>> = {};
const engine = (threads: 1 | 2): Promise<Engine> => (engines[threads === 1 ? 'one' : 'two'] ??= loadEngine({ build: BUILD, threads }));

/** Runs our quantize on x, returning the bytes. */
function ours(e: Engine, type: GgmlTypeName, x: Float32Array): Uint8Array {
  const bytes = quantizedBytes(type, x.length);
  const src = e.heap.alloc(x.length * 4, 'test src');
  const dst = e.heap.alloc(bytes, 'test dst');
  try {
    e.heap.f32At(src.ptr, x.length).set(x);
    quantize(e, type, dst.ptr, src.ptr, x.length);
    return new Uint8Array(e.heap.memory.buffer, dst.ptr, bytes).slice();
  } finally {
    e.heap.free(src);
    e.heap.free(dst);
  }
}

/** Runs our dequantize on the blocks q, returning n values. */
function oursBack(e: Engine, type: GgmlTypeName, q: Uint8Array, n: number): Float32Array {
  const src = e.heap.alloc(q.length, 'test src');
  const dst = e.heap.alloc(n * 4, 'test dst');
  try {
    new Uint8Array(e.heap.memory.buffer, src.ptr, q.length).set(q);
    dequantize(e, type, dst.ptr, src.ptr, n);
    return e.heap.f32At(dst.ptr, n).slice();
  } finally {
    e.heap.free(src);
    e.heap.free(dst);
  }
}

/** Blocks (of typeSize bytes) where a and b differ: their indices. */
function differingBlocks(a: Uint8Array, b: Uint8Array, typeSize: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < a.length; i += typeSize) {
    for (let j = i; j < i + typeSize; j++) {
      if (a[j] !== b[j]) {
        out.push(i / typeSize);
        break;
      }
    }
  }
  return out;
}

/** First index where the values differ bit for bit (any NaN equals any NaN), or -1. */
function firstValueDifference(a: Float32Array, b: Float32Array): number {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < a.length; i++) if (ua[i] !== ub[i] && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) return i;
  return -1;
}

const hex = (q: Uint8Array, block: number, size: number): string => Buffer.from(q.subarray(block * size, (block + 1) * size)).toString('hex');

// ------------------------------------------------------------ tests

test('QUANT_TYPES are the block types with kernels and F32/F16/BF16, sized as libggml-base sizes them', () => {
  const { exe } = ggmlRef();
  const lib = new Map(execFileSync(exe, ['traits']).toString().trim().split('\n').map((l) => {
    const [id, blck, size] = l.split(' ');
    return [Number(id), [Number(blck), Number(size)]] as const;
  }));
  assert.equal([...QUANT_TYPES], ['F32', 'F16', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K', 'BF16']);
  for (const name of QUANT_TYPES) {
    const t = info(name);
    assert.equal([t.blockSize, t.typeSize], lib.get(t.id), `${name}: block size and bytes per block`);
    assert.is(quantizedBytes(name, 4 * t.blockSize), 4 * t.typeSize, `${name}: quantizedBytes`);
  }
});

test(`quantize gives ggml's bytes exactly, for every block type and data shape (${BUILD})`, async () => {
  const e = await engine(1);
  const dists = distributions();
  const report: string[] = [];
  for (const name of BLOCK_TYPES) {
    const t = info(name);
    const x = new Float32Array(dists.length * dists[0]![1].length);
    dists.forEach(([, v], i) => x.set(v, i * v.length));
    const ref = ggmlQuantize(t.id, x);
    const got = ours(e, name, x);
    assert.is(got.length, ref.bytes.length, `${name}: byte count`);
    const diff = differingBlocks(got, ref.bytes, t.typeSize);
    const perDist = got.length / t.typeSize / dists.length;
    if (diff.length > 0) {
      const b = diff[0]!;
      report.push(`${name}: ${diff.length} of ${got.length / t.typeSize} blocks differ; first block ${b} (${dists[Math.floor(b / perDist)]![0]}): ours ${hex(got, b, t.typeSize)} ggml ${hex(ref.bytes, b, t.typeSize)}`);
    }
  }
  assert.is(report.join('\n'), '', 'blocks that differ from ggml');
});

test(`dequantize gives ggml's values bit for bit, on ggml's blocks and on random bytes (${BUILD})`, async () => {
  const e = await engine(1);
  const dists = distributions();
  const x = new Float32Array(dists.length * dists[0]![1].length);
  dists.forEach(([, v], i) => x.set(v, i * v.length));
  const r = rng(99);
  for (const name of BLOCK_TYPES) {
    const t = info(name);
    const ref = ggmlQuantize(t.id, x);
    const got = oursBack(e, name, ref.bytes, x.length);
    const i = firstValueDifference(got, ref.values);
    assert.is(i, -1, `${name}: value ${i} is ${got[i]} but ggml gives ${ref.values[i]}`);
    // arbitrary blocks: every bit pattern of scales and quants, NaN/Inf scales included
    const blocks = 96;
    const bytes = Uint8Array.from({ length: blocks * t.typeSize }, () => Math.floor(256 * r()));
    const want = ggmlDequantize(t.id, bytes);
    const got2 = oursBack(e, name, bytes, blocks * t.blockSize);
    const j = firstValueDifference(got2, want);
    assert.is(j, -1, `${name} random blocks: value ${j} is ${got2[j]} but ggml gives ${want[j]}`);
  }
});

test(`F32, F16 and BF16 go through the convert kernel and match ggml_quantize_chunk's rounding (${BUILD})`, async () => {
  const e = await engine(1);
  const x = distributions().flatMap(([, v]) => Array.from(v.subarray(0, 256)));
  const xs = Float32Array.from([...x, 65504, 65520, -70000, 1e-8, 5.9604645e-8, 2.9802322e-8]);
  const n = Math.floor(xs.length / ROW) * ROW;
  const input = xs.subarray(0, n);
  for (const name of ['F32', 'F16', 'BF16'] as const) {
    const t = info(name);
    const ref = ggmlQuantize(t.id, input);
    const got = ours(e, name, input);
    assert.equal(differingBlocks(got, ref.bytes, t.typeSize).length, 0, `${name}: bytes`);
    assert.is(firstValueDifference(oursBack(e, name, got, n), ref.values), -1, `${name}: values back`);
  }
});

test(`two threads give the same bytes and values as one (${BUILD})`, async () => {
  const e1 = await engine(1);
  const e2 = await engine(2);
  const saved = { ...splitPolicy };
  splitPolicy.minBytes = 1;
  try {
    const x = distributions()[0]![1];
    for (const name of QUANT_TYPES) {
      const a = ours(e1, name, x);
      const b = ours(e2, name, x);
      assert.equal(differingBlocks(a, b, 1).length, 0, `${name}: quantized bytes with 2 threads`);
      assert.is(firstValueDifference(oursBack(e2, name, a, x.length), oursBack(e1, name, a, x.length)), -1, `${name}: values with 2 threads`);
    }
  } finally {
    Object.assign(splitPolicy, saved);
  }
});

test('a length that is not whole blocks throws LoRARangeError naming the type and the length', async () => {
  const e = await engine(1);
  const block = e.heap.alloc(4096, 'test');
  try {
    assertThrowsTyped(() => quantize(e, 'Q4_K', block.ptr, block.ptr + 2048, 100), LoRARangeError, ['Q4_K', '256', '100']);
    assertThrowsTyped(() => dequantize(e, GGML_TYPE.Q8_0, block.ptr, block.ptr + 2048, 33), LoRARangeError, ['Q8_0', '32', '33']);
    assertThrowsTyped(() => quantizedBytes('Q6_K', 255), LoRARangeError, ['Q6_K', '255']);
    assertThrowsTyped(() => quantize(e, 'Q8_0', block.ptr, block.ptr + 64, 64), LoRARangeError, ['overlap']);
    assertThrowsTyped(() => quantize(e, 'Q8_0', e.heap.memory.buffer.byteLength - 10, block.ptr, 32), LoRARangeError, ['dst', 'wasm memory']);
  } finally {
    e.heap.free(block);
  }
});

test('a type without a kernel, an unknown or a removed type throws LoRAFormatError naming it', async () => {
  const e = await engine(1);
  assertThrowsTyped(() => quantize(e, 'IQ2_XXS', 0, 0, 256), LoRAFormatError, ['IQ2_XXS']);
  assertThrowsTyped(() => dequantize(e, GGML_TYPE.MXFP4, 0, 0, 32), LoRAFormatError, ['MXFP4']);
  assertThrowsTyped(() => quantize(e, 99, 0, 0, 32), LoRAFormatError, ['99']);
  assertThrowsTyped(() => quantize(e, 32, 0, 0, 32), LoRAFormatError, ['32', 'Q4_0_4_8', 'removed']);
  assertThrowsTyped(() => quantizedBytes('Q9_9' as GgmlTypeName, 32), LoRAFormatError, ['Q9_9']);
  assert.is(quantizedBytes('q4_K' as GgmlTypeName, 4096), 16 * 144, "ggml_type_name's spelling is accepted");
});

test('QUANT_TMP_BYTES agrees with its twin in the wasm module', async () => {
  const bytes = readFileSync(path.join(root, `build/lora-${BUILD}.wasm`));
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 65536 });
  const { instance } = await WebAssembly.instantiate(bytes, { env: { memory, abort: () => {} } });
  assert.is((instance.exports.QUANT_TMP_BYTES as WebAssembly.Global).value, QUANT_TMP_BYTES);
});

test.after(async () => {
  for (const p of Object.values(engines)) (await p).kernel.endPool();
  engines = {};
  if (harness) rmSync(harness.dir, { recursive: true, force: true });
});

test.run();
