/**
 * ggml block (de)quantization between f32 and the types with wasm kernels, byte-exact with llama.cpp
 * (the type table itself, ids and sizes of every ggml type, is src/io/gguf-types.ts) (assembly/quants.ts,
 * assembly/quants-k.ts; test/gguf-quants.test.ts compares them with the real libggml-base).
 *
 * quantize and dequantize work between raw wasm-memory pointers (e.g. blocks from engine.heap.alloc),
 * split over the worker pool by whole blocks when the call is large enough; every block is computed
 * alone, so the bytes do not depend on the thread count.
 */
import { LoRAFormatError, LoRARangeError } from '../errors.js';
import { GGML_TYPES, type GgmlType, type GgmlTypeName, REMOVED_GGML_TYPES, ggmlType } from '../io/gguf-types.js';
import type { Engine } from '../runtime/engine.js';

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

/** A type given by id or by name ('Q4_K', or ggml_type_name's 'q4_K'). Throws LoRAFormatError for an unknown or removed type. */
function typeOf(fn: string, type: number | string): GgmlType {
  const t = ggmlType(type);
  if (t) return t;
  const removed = typeof type === 'number' ? REMOVED_GGML_TYPES.get(type) : undefined;
  throw new LoRAFormatError(removed
    ? `${fn}: ggml type ${type} is ${removed} and has no defined size`
    : `${fn}: unknown ggml type ${typeof type === 'string' ? JSON.stringify(type) : String(type)}`);
}

/** Bytes of n values of `type` as ggml stores them (ggml_row_size). Throws LoRARangeError when n is not a whole number of blocks. */
export function quantizedBytes(type: number | GgmlTypeName, n: number): number {
  const t = typeOf('quantizedBytes', type);
  checkLength('quantizedBytes', t, n);
  return (n / t.blockSize) * t.typeSize;
}

function checkLength(fn: string, t: GgmlType, n: number): void {
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
  const t = typeOf(fn, type);
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
export const QUANT_TYPES: readonly GgmlTypeName[] = GGML_TYPES.map((t) => t.name).filter((name) => KERNEL_COST[name] !== undefined);

/**
 * dst ← n f32 values at src as ggml blocks of `type` (ggml_quantize_chunk without an importance
 * matrix, i.e. ggml's quantize_row_*_ref: the same bytes as llama.cpp). F16 and BF16 round to
 * nearest, ties to even; F32 copies. dst: quantizedBytes(type, n) bytes; src: n·4 bytes (pointers into
 * engine's wasm memory, not overlapping). n must be a multiple of the type's block size.
 */
export function quantize(engine: Engine, type: number | GgmlTypeName, dst: number, src: number, n: number): void {
  run('quantize', 'quantize', engine, type, dst, src, n);
}

/** dst ← n f32 values decoded from the ggml blocks of `type` at src (dequantize_row_*, bit for bit). */
export function dequantize(engine: Engine, type: number | GgmlTypeName, dst: number, src: number, n: number): void {
  run('dequantize', 'dequantize', engine, type, dst, src, n);
}
