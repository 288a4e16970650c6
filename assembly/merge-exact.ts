// The merge as float64 computes it, rounded once to f32: for tensors llama.cpp stores quantized,
// whose reference quantizers (make_qkx2_quants' searches) turn a last-bit difference in one of a
// block's 256 values into another block. The f32 tile's sum is within a few ulp of the exact merge;
// this one is the exact merge's f32, bit for bit with a float64 loop (k ascending, mul and add apart).
//
//   W[i, j] ← f32( f64(W[i, j]) + s · Σ_k f64(A[i, k]) · f64(B[k, j]) )
//
// W [rows, cols] f32, row-major (in place); A [rows, r] f32; B [r, cols] f32; s f64. Rows are
// independent: a split over threads by rows gives the same bits. Four columns per step: two f64x2
// accumulators from one f32x4 load of B's row k (promote_low of it and of its upper half).

export function mergeExact(w: usize, a: usize, b: usize, rows: i32, cols: i32, r: i32, s: f64): void {
  const ld = <usize>cols << 2;
  const sv = f64x2.splat(s);
  for (let i = 0; i < rows; i++) {
    const wr = w + <usize>i * ld;
    const ar = a + ((<usize>i * <usize>r) << 2);
    let j = 0;
    for (; j + 4 <= cols; j += 4) {
      let lo = f64x2.splat(0);
      let hi = f64x2.splat(0);
      const bj = b + (<usize>j << 2);
      for (let k = 0; k < r; k++) {
        const ak = f64x2.splat(<f64>load<f32>(ar + (<usize>k << 2)));
        const bv = v128.load(bj + <usize>k * ld);
        lo = f64x2.add(lo, f64x2.mul(ak, f64x2.promote_low_f32x4(bv)));
        hi = f64x2.add(hi, f64x2.mul(ak, f64x2.promote_low_f32x4(i32x4.shuffle(bv, bv, 2, 3, 2, 3))));
      }
      const wv = v128.load(wr + (<usize>j << 2));
      const rlo = f32x4.demote_f64x2_zero(f64x2.add(f64x2.promote_low_f32x4(wv), f64x2.mul(sv, lo)));
      const rhi = f32x4.demote_f64x2_zero(f64x2.add(f64x2.promote_low_f32x4(i32x4.shuffle(wv, wv, 2, 3, 2, 3)), f64x2.mul(sv, hi)));
      v128.store(wr + (<usize>j << 2), i32x4.shuffle(rlo, rhi, 0, 1, 4, 5));
    }
    for (; j < cols; j++) {
      let d: f64 = 0;
      for (let k = 0; k < r; k++) d += <f64>load<f32>(ar + (<usize>k << 2)) * <f64>load<f32>(b + <usize>k * ld + (<usize>j << 2));
      const p = wr + (<usize>j << 2);
      store<f32>(p, <f32>(<f64>load<f32>(p) + s * d));
    }
  }
}
