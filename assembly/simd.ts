// The one place that knows which multiply-add the build uses.
//
// Both .wasm flavours are compiled from the same kernels; only this helper
// differs. ASC_FEATURE_RELAXED_SIMD is a compile-time constant, so the untaken
// branch is never compiled and the helper inlines to a single instruction
// (relaxed) or two (baseline).
//   relaxed:  madd(a, b, c) = f32x4.relaxed_madd(a, b, c)  (fused or not, engine's choice)
//   baseline: madd(a, b, c) = f32x4.add(f32x4.mul(a, b), c)

// @ts-ignore: decorator
@inline
export function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    return f32x4.relaxed_madd(a, b, c);
  } else {
    return f32x4.add(f32x4.mul(a, b), c);
  }
}

/**
 * Lanes of a where mask is all ones, of b where it is all zeros (mask lanes must be one or the
 * other, e.g. a comparison's result: then both builds give the same bits).
 *   relaxed:  i8x16.relaxed_laneselect (one pblendvb on x64)
 *   baseline: v128.bitselect (and, andnot, or)
 */
// @ts-ignore: decorator
@inline
export function select(a: v128, b: v128, mask: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    return i8x16.relaxed_laneselect(a, b, mask);
  } else {
    return v128.bitselect(a, b, mask);
  }
}

/** 1 when this module is the relaxed build (relaxed-SIMD FMA), else 0 (read by src/kernel/kernel.ts). */
export function buildIsRelaxed(): i32 {
  return ASC_FEATURE_RELAXED_SIMD ? 1 : 0;
}
