// Half precision <-> f32: IEEE binary16 (f16) and bfloat16 (bf16), four lanes at a time.
//
// A half value travels as the low 16 bits of an i32 lane (upper bits zero); memory holds packed
// u16s, widened with extend_low_i16x8_u and narrowed with narrow_i32x4_u (exact: every lane is
// in [0, 0xFFFF]).
//
// f16 → f32 (exact, subnormals included): m = h & 0x7fff;
//   bits(m << 13) · 2¹¹² rebiases the exponent by a multiply: exact for normal and subnormal halves
//   (an f32 subnormal times a power of two that makes it normal is exact; wasm never flushes them);
//   exponent 31 (Inf/NaN) maps to 2¹⁶·(1 + f) and gets its exponent forced to 255; then the sign.
// f32 → f16 (round to nearest, ties to even), all lanes through both paths, then selected:
//   normal:    (|f| − (112 << 23) + 0xFFF + odd) >> 13, odd = f's bit 13 (a carry rounds up into the
//              exponent, up to Inf for 65520 ≤ |f| < 65536);
//   subnormal: bits(|f| + 0.5) − bits(0.5), where the FPU's own rounding lands on f16's 2⁻²⁴ grid;
//   |f| ≥ 65536 → Inf, NaN → 0x7E00 (quiet), then f's sign.
// bf16 → f32: bits << 16 (exact).
// f32 → bf16: (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 (ties to even; overflow rounds to ±Inf),
//   NaN → (bits >> 16) | 0x40 (kept NaN, made quiet).
// see: https://github.com/Maratyszcza/FP16 (fp16_ieee_to_fp32_value);
//      F. Giesen, "float->half variants", float_to_half_fast3_rtne (https://gist.github.com/rygorous/2156668)

/** Element types. Twin: DTYPE_CODE in src/kernel/kernels.ts. */
export const DTYPE_F32: i32 = 0;
export const DTYPE_F16: i32 = 1;
export const DTYPE_BF16: i32 = 2;

// @ts-ignore: decorator
@inline
export function itemBytes(dt: i32): usize {
  return dt == DTYPE_F32 ? 4 : 2;
}

// @ts-ignore: decorator
@inline
export function f16ToF32x4(h: v128): v128 {
  const m = v128.and(h, i32x4.splat(0x7fff));
  const v = f32x4.mul(i32x4.shl(m, 13), f32x4.splat(reinterpret<f32>(0x77800000))); // · 2¹¹²
  const infNaN = v128.and(i32x4.gt_s(m, i32x4.splat(0x7bff)), i32x4.splat(0x7f800000));
  return v128.or(v128.or(v, infNaN), i32x4.shl(v128.and(h, i32x4.splat(0x8000)), 16));
}

// @ts-ignore: decorator
@inline
export function f32ToF16x4(f: v128): v128 {
  const sign = v128.and(f, i32x4.splat(0x80000000));
  const a = v128.xor(f, sign); // |f|, as bits
  // normal halves: round |f| at mantissa bit 13, ties to even, and rebias the exponent by −112
  const odd = v128.and(i32x4.shr_u(a, 13), i32x4.splat(1));
  const normal = i32x4.shr_u(i32x4.add(i32x4.add(a, i32x4.splat(((15 - 127) << 23) + 0xfff)), odd), 13);
  // subnormal halves: the FPU rounds |f| + 0.5 at f16's subnormal spacing 2⁻²⁴
  const magic = i32x4.splat(126 << 23);
  const subnormal = i32x4.sub(f32x4.add(a, magic), magic);
  let h = v128.bitselect(subnormal, normal, i32x4.lt_s(a, i32x4.splat(113 << 23)));
  // |f| ≥ 65536 (and Inf) → Inf; NaN → quiet NaN (65520 ≤ |f| < 65536 carries into Inf above)
  h = v128.bitselect(i32x4.splat(0x7c00), h, i32x4.gt_s(a, i32x4.splat((143 << 23) - 1)));
  h = v128.bitselect(i32x4.splat(0x7e00), h, i32x4.gt_s(a, i32x4.splat(0x7f800000)));
  return v128.or(h, i32x4.shr_u(sign, 16));
}

// @ts-ignore: decorator
@inline
export function f32ToBf16x4(f: v128): v128 {
  const lsb = v128.and(i32x4.shr_u(f, 16), i32x4.splat(1));
  const rounded = i32x4.shr_u(i32x4.add(f, i32x4.add(lsb, i32x4.splat(0x7fff))), 16);
  const quiet = v128.or(i32x4.shr_u(f, 16), i32x4.splat(0x40));
  return v128.bitselect(quiet, rounded, f32x4.ne(f, f));
}

/** Four elements of type dt at p, as f32x4. */
// @ts-ignore: decorator
@inline
export function load4(p: usize, dt: i32): v128 {
  if (dt == DTYPE_F32) return v128.load(p);
  const h = i32x4.extend_low_i16x8_u(v128.load64_zero(p));
  return dt == DTYPE_F16 ? f16ToF32x4(h) : i32x4.shl(h, 16);
}

/** The half bit patterns (low 16 bits of each lane) of four f32 lanes. */
// @ts-ignore: decorator
@inline
export function encode4(v: v128, dt: i32): v128 {
  return dt == DTYPE_F16 ? f32ToF16x4(v) : f32ToBf16x4(v);
}

/** Stores eight f32 lanes (lo, hi) at p as dt: one rounding per element for half types. */
// @ts-ignore: decorator
@inline
export function store8(p: usize, lo: v128, hi: v128, dt: i32): void {
  if (dt == DTYPE_F32) {
    v128.store(p, lo, 0);
    v128.store(p, hi, 16);
  } else {
    v128.store(p, i16x8.narrow_i32x4_u(encode4(lo, dt), encode4(hi, dt)));
  }
}

/** One element of type dt at p, as f32 (the same arithmetic as load4). */
// @ts-ignore: decorator
@inline
export function load1(p: usize, dt: i32): f32 {
  if (dt == DTYPE_F32) return load<f32>(p);
  const h = <i32>load<u16>(p);
  if (dt == DTYPE_BF16) return reinterpret<f32>(h << 16);
  return f32x4.extract_lane(f16ToF32x4(i32x4.splat(h)), 0);
}

/** Stores one f32 at p as dt (the same rounding as store8). */
// @ts-ignore: decorator
@inline
export function store1(p: usize, v: f32, dt: i32): void {
  if (dt == DTYPE_F32) store<f32>(p, v);
  else store<u16>(p, <u16>i32x4.extract_lane(encode4(f32x4.splat(v), dt), 0));
}

/** Exponent mask of dt's bit pattern: all ones means NaN or ±Inf. */
// @ts-ignore: decorator
@inline
export function expMask(dt: i32): i32 {
  return dt == DTYPE_F32 ? 0x7f800000 : dt == DTYPE_F16 ? 0x7c00 : 0x7f80;
}

/** 1 when f32 lanes v would be NaN/±Inf once stored as dt (f16 overflows past 65504). */
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
    store8(dst + <usize>i * di, load4(s, srcDt), load4(s + 4 * si, srcDt), dstDt);
  }
  for (; i < n; i++) store1(dst + <usize>i * di, load1(src + <usize>i * si, srcDt), dstDt);
}
