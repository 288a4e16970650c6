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

/** 1 when this module is the relaxed build (relaxed-SIMD FMA), else 0 (read by src/kernel/kernel.ts). */
export function buildIsRelaxed(): i32 {
  return ASC_FEATURE_RELAXED_SIMD ? 1 : 0;
}
