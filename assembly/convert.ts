// Half precision <-> f32: IEEE binary16 (f16) and bfloat16 (bf16), eight lanes at a time.
//
// Memory holds packed u16s; one v128 load brings eight halves (an i16x8), decoded into two f32x4
// (lo: halves 0–3, hi: 4–7); two f32x4 are encoded into one i16x8 and stored with one v128 store.
// SIMD128 has no half instructions, so this is integer and float ALU work, written to need few ops:
// sign, magnitude, masks are computed on all eight 16-bit lanes at once, and 16 → 32-bit widening
// is one interleave (i8x16.shuffle as punpck{l,h}wd) that also does the shift.
//
// f16 → f32 (exact, subnormals included; NaN payloads, signalling ones too, kept bit for bit):
//   m = h & 0x7fff; bits(m << 13) · 2¹¹² rebiases the exponent by a multiply: exact for normal and
//   subnormal halves (an f32 subnormal times a power of two that makes it normal is exact; wasm never
//   flushes them); m << 13 as 32-bit lanes is (m << 13 as i16) interleaved with (m >> 3).
//   Exponent 31 (Inf/NaN) comes out as 2¹⁶·(1 + f) and gets its exponent forced to 255 by OR-ing
//   0x7f80 into the high half, together with the sign (one interleave of [0, sign | inf]).
// f32 → f16 (round to nearest, ties to even, one rounding), the float-arithmetic way:
//   base = (|f|·2¹¹²)·2⁻¹¹⁰ (= 4|f| exactly, or +Inf for |f| ≥ 2¹⁶), bias = 2^(e + 15) for |f|'s
//   exponent e, at least 2 (whose spacing 2⁻²² is f16's subnormal spacing 2⁻²⁴ times 4);
//   fl(base + bias) makes the FPU round 4|f| at 4× f16's spacing (normal or subnormal) with ties to
//   even, once, and the f16 exponent and mantissa are read off its bits:
//   ((bits >> 13) & 0x7c00) + (bits & 0x0fff) (a carry rounds up into the exponent, up to Inf);
//   NaN → 0x7E00 (quiet), then the sign, which narrows by saturation (0x80000000 → 0x8000).
// bf16 → f32: bits << 16 (exact): one interleave of [0, h].
// f32 → bf16: (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 (ties to even; overflow rounds to ±Inf),
//   NaN → (bits >> 16) | 0x40 (kept NaN, made quiet).
// see: https://github.com/Maratyszcza/FP16 (fp16_ieee_to_fp32_value, fp16_ieee_from_fp32_value);
//      XNNPACK src/f32-f16-vcvt/wasmsimd.c.in (the same encode on wasm SIMD);
//      F. Giesen, "float->half variants" (https://gist.github.com/rygorous/2156668)

import { madd, select } from './simd';

/** Element types. Twin: DTYPE_CODE in src/kernel/kernels.ts. */
export const DTYPE_F32: i32 = 0;
export const DTYPE_F16: i32 = 1;
export const DTYPE_BF16: i32 = 2;

// @ts-ignore: decorator
@inline
export function itemBytes(dt: i32): usize {
  return dt == DTYPE_F32 ? 4 : 2;
}

/** The 32-bit lanes lo | hi << 16 of 16-bit lanes 0–3 of lo and hi (punpcklwd). */
// @ts-ignore: decorator
@inline
function interleaveLo(lo: v128, hi: v128): v128 {
  return i8x16.shuffle(lo, hi, 0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
}

/** The same for 16-bit lanes 4–7 (punpckhwd). */
// @ts-ignore: decorator
@inline
function interleaveHi(lo: v128, hi: v128): v128 {
  return i8x16.shuffle(lo, hi, 8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31);
}

/** |h| of f16 halves h (i16x8). */
// @ts-ignore: decorator
@inline
function f16Mag(h: v128): v128 {
  return v128.and(h, i16x8.splat(0x7fff));
}

// @ts-ignore: decorator
@inline
function f16Top(h: v128): v128 {
  // the high 16 bits OR-ed into each f32: the sign, and exponent 255 where the half is Inf/NaN
  const infNaN = v128.and(i16x8.gt_s(f16Mag(h), i16x8.splat(0x7bff)), i16x8.splat(0x7f80));
  return v128.or(v128.and(h, i16x8.splat(<i16>0x8000)), infNaN);
}

/** f16 lanes 0–3 of h (i16x8) as f32x4. */
// @ts-ignore: decorator
@inline
export function f16LoToF32x4(h: v128): v128 {
  const m = f16Mag(h);
  const v = f32x4.mul(interleaveLo(i16x8.shl(m, 13), i16x8.shr_u(m, 3)), f32x4.splat(reinterpret<f32>(0x77800000))); // · 2¹¹²
  return v128.or(v, interleaveLo(i16x8.splat(0), f16Top(h)));
}

/** f16 lanes 4–7 of h (i16x8) as f32x4. */
// @ts-ignore: decorator
@inline
export function f16HiToF32x4(h: v128): v128 {
  const m = f16Mag(h);
  const v = f32x4.mul(interleaveHi(i16x8.shl(m, 13), i16x8.shr_u(m, 3)), f32x4.splat(reinterpret<f32>(0x77800000)));
  return v128.or(v, interleaveHi(i16x8.splat(0), f16Top(h)));
}

/**
 * The upper 16 bits, before the rebias, of the f32 lanes of f16 halves h that feed a sum (f16LoSum,
 * f16HiSum): sign | m >> 3, with bits 12–14 set where h is Inf/NaN, so that the pattern is already
 * f32's ±Inf/NaN (exponent 255, the 10 payload bits on top), which the ·2¹¹² keeps.
 */
// @ts-ignore: decorator
@inline
function f16SumTop(h: v128): v128 {
  const infNaN = v128.and(i16x8.gt_s(f16Mag(h), i16x8.splat(0x7bff)), i16x8.splat(0x7000));
  return v128.or(v128.and(i16x8.shr_s(h, 3), i16x8.splat(<i16>0x8fff)), infNaN);
}

/**
 * c + f32(f16 lanes 0–3 of h), as fl(c + f32(h)): bits(sign | m << 13 | Inf/NaN exponent) · 2¹¹² + c
 * in one madd. The product is exact (a power of two times a value that f16 holds, or ±Inf/NaN), so
 * fused or not the sum is rounded once, as c + f16LoToF32x4(h). A signalling NaN is made quiet by the
 * product rather than by the add: the sum's bits are the same (only for sums, hence not in convert).
 */
// @ts-ignore: decorator
@inline
export function f16LoSum(h: v128, c: v128): v128 {
  return madd(interleaveLo(i16x8.shl(h, 13), f16SumTop(h)), f32x4.splat(reinterpret<f32>(0x77800000)), c);
}

/** c + f32(f16 lanes 4–7 of h), as f16LoSum. */
// @ts-ignore: decorator
@inline
export function f16HiSum(h: v128, c: v128): v128 {
  return madd(interleaveHi(i16x8.shl(h, 13), f16SumTop(h)), f32x4.splat(reinterpret<f32>(0x77800000)), c);
}

/** c + halves 0–3 of h (dt F16 or BF16) as f32x4: fl(c + decodeLo(h, dt)) bit for bit. */
// @ts-ignore: decorator
@inline
export function addLo(h: v128, c: v128, dt: i32): v128 {
  return dt == DTYPE_F16 ? f16LoSum(h, c) : f32x4.add(interleaveLo(i16x8.splat(0), h), c);
}

/** c + halves 4–7 of h, as addLo. */
// @ts-ignore: decorator
@inline
export function addHi(h: v128, c: v128, dt: i32): v128 {
  return dt == DTYPE_F16 ? f16HiSum(h, c) : f32x4.add(interleaveHi(i16x8.splat(0), h), c);
}

/** One f32 half of an f16 encode: |f| rounded at f16's spacing, as the 32-bit lanes (exp << 10) + mantissa. */
// @ts-ignore: decorator
@inline
function f16Nonsign(a: v128): v128 {
  // bias: 2^(e + 15) from |f|'s own exponent e (clamped below: subnormal halves round at 2⁻²⁴)
  let bias = v128.and(i32x4.add(a, i32x4.splat(0x07800000)), i32x4.splat(0x7f800000));
  bias = i16x8.max_s(bias, i32x4.splat(0x40008000)); // high 16 bits ≥ 0x4000; low 16 bits stay 0
  // (|f|·2¹¹²)·2⁻¹¹⁰ + bias: the second product is exact (a power of two on 4|f| or +Inf), so a
  // fused or unfused madd gives the same r, rounded once by the add
  const r = madd(f32x4.mul(a, f32x4.splat(reinterpret<f32>(0x77800000))), f32x4.splat(reinterpret<f32>(0x08800000)), bias);
  // NaN lanes: r is NaN, whose quiet bit 22 (wasm's arithmetic NaNs have it) lands in the result as
  // 0x400000, which the caller's narrowing saturates; other lanes have r's bits 12–22 zero
  return i32x4.add(v128.and(i32x4.shr_u(r, 13), i32x4.splat(0x7c00)), v128.and(r, i32x4.splat(0x400fff)));
}

/** f16 bit patterns of eight f32 lanes (lo: 0–3, hi: 4–7), as an i16x8. */
// @ts-ignore: decorator
@inline
export function f32ToF16x8(lo: v128, hi: v128): v128 {
  const absMask = i32x4.splat(0x7fffffff);
  // nonsign halves ≤ 0x7c00, NaN lanes saturated to 0x7fff: min makes them the quiet NaN 0x7e00
  const h = i16x8.narrow_i32x4_s(f16Nonsign(v128.and(lo, absMask)), f16Nonsign(v128.and(hi, absMask)));
  // the sign: a negative i32 narrows (saturating) to a negative i16, a positive one to a positive
  const sign = v128.and(i16x8.narrow_i32x4_s(lo, hi), i16x8.splat(<i16>0x8000));
  return v128.or(i16x8.min_u(h, i16x8.splat(0x7e00)), sign);
}

/** bf16 bit patterns of eight f32 lanes (lo: 0–3, hi: 4–7), as an i16x8. */
// @ts-ignore: decorator
@inline
export function f32ToBf16x8(lo: v128, hi: v128): v128 {
  const tLo = i32x4.shr_u(lo, 16), tHi = i32x4.shr_u(hi, 16);
  const one = i32x4.splat(1), half = i32x4.splat(0x7fff);
  const rLo = i32x4.shr_u(i32x4.add(lo, i32x4.add(v128.and(tLo, one), half)), 16);
  const rHi = i32x4.shr_u(i32x4.add(hi, i32x4.add(v128.and(tHi, one), half)), 16);
  const quiet = v128.or(i16x8.narrow_i32x4_u(tLo, tHi), i16x8.splat(0x40));
  const nan = i16x8.narrow_i32x4_s(f32x4.ne(lo, lo), f32x4.ne(hi, hi));
  return select(quiet, i16x8.narrow_i32x4_u(rLo, rHi), nan);
}

/** The half bit patterns of eight f32 lanes, as an i16x8 (dt is F16 or BF16). */
// @ts-ignore: decorator
@inline
export function encode8(lo: v128, hi: v128, dt: i32): v128 {
  return dt == DTYPE_F16 ? f32ToF16x8(lo, hi) : f32ToBf16x8(lo, hi);
}

/** Halves 0–3 of h (i16x8, dt F16 or BF16) as f32x4. */
// @ts-ignore: decorator
@inline
export function decodeLo(h: v128, dt: i32): v128 {
  return dt == DTYPE_F16 ? f16LoToF32x4(h) : interleaveLo(i16x8.splat(0), h);
}

/** Halves 4–7 of h as f32x4. */
// @ts-ignore: decorator
@inline
export function decodeHi(h: v128, dt: i32): v128 {
  return dt == DTYPE_F16 ? f16HiToF32x4(h) : interleaveHi(i16x8.splat(0), h);
}

/** f16 → f32 of four halves held as the low 16 bits of i32 lanes (upper bits zero). */
// @ts-ignore: decorator
@inline
export function f16ToF32x4(h: v128): v128 {
  return f16LoToF32x4(i16x8.narrow_i32x4_u(h, h));
}

/** Four elements of type dt at p, as f32x4. */
// @ts-ignore: decorator
@inline
export function load4(p: usize, dt: i32): v128 {
  if (dt == DTYPE_F32) return v128.load(p);
  return decodeLo(v128.load64_zero(p), dt);
}

/** The half bit patterns (low 16 bits of each lane) of four f32 lanes. */
// @ts-ignore: decorator
@inline
export function encode4(v: v128, dt: i32): v128 {
  return i32x4.extend_low_i16x8_u(encode8(v, v, dt));
}

/** Stores eight f32 lanes (lo, hi) at p as dt: one rounding per element for half types. */
// @ts-ignore: decorator
@inline
export function store8(p: usize, lo: v128, hi: v128, dt: i32): void {
  if (dt == DTYPE_F32) {
    v128.store(p, lo, 0);
    v128.store(p, hi, 16);
  } else {
    v128.store(p, encode8(lo, hi, dt));
  }
}

/** One element of type dt at p, as f32 (the same arithmetic as load4). */
// @ts-ignore: decorator
@inline
export function load1(p: usize, dt: i32): f32 {
  if (dt == DTYPE_F32) return load<f32>(p);
  const h = <i32>load<u16>(p);
  if (dt == DTYPE_BF16) return reinterpret<f32>(h << 16);
  return f32x4.extract_lane(f16LoToF32x4(i16x8.splat(<i16>h)), 0);
}

/** Stores one f32 at p as dt (the same rounding as store8). */
// @ts-ignore: decorator
@inline
export function store1(p: usize, v: f32, dt: i32): void {
  if (dt == DTYPE_F32) store<f32>(p, v);
  else {
    const s = f32x4.splat(v);
    store<u16>(p, <u16>i16x8.extract_lane_u(encode8(s, s, dt), 0));
  }
}

/** Exponent mask of dt's bit pattern: all ones means NaN or ±Inf. */
// @ts-ignore: decorator
@inline
export function expMask(dt: i32): i32 {
  return dt == DTYPE_F32 ? 0x7f800000 : dt == DTYPE_F16 ? 0x7c00 : 0x7f80;
}

/** Lanes (nonzero) where f32 lanes v would be NaN/±Inf once stored as dt (f16 overflows past 65504). */
// @ts-ignore: decorator
@inline
export function nonFiniteAs(v: v128, dt: i32): v128 {
  const bits = dt == DTYPE_F32 ? v : encode4(v, dt);
  const m = i32x4.splat(expMask(dt));
  return i32x4.eq(v128.and(bits, m), m);
}

/**
 * dst[0..n) = src[0..n) converted from srcDt to dstDt (any pair; the same type copies bits).
 * Half to half goes through f32, which holds every f16 and bf16 value exactly.
 */
export function convert(dst: usize, dstDt: i32, src: usize, srcDt: i32, n: i32): void {
  const si = itemBytes(srcDt);
  const di = itemBytes(dstDt);
  if (srcDt == dstDt) {
    memory.copy(dst, src, <usize>n * si);
    return;
  }
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const s = src + <usize>i * si;
    const d = dst + <usize>i * di;
    if (srcDt == DTYPE_F32) {
      store8(d, v128.load(s), v128.load(s, 16), dstDt);
    } else {
      const h = v128.load(s); // eight halves, one load
      store8(d, decodeLo(h, srcDt), decodeHi(h, srcDt), dstDt);
    }
  }
  for (; i < n; i++) store1(dst + <usize>i * di, load1(src + <usize>i * si, srcDt), dstDt);
}
