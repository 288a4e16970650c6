// Scalar helpers shared by the ggml block quantizers (quants.ts, quants-k.ts): the exact f32 and
// integer behaviour of ggml's C code on x86-64 (SSE, no FMA contraction, FLT_EVAL_METHOD 0), which
// wasm's f32 arithmetic reproduces bit for bit once the few C conversions below are emulated.

import { DTYPE_F16, load1, store1 } from './convert';

/** ggml_type ids of the types with kernels here. Twin: GGML_TYPE in src/io/gguf-types.ts (from ggml.h). */
export const GGML_Q4_0: i32 = 2;
export const GGML_Q4_1: i32 = 3;
export const GGML_Q5_0: i32 = 6;
export const GGML_Q5_1: i32 = 7;
export const GGML_Q8_0: i32 = 8;
export const GGML_Q2_K: i32 = 10;
export const GGML_Q3_K: i32 = 11;
export const GGML_Q4_K: i32 = 12;
export const GGML_Q5_K: i32 = 13;
export const GGML_Q6_K: i32 = 14;

/** Per-thread scratch a quantizer needs (bytes; the K-quants' L, Laux, weights, scales, mins). Twin: QUANT_TMP_BYTES in src/kernel/kernels.ts. */
export const QUANT_TMP_BYTES: i32 = 1024;

/**
 * ggml's nearest_int (ggml-quants.c): adding 1.5·2²³ puts round-to-nearest-even of fval in the low
 * mantissa bits (valid for |fval| ≤ 2²² − 1; outside, the same bit trick gives the same garbage).
 */
// @ts-ignore: decorator
@inline
export function nearestInt(fval: f32): i32 {
  const val = fval + <f32>12582912.0;
  return (reinterpret<i32>(val) & 0x007fffff) - 0x00400000;
}

/**
 * A C float → integer conversion as x86-64 compiles it (cvttss2si): truncation toward zero, and
 * 0x80000000 for NaN or anything outside the i32 range. Narrower C targets ((int8_t)f, (uint8_t)f)
 * keep the low bits of this.
 */
// @ts-ignore: decorator
@inline
export function cvtt(f: f32): i32 {
  return f >= <f32>-2147483648.0 && f < <f32>2147483648.0 ? <i32>f : <i32>0x80000000;
}

/** C's roundf: to nearest, halfway cases away from zero (x − trunc(x) is exact). */
// @ts-ignore: decorator
@inline
export function roundAway(x: f32): f32 {
  const a = Mathf.abs(x);
  const t = Mathf.trunc(a);
  const r = a - t >= <f32>0.5 ? t + <f32>1.0 : t;
  return x < 0 ? -r : r;
}

/** GGML_FP16_TO_FP32 of the f16 at p (exact; convert.ts). */
// @ts-ignore: decorator
@inline
export function getF16(p: usize): f32 {
  return load1(p, DTYPE_F16);
}

/** GGML_FP32_TO_FP16: stores v at p as f16, round to nearest, ties to even (convert.ts). */
// @ts-ignore: decorator
@inline
export function putF16(p: usize, v: f32): void {
  store1(p, v, DTYPE_F16);
}

/** C's MAX and MIN on ints. */
// @ts-ignore: decorator
@inline
export function imax(a: i32, b: i32): i32 {
  return a > b ? a : b;
}

// @ts-ignore: decorator
@inline
export function imin(a: i32, b: i32): i32 {
  return a < b ? a : b;
}
