/**
 * ggml's tensor types: the id table (enum ggml_type of ggml.h, every type with its block size and
 * bytes per block, so that any tensor can be sized and copied untouched) and block (de)quantization
 * between f32 and the types with wasm kernels, byte-exact with llama.cpp (assembly/quants.ts,
 * assembly/quants-k.ts; test/gguf-quants.test.ts compares them with the real libggml-base).
 *
 * quantize and dequantize work between raw wasm-memory pointers (e.g. blocks from engine.heap.alloc),
 * split over the worker pool by whole blocks when the call is large enough; every block is computed
 * alone, so the bytes do not depend on the thread count.
 */
import { LoRAFormatError, LoRARangeError } from '../errors.js';
import type { Engine } from '../runtime/engine.js';

/**
 * enum ggml_type (ggml/include/ggml.h), as the library node-llama-cpp 3.21.1 ships numbers it
 * (GGML_TYPE_COUNT 43). Ids 4, 5 (Q4_2, Q4_3), 31–33 (Q4_0_4_4, Q4_0_4_8, Q4_0_8_8) and 36–38
 * (IQ4_NL_4_4, _4_8, _8_8) were removed from ggml and have no size. Twin: GGML_Q* in
 * assembly/quant-math.ts (the ids with kernels).
 */
export const GGML_TYPE = {
  F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q5_0: 6, Q5_1: 7, Q8_0: 8, Q8_1: 9,
  Q2_K: 10, Q3_K: 11, Q4_K: 12, Q5_K: 13, Q6_K: 14, Q8_K: 15,
  IQ2_XXS: 16, IQ2_XS: 17, IQ3_XXS: 18, IQ1_S: 19, IQ4_NL: 20, IQ3_S: 21, IQ2_S: 22, IQ4_XS: 23,
  I8: 24, I16: 25, I32: 26, I64: 27, F64: 28, IQ1_M: 29, BF16: 30,
  TQ1_0: 34, TQ2_0: 35, MXFP4: 39, NVFP4: 40, Q1_0: 41, Q2_0: 42,
} as const;

export type GgmlTypeName = keyof typeof GGML_TYPE;

export interface GgmlTypeInfo {
  readonly id: number;
  /** The enum's name without GGML_TYPE_ (ggml_type_name gives it in lower case, K-quants as q4_K). */
  readonly name: GgmlTypeName;
  /** Values per block (1 for plain element types). */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly typeSize: number;
  /** Whether quantize and dequantize here take this type (the block types with kernels, and F32/F16/BF16). */
  readonly kernels: boolean;
}

/** [name, values per block, bytes per block] in id order (ggml.c's type_traits). */
const SIZES: readonly [GgmlTypeName, number, number][] = [
  ['F32', 1, 4], ['F16', 1, 2], ['Q4_0', 32, 18], ['Q4_1', 32, 20], ['Q5_0', 32, 22], ['Q5_1', 32, 24],
  ['Q8_0', 32, 34], ['Q8_1', 32, 36], ['Q2_K', 256, 84], ['Q3_K', 256, 110], ['Q4_K', 256, 144],
  ['Q5_K', 256, 176], ['Q6_K', 256, 210], ['Q8_K', 256, 292], ['IQ2_XXS', 256, 66], ['IQ2_XS', 256, 74],
  ['IQ3_XXS', 256, 98], ['IQ1_S', 256, 50], ['IQ4_NL', 32, 18], ['IQ3_S', 256, 110], ['IQ2_S', 256, 82],
  ['IQ4_XS', 256, 136], ['I8', 1, 1], ['I16', 1, 2], ['I32', 1, 4], ['I64', 1, 8], ['F64', 1, 8],
  ['IQ1_M', 256, 56], ['BF16', 1, 2], ['TQ1_0', 256, 54], ['TQ2_0', 256, 66], ['MXFP4', 32, 17],
  ['NVFP4', 64, 36], ['Q1_0', 128, 18], ['Q2_0', 64, 18],
];

/**
 * The types quantize and dequantize take, with the work per f32 value in streamed bytes (the unit of
 * the scheduler's split threshold, MIN_BYTES_PER_THREAD), from single-thread speeds of
 * bench/quants.paired.ts: dequantizing runs at 5–17 GB/s of f32 (about a stream's cost per byte), the
 * legacy quantizers at 0.25–1 GB/s and the K-quants' searches at 30–250 MB/s, so a value costs tens
 * to hundreds of streamed bytes.
 */
const KERNEL_COST: Partial<Record<GgmlTypeName, { quantize: number; dequantize: number }>> = {
  F32: { quantize: 8, dequantize: 8 }, F16: { quantize: 6, dequantize: 6 }, BF16: { quantize: 6, dequantize: 6 },
  Q4_0: { quantize: 48, dequantize: 6 }, Q4_1: { quantize: 48, dequantize: 6 }, Q5_0: { quantize: 48, dequantize: 6 },
  Q5_1: { quantize: 48, dequantize: 6 }, Q8_0: { quantize: 96, dequantize: 6 },
  Q2_K: { quantize: 512, dequantize: 6 }, Q3_K: { quantize: 256, dequantize: 6 }, Q4_K: { quantize: 512, dequantize: 6 },
  Q5_K: { quantize: 512, dequantize: 6 }, Q6_K: { quantize: 256, dequantize: 6 },
};

/** Removed ids, for a clearer error. */
const REMOVED: Readonly<Record<number, string>> = {
  4: 'Q4_2', 5: 'Q4_3', 31: 'Q4_0_4_4', 32: 'Q4_0_4_8', 33: 'Q4_0_8_8', 36: 'IQ4_NL_4_4', 37: 'IQ4_NL_4_8', 38: 'IQ4_NL_8_8',
};

/** Every ggml type by id. */
export const GGML_TYPES: ReadonlyMap<number, GgmlTypeInfo> = new Map(SIZES.map(([name, blockSize, typeSize]) => {
  const id = GGML_TYPE[name];
  return [id, Object.freeze({ id, name, blockSize, typeSize, kernels: KERNEL_COST[name] !== undefined })];
}));

const BY_NAME: ReadonlyMap<string, GgmlTypeInfo> = new Map([...GGML_TYPES.values()].map((t) => [t.name.toLowerCase(), t]));

/** A type given by id or by name ('Q4_K', or ggml_type_name's 'q4_K'). Throws LoRAFormatError for an unknown or removed type. */
export function ggmlTypeInfo(type: number | string, fn = 'ggmlTypeInfo'): GgmlTypeInfo {
  const info = typeof type === 'number' ? GGML_TYPES.get(type) : typeof type === 'string' ? BY_NAME.get(type.toLowerCase()) : undefined;
  if (info) return info;
  const removed = typeof type === 'number' ? REMOVED[type] : undefined;
  throw new LoRAFormatError(removed
    ? `${fn}: ggml type ${type} (${removed}) was removed from ggml and has no defined size`
    : `${fn}: unknown ggml type ${typeof type === 'string' ? JSON.stringify(type) : String(type)}`);
}

/** Bytes of n values of `type` (ggml_row_size). Throws LoRARangeError when n is not a whole number of blocks. */
export function ggmlBytes(type: number | string, n: number, fn = 'ggmlBytes'): number {
  const t = ggmlTypeInfo(type, fn);
  checkLength(fn, t, n);
  return (n / t.blockSize) * t.typeSize;
}

function checkLength(fn: string, t: GgmlTypeInfo, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new LoRARangeError(`${fn}: the length must be a whole number ≥ 0, got ${String(n)} (${t.name})`);
  if (n % t.blockSize !== 0) {
    throw new LoRARangeError(`${fn}: ${t.name} stores blocks of ${t.blockSize} values, so the length must be a multiple of ${t.blockSize}; got ${n}`);
  }
}

function checkRange(fn: string, engine: Engine, what: string, ptr: number, bytes: number): void {
  const size = engine.heap.memory.buffer.byteLength;
  if (!Number.isSafeInteger(ptr) || ptr < 0 || ptr + bytes > size) {
    throw new LoRARangeError(`${fn}: ${what} [${String(ptr)}, ${String(ptr + bytes)}) is not inside wasm memory (${size} bytes)`);
  }
}

function run(fn: string, op: 'quantize' | 'dequantize', engine: Engine, type: number | GgmlTypeName, dst: number, src: number, n: number): void {
  const t = ggmlTypeInfo(type, fn);
  const cost = KERNEL_COST[t.name];
  if (!cost) throw new LoRAFormatError(`${fn}: ggml type ${t.name} (${t.id}) has no ${op} kernel here; supported: ${QUANT_TYPES.join(', ')}`);
  checkLength(fn, t, n);
  if (n > 2 ** 31 - 1) throw new LoRARangeError(`${fn}: at most 2³¹ − 1 values per call, got ${n} (${t.name})`);
  if (n === 0) return;
  const blockBytes = (n / t.blockSize) * t.typeSize;
  const [dstBytes, srcBytes] = op === 'quantize' ? [blockBytes, n * 4] : [n * 4, blockBytes];
  checkRange(fn, engine, 'dst', dst, dstBytes);
  checkRange(fn, engine, 'src', src, srcBytes);
  if (dst < src + srcBytes && src < dst + dstBytes) {
    throw new LoRARangeError(`${fn}: dst [${dst}, ${dst + dstBytes}) and src [${src}, ${src + srcBytes}) overlap`);
  }
  engine.kernel.ggmlBlocks(fn, op, t.id, dst, src, n, t.blockSize, t.typeSize, cost[op]);
}

/** The types quantize and dequantize take. */
export const QUANT_TYPES: readonly GgmlTypeName[] = SIZES.map(([name]) => name).filter((name) => KERNEL_COST[name] !== undefined);

/**
 * dst ← n f32 values at src as ggml blocks of `type` (ggml_quantize_chunk without an importance
 * matrix, i.e. ggml's quantize_row_*_ref: the same bytes as llama.cpp). F16 and BF16 round to
 * nearest, ties to even; F32 copies. dst: ggmlBytes(type, n) bytes; src: n·4 bytes (pointers into
 * engine's wasm memory, not overlapping). n must be a multiple of the type's block size.
 */
export function quantize(engine: Engine, type: number | GgmlTypeName, dst: number, src: number, n: number): void {
  run('quantize', 'quantize', engine, type, dst, src, n);
}

/** dst ← n f32 values decoded from the ggml blocks of `type` at src (dequantize_row_*, bit for bit). */
export function dequantize(engine: Engine, type: number | GgmlTypeName, dst: number, src: number, n: number): void {
  run('dequantize', 'dequantize', engine, type, dst, src, n);
}
