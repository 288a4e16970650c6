// The difference of two weight matrices, for extracting an adapter from a fine-tune:
//
//   dst[i, j] = f32(a[i, j]) − f32(b[i, j])        a, b: f32, f16 or bf16 (halves decoded exactly)
//   rowSums[i] = Σ_j dst[i, j]²                    in f64, in a fixed order within the row: two f64x2
//                                                 accumulators over groups of 4, then the tail
//
// rows × cols row-major; dst f32; rowSums one f64 per row. The caller adds the row sums in row
// order, so ‖dst‖²_F comes out the same however the rows were split over threads.

import { DTYPE_F32, load1, load4 } from './convert';

export function difference(dst: usize, a: usize, aDt: i32, b: usize, bDt: i32, rows: i32, cols: i32, rowSums: usize): void {
  const aRow = <usize>cols << (aDt == DTYPE_F32 ? 2 : 1);
  const bRow = <usize>cols << (bDt == DTYPE_F32 ? 2 : 1);
  const aItem: usize = aDt == DTYPE_F32 ? 4 : 2;
  const bItem: usize = bDt == DTYPE_F32 ? 4 : 2;
  for (let i = 0; i < rows; i++) {
    const pa = a + <usize>i * aRow;
    const pb = b + <usize>i * bRow;
    const pd = dst + (<usize>i * <usize>cols << 2);
    let acc0 = f64x2.splat(0), acc1 = f64x2.splat(0);
    let j = 0;
    for (; j + 4 <= cols; j += 4) {
      const d = f32x4.sub(load4(pa + <usize>j * aItem, aDt), load4(pb + <usize>j * bItem, bDt));
      v128.store(pd + (<usize>j << 2), d);
      const lo = f64x2.promote_low_f32x4(d);
      const hi = f64x2.promote_low_f32x4(i32x4.shuffle(d, d, 2, 3, 2, 3));
      acc0 = f64x2.add(acc0, f64x2.mul(lo, lo));
      acc1 = f64x2.add(acc1, f64x2.mul(hi, hi));
    }
    let s = (f64x2.extract_lane(acc0, 0) + f64x2.extract_lane(acc0, 1)) + (f64x2.extract_lane(acc1, 0) + f64x2.extract_lane(acc1, 1));
    for (; j < cols; j++) {
      const d = load1(pa + <usize>j * aItem, aDt) - load1(pb + <usize>j * bItem, bDt);
      store<f32>(pd + (<usize>j << 2), d);
      s += <f64>d * <f64>d;
    }
    store<f64>(rowSums + (<usize>i << 3), s);
  }
}
