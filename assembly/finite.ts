// Scans used as guards: before W is written, and before a merged layer serves W'.
// All take a byte pointer, an element count and (where it matters) the element type; none allocates.

import { DTYPE_BF16, DTYPE_F32, expMask, f16ToF32x4, itemBytes, load1 } from './convert';

// IEEE-754 binary32: a value is NaN or ±Inf exactly when its 8 exponent bits
// are all ones, i.e. (bits & 0x7f800000) == 0x7f800000.
const EXP_MASK: i32 = 0x7f800000;

/**
 * Index of the first NaN/±Inf in x[0..n) of type dt, or -1 when all are finite.
 * 16 lanes per step are OR-reduced; only a hit falls back to a scalar search.
 */
export function firstNonFinite(x: usize, n: i32, dt: i32): i32 {
  if (dt != DTYPE_F32) return firstNonFiniteHalf(x, n, expMask(dt));
  const mask = i32x4.splat(EXP_MASK);
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const p = x + (<usize>i << 2);
    const m0 = i32x4.eq(v128.and(v128.load(p, 0), mask), mask);
    const m1 = i32x4.eq(v128.and(v128.load(p, 16), mask), mask);
    const m2 = i32x4.eq(v128.and(v128.load(p, 32), mask), mask);
    const m3 = i32x4.eq(v128.and(v128.load(p, 48), mask), mask);
    if (v128.any_true(v128.or(v128.or(m0, m1), v128.or(m2, m3)))) break;
  }
  for (; i < n; i++) {
    if ((load<i32>(x + (<usize>i << 2)) & EXP_MASK) == EXP_MASK) return i;
  }
  return -1;
}

/** firstNonFinite for 16-bit patterns whose exponent field is `mask`: 32 lanes per step. */
function firstNonFiniteHalf(x: usize, n: i32, mask: i32): i32 {
  const m = i16x8.splat(<i16>mask);
  let i = 0;
  for (; i + 32 <= n; i += 32) {
    const p = x + (<usize>i << 1);
    const a = v128.or(i16x8.eq(v128.and(v128.load(p, 0), m), m), i16x8.eq(v128.and(v128.load(p, 16), m), m));
    const b = v128.or(i16x8.eq(v128.and(v128.load(p, 32), m), m), i16x8.eq(v128.and(v128.load(p, 48), m), m));
    if (v128.any_true(v128.or(a, b))) break;
  }
  for (; i < n; i++) {
    if ((<i32>load<u16>(x + (<usize>i << 1)) & mask) == mask) return i;
  }
  return -1;
}

/**
 * max |x[i]| over x[0..n) of type dt; NaN if any element is NaN, +Inf if any is ±Inf
 * (and none is NaN); 0 for n == 0.
 *
 * Works on the bit patterns: with the sign bit cleared, IEEE-754 floats order
 * like their i32 bits, and every NaN pattern (> 0x7f800000) sorts above +Inf
 * (0x7f800000) above every finite value. So one i32x4.max_s per vector, where
 * f32x4.max would cost a NaN-propagating instruction sequence.
 */
export function absMax(x: usize, n: i32, dt: i32): f32 {
  if (dt != DTYPE_F32) return absMaxHalf(x, n, dt);
  const signOff = i32x4.splat(0x7fffffff);
  let m0 = i32x4.splat(0);
  let m1 = i32x4.splat(0);
  let m2 = i32x4.splat(0);
  let m3 = i32x4.splat(0);
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const p = x + (<usize>i << 2);
    m0 = i32x4.max_s(m0, v128.and(v128.load(p, 0), signOff));
    m1 = i32x4.max_s(m1, v128.and(v128.load(p, 16), signOff));
    m2 = i32x4.max_s(m2, v128.and(v128.load(p, 32), signOff));
    m3 = i32x4.max_s(m3, v128.and(v128.load(p, 48), signOff));
  }
  const m = i32x4.max_s(i32x4.max_s(m0, m1), i32x4.max_s(m2, m3));
  let s = max(max(i32x4.extract_lane(m, 0), i32x4.extract_lane(m, 1)), max(i32x4.extract_lane(m, 2), i32x4.extract_lane(m, 3)));
  for (; i < n; i++) s = max(s, load<i32>(x + (<usize>i << 2)) & 0x7fffffff);
  return reinterpret<f32>(s);
}

/** The same for 16-bit patterns: f16 and bf16 order like their u16 bits once the sign is cleared. */
function absMaxHalf(x: usize, n: i32, dt: i32): f32 {
  const signOff = i16x8.splat(0x7fff);
  let m0 = i16x8.splat(0);
  let m1 = i16x8.splat(0);
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const p = x + (<usize>i << 1);
    m0 = i16x8.max_u(m0, v128.and(v128.load(p, 0), signOff));
    m1 = i16x8.max_u(m1, v128.and(v128.load(p, 16), signOff));
  }
  const m = i16x8.max_u(m0, m1);
  let s: i32 = 0;
  s = max(max(max(<i32>i16x8.extract_lane_u(m, 0), <i32>i16x8.extract_lane_u(m, 1)), max(<i32>i16x8.extract_lane_u(m, 2), <i32>i16x8.extract_lane_u(m, 3))),
    max(max(<i32>i16x8.extract_lane_u(m, 4), <i32>i16x8.extract_lane_u(m, 5)), max(<i32>i16x8.extract_lane_u(m, 6), <i32>i16x8.extract_lane_u(m, 7))));
  for (; i < n; i++) s = max(s, <i32>load<u16>(x + (<usize>i << 1)) & 0x7fff);
  return dt == DTYPE_BF16 ? reinterpret<f32>(s << 16) : f32x4.extract_lane(f16ToF32x4(i32x4.splat(s)), 0);
}

/** max over rows of Σ_j |x[i, j]|, accumulated in f64, for x: [rows, cols] row-major of type dt. */
export function maxRowAbsSum(x: usize, rows: i32, cols: i32, dt: i32): f64 {
  let best: f64 = 0;
  const isz = itemBytes(dt);
  for (let i = 0; i < rows; i++) {
    const row = x + <usize>i * <usize>cols * isz;
    let s: f64 = 0;
    for (let j = 0; j < cols; j++) s += Math.abs(<f64>load1(row + <usize>j * isz, dt));
    if (s > best) best = s;
  }
  return best;
}

/**
 * Index of the first i32 word where a[0..n) and b[0..n) differ, or -1 when their
 * bytes are equal (a bitwise compare: -0 differs from 0, equal NaN patterns match).
 * Used to see whether a merged layer's A and B changed since its merge.
 */
export function firstDifference(a: usize, b: usize, n: i32): i32 {
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const o = <usize>i << 2;
    const d = v128.or(
      v128.or(v128.xor(v128.load(a + o, 0), v128.load(b + o, 0)), v128.xor(v128.load(a + o, 16), v128.load(b + o, 16))),
      v128.or(v128.xor(v128.load(a + o, 32), v128.load(b + o, 32)), v128.xor(v128.load(a + o, 48), v128.load(b + o, 48))),
    );
    if (v128.any_true(d)) break;
  }
  for (; i < n; i++) {
    if (load<i32>(a + (<usize>i << 2)) != load<i32>(b + (<usize>i << 2))) return i;
  }
  return -1;
}
