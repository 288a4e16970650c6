// Rank-r products and fused LoRA merges.
//
//   Δ = s·A·B              A: [dOut, r], B: [r, dIn], Δ: [dOut, dIn], all row-major f32
//   out = W0 + s·A·B       (merge when out == W0, unmerge with -s)
//
// One pass over W, no ΔW temporary: each 4×8 tile of Δ is accumulated in
// registers and added to the W0 tile on its way to `out`.
//
// Packed operands (written by the caller-provided scratch, O(r·(dOut + dIn))):
//   Ap[(rb·r + k)·4 + ii] = s·A[4·rb + ii, k]   (row blocks of 4, k-major, zero-padded rows)
//   Bp[(sb·r + k)·8 + jj] = B[k, 8·sb + jj]     (strips of 8 columns, k-major, zero-padded columns)
// so the micro-kernel reads both panels contiguously and never sees a ragged edge.
//
// Tile: MR = 4 rows × NR = 8 columns (two f32x4 per row) = 8 accumulators, plus
// 2 B vectors and 1 splatted A scalar: 11 of the 16 xmm registers V8 has on x64.
// This is XNNPACK's f32-gemm 4x8 "splat" design for wasmsimd on x86.
// see: https://github.com/google/XNNPACK/tree/master/src/f32-gemm (4x8-wasmsimd-splat)
//
// Rounding: Δ̂ is the same f32 sum for every mode, so
//   rankRUpdate(mode 1) == fl(W0 + rankRUpdate(mode 0)) bit for bit,
// and merge followed by unmerge (scale negated exactly) returns W0 within
// one rounding of W0 + Δ̂ and one of W0 (about 2 ulp).

import { madd } from './simd';

/** Output modes of rankRUpdate. Twin: RankMode in src/rank.ts. */
export const MODE_DELTA: i32 = 0; // out = s·A·B          (w0 unused)
export const MODE_MERGE: i32 = 1; // out = w0 + s·A·B     (out may equal w0)
export const MODE_CHECK: i32 = 2; // write nothing; return 1 if any w0 + s·A·B would be NaN/±Inf

/** Tile of rankRUpdate and the block sizes of the packed panels. Twin: TILE_ROWS/TILE_COLS in src/rank.ts. */
export const TILE_ROWS: i32 = 4;
export const TILE_COLS: i32 = 8;

const EXP_MASK: i32 = 0x7f800000;

/** Packs s·A ([dOut, r]) into 4-row k-major blocks at ap: ceil(dOut/4)·r·4 floats. */
export function packScaledA(ap: usize, a: usize, dOut: i32, r: i32, scale: f32): void {
  const rowBlocks = (dOut + 3) >> 2;
  for (let rb = 0; rb < rowBlocks; rb++) {
    const block = ap + (<usize>rb * <usize>r << 4);
    for (let ii = 0; ii < 4; ii++) {
      const i = (rb << 2) + ii;
      const dst = block + (<usize>ii << 2);
      if (i < dOut) {
        const src = a + (<usize>i * <usize>r << 2);
        for (let k = 0; k < r; k++) {
          store<f32>(dst + (<usize>k << 4), scale * load<f32>(src + (<usize>k << 2)));
        }
      } else {
        for (let k = 0; k < r; k++) store<f32>(dst + (<usize>k << 4), 0);
      }
    }
  }
}

/** Packs B ([r, dIn]) into 8-column k-major strips at bp: ceil(dIn/8)·r·8 floats. */
export function packB(bp: usize, b: usize, r: i32, dIn: i32): void {
  const strips = (dIn + 7) >> 3;
  const fullStrips = dIn >> 3;
  for (let k = 0; k < r; k++) {
    const src = b + (<usize>k * <usize>dIn << 2);
    let sb = 0;
    for (; sb < fullStrips; sb++) {
      const dst = bp + ((<usize>sb * <usize>r + <usize>k) << 5);
      const s = src + (<usize>sb << 5);
      v128.store(dst, v128.load(s, 0), 0);
      v128.store(dst, v128.load(s, 16), 16);
    }
    for (; sb < strips; sb++) {
      const dst = bp + ((<usize>sb * <usize>r + <usize>k) << 5);
      for (let jj = 0; jj < 8; jj++) {
        const j = (sb << 3) + jj;
        store<f32>(dst + (<usize>jj << 2), j < dIn ? load<f32>(src + (<usize>j << 2)) : 0);
      }
    }
  }
}

/**
 * out = w0 + Ap·Bp (MODE_MERGE), out = Ap·Bp (MODE_DELTA), or a finiteness
 * check of w0 + Ap·Bp that writes nothing (MODE_CHECK, returns 1 on NaN/±Inf).
 *
 * out, w0: [dOut, dIn] row-major; ap, bp: packed as above (ap already holds s·A);
 * tmp: 128 bytes, 16-byte aligned, private to the caller (edge tiles spill there).
 * colBlock: columns per B panel block (multiple of 8), so that r·colBlock·4 bytes
 * of Bp stay cache-resident while every row block of W streams past it.
 *
 * Row blocks are independent, so a caller may split dOut across threads by
 * offsetting out, w0 and ap (by multiples of 4 rows).
 */
export function rankRUpdate(
  out: usize, w0: usize, ap: usize, bp: usize, tmp: usize,
  dOut: i32, dIn: i32, r: i32, colBlock: i32, mode: i32,
): i32 {
  const ld = <usize>dIn << 2;
  const rowBlocks = (dOut + 3) >> 2;
  const strips = (dIn + 7) >> 3;
  const stripsPerBlock = max(1, colBlock >> 3);
  const apStride = <usize>r << 4;
  const bpStride = <usize>r << 5;
  const expMask = i32x4.splat(EXP_MASK);
  let bad = i32x4.splat(0);

  for (let s0 = 0; s0 < strips; s0 += stripsPerBlock) {
    const s1 = min(strips, s0 + stripsPerBlock);
    for (let rb = 0; rb < rowBlocks; rb++) {
      const mr = min(4, dOut - (rb << 2));
      const rowOff = <usize>(rb << 2) * ld;
      for (let sb = s0; sb < s1; sb++) {
        let pa = ap + <usize>rb * apStride;
        let pb = bp + <usize>sb * bpStride;
        let c00 = f32x4.splat(0), c01 = f32x4.splat(0);
        let c10 = f32x4.splat(0), c11 = f32x4.splat(0);
        let c20 = f32x4.splat(0), c21 = f32x4.splat(0);
        let c30 = f32x4.splat(0), c31 = f32x4.splat(0);
        // c[ii] += s·A[i, k] · B[k, j..j+8) for k = 0..r
        for (let k = 0; k < r; k++) {
          const b0 = v128.load(pb, 0);
          const b1 = v128.load(pb, 16);
          let a = v128.load32_splat(pa, 0);
          c00 = madd(a, b0, c00); c01 = madd(a, b1, c01);
          a = v128.load32_splat(pa, 4);
          c10 = madd(a, b0, c10); c11 = madd(a, b1, c11);
          a = v128.load32_splat(pa, 8);
          c20 = madd(a, b0, c20); c21 = madd(a, b1, c21);
          a = v128.load32_splat(pa, 12);
          c30 = madd(a, b0, c30); c31 = madd(a, b1, c31);
          pa += 16;
          pb += 32;
        }

        const nr = min(8, dIn - (sb << 3));
        const off = rowOff + (<usize>sb << 5);
        const o = out + off;
        const w = w0 + off;
        if (mr == 4 && nr == 8) {
          if (mode == MODE_MERGE) {
            v128.store(o, f32x4.add(v128.load(w, 0), c00), 0);
            v128.store(o, f32x4.add(v128.load(w, 16), c01), 16);
            v128.store(o + ld, f32x4.add(v128.load(w + ld, 0), c10), 0);
            v128.store(o + ld, f32x4.add(v128.load(w + ld, 16), c11), 16);
            v128.store(o + 2 * ld, f32x4.add(v128.load(w + 2 * ld, 0), c20), 0);
            v128.store(o + 2 * ld, f32x4.add(v128.load(w + 2 * ld, 16), c21), 16);
            v128.store(o + 3 * ld, f32x4.add(v128.load(w + 3 * ld, 0), c30), 0);
            v128.store(o + 3 * ld, f32x4.add(v128.load(w + 3 * ld, 16), c31), 16);
          } else if (mode == MODE_DELTA) {
            v128.store(o, c00, 0);
            v128.store(o, c01, 16);
            v128.store(o + ld, c10, 0);
            v128.store(o + ld, c11, 16);
            v128.store(o + 2 * ld, c20, 0);
            v128.store(o + 2 * ld, c21, 16);
            v128.store(o + 3 * ld, c30, 0);
            v128.store(o + 3 * ld, c31, 16);
          } else {
            let m = v128.or(
              v128.or(nonFinite(f32x4.add(v128.load(w, 0), c00), expMask), nonFinite(f32x4.add(v128.load(w, 16), c01), expMask)),
              v128.or(nonFinite(f32x4.add(v128.load(w + ld, 0), c10), expMask), nonFinite(f32x4.add(v128.load(w + ld, 16), c11), expMask)),
            );
            m = v128.or(m, v128.or(
              v128.or(nonFinite(f32x4.add(v128.load(w + 2 * ld, 0), c20), expMask), nonFinite(f32x4.add(v128.load(w + 2 * ld, 16), c21), expMask)),
              v128.or(nonFinite(f32x4.add(v128.load(w + 3 * ld, 0), c30), expMask), nonFinite(f32x4.add(v128.load(w + 3 * ld, 16), c31), expMask)),
            ));
            bad = v128.or(bad, m);
          }
        } else {
          // Edge tile: same accumulators, spilled to tmp[4][8]; only the
          // mr × nr valid elements of W/out are touched.
          v128.store(tmp, c00, 0); v128.store(tmp, c01, 16);
          v128.store(tmp, c10, 32); v128.store(tmp, c11, 48);
          v128.store(tmp, c20, 64); v128.store(tmp, c21, 80);
          v128.store(tmp, c30, 96); v128.store(tmp, c31, 112);
          for (let ii = 0; ii < mr; ii++) {
            const t = tmp + (<usize>ii << 5);
            const oi = o + <usize>ii * ld;
            const wi = w + <usize>ii * ld;
            for (let jj = 0; jj < nr; jj++) {
              const c = load<f32>(t + (<usize>jj << 2));
              const q = <usize>jj << 2;
              if (mode == MODE_MERGE) {
                store<f32>(oi + q, load<f32>(wi + q) + c);
              } else if (mode == MODE_DELTA) {
                store<f32>(oi + q, c);
              } else if ((reinterpret<i32>(load<f32>(wi + q) + c) & EXP_MASK) == EXP_MASK) {
                return 1;
              }
            }
          }
        }
      }
    }
    if (mode == MODE_CHECK && v128.any_true(bad)) return 1;
  }
  return v128.any_true(bad) ? 1 : 0;
}

// @ts-ignore: decorator
@inline
function nonFinite(v: v128, expMask: v128): v128 {
  return i32x4.eq(v128.and(v, expMask), expMask);
}
