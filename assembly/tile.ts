// The 4×8 register tile shared by the rank-r kernels and the GEMM.
//
//   acc[4][8] = Σ_{k < kc} Ap[k][0..4)ᵀ · Bp[k][0..8)
//   Ap: kc·4 floats, k-major (4 rows of the left operand, pre-scaled by the caller)
//   Bp: kc·8 floats, k-major (8 columns of the right operand)
// then one epilogue writes the tile to `out` (row stride `ld` bytes; src's is `lds`):
//   EPILOGUE_STORE  out = acc
//   EPILOGUE_ADD    out = src + acc           (src may be out)
//   EPILOGUE_AXPBY  out = beta·src + acc      (f32 only)
//   EPILOGUE_CHECK  nothing is written; returns 1 if any src + acc would be NaN/±Inf as stored
// Only the mr × nr corner that exists is touched: edge tiles spill acc to `tmp`
// (128 bytes, 16-aligned, private to the caller) and finish element-wise.
//
// Element types are compile-time type parameters, S for src and O for out: f32, or u16 for a half
// type (f16 or bf16, told apart at run time by srcDt/outDt, convert.ts). Each instantiation is its
// own code, so the all-f32 tile (GEMM, f32 merges) compiles to exactly the f32 kernel, untouched by
// the half-precision epilogues. A half src is decoded exactly, the sum is formed in f32 and a half
// out is encoded once: out = round_out(f32(src) + acc).
//
// 8 accumulators + 2 B vectors + 1 splat = 11 of the 16 xmm registers V8 has
// on x64: XNNPACK's f32-gemm 4x8 "splat" design for wasmsimd on x86.
// see: https://github.com/google/XNNPACK/tree/master/src/f32-gemm (4x8-wasmsimd-splat)
// Unrolling the k loop by 2 measured ~30 % slower in V8, so it stays simple.

import { DTYPE_BF16, DTYPE_F16, DTYPE_F32, addHi, addLo, decodeHi, decodeLo, itemBytes, load1, nonFiniteAs, store1, store8 } from './convert';
import { madd } from './simd';

/** Epilogues: what a finished tile does with `out`. Twin: Epilogue in src/kernel/kernels.ts. */
export const EPILOGUE_STORE: i32 = 0;
export const EPILOGUE_ADD: i32 = 1;
export const EPILOGUE_CHECK: i32 = 2;
export const EPILOGUE_AXPBY: i32 = 3;

/** Tile shape. Twin: TILE_ROWS/TILE_COLS in src/kernel/kernels.ts. */
export const TILE_ROWS: i32 = 4;
export const TILE_COLS: i32 = 8;

const EXP_MASK: i32 = 0x7f800000;

// @ts-ignore: decorator
@inline
function nonFinite(v: v128): v128 {
  const m = i32x4.splat(EXP_MASK);
  return i32x4.eq(v128.and(v, m), m);
}

// @ts-ignore: decorator
@inline
export function tile4x8<S, O>(
  out: usize, src: usize, ld: usize, pa: usize, pb: usize, kc: i32,
  mr: i32, nr: i32, tmp: usize, mode: i32, beta: f32,
  lds: usize, srcDt: i32, outDt: i32,
): i32 {
  let c00 = f32x4.splat(0), c01 = f32x4.splat(0);
  let c10 = f32x4.splat(0), c11 = f32x4.splat(0);
  let c20 = f32x4.splat(0), c21 = f32x4.splat(0);
  let c30 = f32x4.splat(0), c31 = f32x4.splat(0);
  for (let k = 0; k < kc; k++) {
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

  if (sizeof<S>() != 4 || sizeof<O>() != 4) {
    return typedEpilogue<S, O>(out, src, ld, lds, mr, nr, tmp, mode, srcDt, outDt, c00, c01, c10, c11, c20, c21, c30, c31);
  }
  if (mr == 4 && nr == 8) {
    const o1 = out + ld, o2 = out + 2 * ld, o3 = out + 3 * ld;
    const s1 = src + ld, s2 = src + 2 * ld, s3 = src + 3 * ld;
    if (mode == EPILOGUE_ADD) {
      v128.store(out, f32x4.add(v128.load(src, 0), c00), 0);
      v128.store(out, f32x4.add(v128.load(src, 16), c01), 16);
      v128.store(o1, f32x4.add(v128.load(s1, 0), c10), 0);
      v128.store(o1, f32x4.add(v128.load(s1, 16), c11), 16);
      v128.store(o2, f32x4.add(v128.load(s2, 0), c20), 0);
      v128.store(o2, f32x4.add(v128.load(s2, 16), c21), 16);
      v128.store(o3, f32x4.add(v128.load(s3, 0), c30), 0);
      v128.store(o3, f32x4.add(v128.load(s3, 16), c31), 16);
    } else if (mode == EPILOGUE_STORE) {
      v128.store(out, c00, 0); v128.store(out, c01, 16);
      v128.store(o1, c10, 0); v128.store(o1, c11, 16);
      v128.store(o2, c20, 0); v128.store(o2, c21, 16);
      v128.store(o3, c30, 0); v128.store(o3, c31, 16);
    } else if (mode == EPILOGUE_AXPBY) {
      const bv = f32x4.splat(beta);
      v128.store(out, madd(bv, v128.load(src, 0), c00), 0);
      v128.store(out, madd(bv, v128.load(src, 16), c01), 16);
      v128.store(o1, madd(bv, v128.load(s1, 0), c10), 0);
      v128.store(o1, madd(bv, v128.load(s1, 16), c11), 16);
      v128.store(o2, madd(bv, v128.load(s2, 0), c20), 0);
      v128.store(o2, madd(bv, v128.load(s2, 16), c21), 16);
      v128.store(o3, madd(bv, v128.load(s3, 0), c30), 0);
      v128.store(o3, madd(bv, v128.load(s3, 16), c31), 16);
    } else {
      const m = v128.or(
        v128.or(
          v128.or(nonFinite(f32x4.add(v128.load(src, 0), c00)), nonFinite(f32x4.add(v128.load(src, 16), c01))),
          v128.or(nonFinite(f32x4.add(v128.load(s1, 0), c10)), nonFinite(f32x4.add(v128.load(s1, 16), c11))),
        ),
        v128.or(
          v128.or(nonFinite(f32x4.add(v128.load(s2, 0), c20)), nonFinite(f32x4.add(v128.load(s2, 16), c21))),
          v128.or(nonFinite(f32x4.add(v128.load(s3, 0), c30)), nonFinite(f32x4.add(v128.load(s3, 16), c31))),
        ),
      );
      return v128.any_true(m) ? 1 : 0;
    }
    return 0;
  }

  v128.store(tmp, c00, 0); v128.store(tmp, c01, 16);
  v128.store(tmp, c10, 32); v128.store(tmp, c11, 48);
  v128.store(tmp, c20, 64); v128.store(tmp, c21, 80);
  v128.store(tmp, c30, 96); v128.store(tmp, c31, 112);
  for (let ii = 0; ii < mr; ii++) {
    const t = tmp + (<usize>ii << 5);
    const oi = out + <usize>ii * ld;
    const si = src + <usize>ii * ld;
    for (let jj = 0; jj < nr; jj++) {
      const q = <usize>jj << 2;
      const c = load<f32>(t + q);
      if (mode == EPILOGUE_ADD) {
        store<f32>(oi + q, load<f32>(si + q) + c);
      } else if (mode == EPILOGUE_STORE) {
        store<f32>(oi + q, c);
      } else if (mode == EPILOGUE_AXPBY) {
        // the same single rounding (relaxed) or two (baseline) as the vector path
        store<f32>(oi + q, f32x4.extract_lane(madd(f32x4.splat(beta), f32x4.splat(load<f32>(si + q)), f32x4.splat(c)), 0));
      } else if ((reinterpret<i32>(load<f32>(si + q) + c) & EXP_MASK) == EXP_MASK) {
        return 1;
      }
    }
  }
  return 0;
}

/**
 * The epilogue of a tile whose src or out is half precision (S or O is u16). Full tiles move rows
 * of 8 through decodeLo/decodeHi/store8 (convert.ts, one 16-byte load or store per half row); edge tiles go element by element with the same arithmetic.
 */
// @ts-ignore: decorator
@inline
function typedEpilogue<S, O>(
  out: usize, src: usize, ld: usize, lds: usize, mr: i32, nr: i32, tmp: usize, mode: i32, srcDt: i32, outDt: i32,
  c00: v128, c01: v128, c10: v128, c11: v128, c20: v128, c21: v128, c30: v128, c31: v128,
): i32 {
  const ss = <usize>sizeof<S>();
  if (mr == 4 && nr == 8) {
    if (mode == EPILOGUE_CHECK) {
      const m = v128.or(
        v128.or(rowCheck<S>(src, c00, c01, srcDt, outDt), rowCheck<S>(src + lds, c10, c11, srcDt, outDt)),
        v128.or(rowCheck<S>(src + 2 * lds, c20, c21, srcDt, outDt), rowCheck<S>(src + 3 * lds, c30, c31, srcDt, outDt)),
      );
      return v128.any_true(m) ? 1 : 0;
    }
    // One branch per tile picks a (src, out, add) instantiation whose dtypes are constants, so each
    // runs as straight-line code: no dtype test per row, and decodeLo/decodeHi share their work.
    if (mode == EPILOGUE_ADD) {
      if (sizeof<S>() == 4) {
        if (outDt == DTYPE_F16) rows4<S>(out, src, ld, lds, DTYPE_F32, DTYPE_F16, true, c00, c01, c10, c11, c20, c21, c30, c31);
        else rows4<S>(out, src, ld, lds, DTYPE_F32, DTYPE_BF16, true, c00, c01, c10, c11, c20, c21, c30, c31);
      } else if (sizeof<O>() == 4) {
        if (srcDt == DTYPE_F16) rows4<S>(out, src, ld, lds, DTYPE_F16, DTYPE_F32, true, c00, c01, c10, c11, c20, c21, c30, c31);
        else rows4<S>(out, src, ld, lds, DTYPE_BF16, DTYPE_F32, true, c00, c01, c10, c11, c20, c21, c30, c31);
      } else if (srcDt == DTYPE_F16) {
        if (outDt == DTYPE_F16) rows4<S>(out, src, ld, lds, DTYPE_F16, DTYPE_F16, true, c00, c01, c10, c11, c20, c21, c30, c31);
        else rows4<S>(out, src, ld, lds, DTYPE_F16, DTYPE_BF16, true, c00, c01, c10, c11, c20, c21, c30, c31);
      } else {
        if (outDt == DTYPE_F16) rows4<S>(out, src, ld, lds, DTYPE_BF16, DTYPE_F16, true, c00, c01, c10, c11, c20, c21, c30, c31);
        else rows4<S>(out, src, ld, lds, DTYPE_BF16, DTYPE_BF16, true, c00, c01, c10, c11, c20, c21, c30, c31);
      }
    } else if (sizeof<O>() == 4) {
      rows4<S>(out, src, ld, lds, DTYPE_F32, DTYPE_F32, false, c00, c01, c10, c11, c20, c21, c30, c31);
    } else if (outDt == DTYPE_F16) {
      rows4<S>(out, src, ld, lds, DTYPE_F32, DTYPE_F16, false, c00, c01, c10, c11, c20, c21, c30, c31);
    } else {
      rows4<S>(out, src, ld, lds, DTYPE_F32, DTYPE_BF16, false, c00, c01, c10, c11, c20, c21, c30, c31);
    }
    return 0;
  }
  v128.store(tmp, c00, 0); v128.store(tmp, c01, 16);
  v128.store(tmp, c10, 32); v128.store(tmp, c11, 48);
  v128.store(tmp, c20, 64); v128.store(tmp, c21, 80);
  v128.store(tmp, c30, 96); v128.store(tmp, c31, 112);
  const os = itemBytes(outDt);
  for (let ii = 0; ii < mr; ii++) {
    const t = tmp + (<usize>ii << 5);
    const oi = out + <usize>ii * ld;
    const si = src + <usize>ii * lds;
    for (let jj = 0; jj < nr; jj++) {
      const c = load<f32>(t + (<usize>jj << 2));
      if (mode == EPILOGUE_CHECK) {
        if (v128.any_true(nonFiniteAs(f32x4.splat(load1(si + <usize>jj * ss, srcDt) + c), outDt))) return 1;
      } else {
        store1(oi + <usize>jj * os, mode == EPILOGUE_ADD ? load1(si + <usize>jj * ss, srcDt) + c : c, outDt);
      }
    }
  }
  return 0;
}

/** Elements 0–3 of a row of 8 at src as f32x4 (a half row is one 16-byte load, decoded in halves). */
// @ts-ignore: decorator
@inline
function srcLo<S>(src: usize, srcDt: i32): v128 {
  return sizeof<S>() == 4 ? v128.load(src) : decodeLo(v128.load(src), srcDt);
}

/** Elements 4–7 (the same 16 bytes for a half row: the engine loads them once). */
// @ts-ignore: decorator
@inline
function srcHi<S>(src: usize, srcDt: i32): v128 {
  return sizeof<S>() == 4 ? v128.load(src, 16) : decodeHi(v128.load(src), srcDt);
}

/** The four rows of a full tile: out = [src +] acc. Callers pass sd, od, add as literals, so that inlining folds every dtype test. */
// @ts-ignore: decorator
@inline
function rows4<S>(
  out: usize, src: usize, ld: usize, lds: usize, sd: i32, od: i32, add: bool,
  c00: v128, c01: v128, c10: v128, c11: v128, c20: v128, c21: v128, c30: v128, c31: v128,
): void {
  rowStore<S>(out, src, c00, c01, add, sd, od);
  rowStore<S>(out + ld, src + lds, c10, c11, add, sd, od);
  rowStore<S>(out + 2 * ld, src + 2 * lds, c20, c21, add, sd, od);
  rowStore<S>(out + 3 * ld, src + 3 * lds, c30, c31, add, sd, od);
}

/** One row of 8: out = [src +] acc, decoded and encoded per dtype. */
// @ts-ignore: decorator
@inline
function rowStore<S>(out: usize, src: usize, c0: v128, c1: v128, add: bool, srcDt: i32, outDt: i32): void {
  if (add) {
    if (sizeof<S>() == 4) {
      c0 = f32x4.add(v128.load(src), c0);
      c1 = f32x4.add(v128.load(src, 16), c1);
    } else {
      const h = v128.load(src);
      c0 = addLo(h, c0, srcDt);
      c1 = addHi(h, c1, srcDt);
    }
  }
  store8(out, c0, c1, outDt);
}

/** Lanes of src + acc that would be NaN/±Inf once stored as outDt. */
// @ts-ignore: decorator
@inline
function rowCheck<S>(src: usize, c0: v128, c1: v128, srcDt: i32, outDt: i32): v128 {
  return v128.or(nonFiniteAs(f32x4.add(srcLo<S>(src, srcDt), c0), outDt), nonFiniteAs(f32x4.add(srcHi<S>(src, srcDt), c1), outDt));
}
