// General f32 matrix product, row-major:
//
//   C = alpha·op(X)·op(Y) + beta·C      op(X): [n, K], op(Y): [K, m], C: [n, m]
//
// nn.Linear's y = x·Wᵀ is transX = 0, transY = 1 with W stored [dOut, dIn]:
// packB reads W's rows directly into k-major strips, so no transposed copy of
// W is ever made.
//
// Goto/BLIS blocking around the 4×8 register tile (tile.ts):
//   for j0 in m by NC:                      Bp panel KC×NC = 256 KB, L2-resident
//     for p0 in K by KC: pack op(Y)[p0.., j0..]
//       for i0 in n by MC:                  Ap panel MC×KC = 64 KB, alpha folded in
//         pack alpha·op(X)[i0.., p0..]
//         for each 4-row block, for each 8-column strip: tile4x8(kc)
// The first K block applies beta (beta = 0 never reads C, so C may hold
// garbage); later K blocks add to C.
// see: Goto & van de Geijn, "Anatomy of high-performance matrix multiplication", TOMS 2008.

import { packA, packB } from './pack';
import { madd } from './simd';
import { EPILOGUE_ADD, EPILOGUE_AXPBY, EPILOGUE_STORE, tile4x8 } from './tile';

/** Block sizes. Twin: GEMM_MC/KC/NC in src/kernel/kernels.ts (the kernel layer sizes the scratch from them). */
export const GEMM_MC: i32 = 64;
export const GEMM_KC: i32 = 256;
export const GEMM_NC: i32 = 256;

/**
 * C = alpha·op(X)·op(Y) + beta·C. X is [n, K] (transX = 0) or [K, n] (1);
 * Y is [K, m] (transY = 0) or [m, K] (1); C is [n, m]. ldc, ldx, ldy are the
 * row strides in floats of C, X and Y as stored, so a call may work on a block
 * of a larger product (the worker pool splits C by columns or rows this way).
 * ap: MC·KC floats, bp: KC·NC floats, tmp: 32 floats, all 16-aligned scratch
 * private to the caller (smaller is enough when n < MC, m < NC or K < KC: ap
 * needs ⌈min(n, MC)/4⌉·4·min(K, KC) floats, bp ⌈min(m, NC)/8⌉·8·min(K, KC)).
 *
 * Each C element is Σ over K blocks in order, each block a sequential FMA chain
 * in its tile, so a block of C computes bit-identically to the whole product.
 */
export function gemm(
  c: usize, ldc: i32, x: usize, ldx: i32, y: usize, ldy: i32, n: i32, m: i32, k: i32, transX: i32, transY: i32,
  alpha: f32, beta: f32, ap: usize, bp: usize, tmp: usize,
): void {
  const ldcBytes = <usize>ldc << 2;
  const first = beta == 0 ? EPILOGUE_STORE : beta == 1 ? EPILOGUE_ADD : EPILOGUE_AXPBY;
  for (let j0 = 0; j0 < m; j0 += GEMM_NC) {
    const nc = min(GEMM_NC, m - j0);
    const strips = (nc + 7) >> 3;
    for (let p0 = 0; p0 < k; p0 += GEMM_KC) {
      const kc = min(GEMM_KC, k - p0);
      packB(bp, y, ldy, transY, p0, kc, j0, nc, 1);
      const mode = p0 == 0 ? first : EPILOGUE_ADD;
      for (let i0 = 0; i0 < n; i0 += GEMM_MC) {
        const mc = min(GEMM_MC, n - i0);
        packA(ap, x, ldx, transX, i0, mc, p0, kc, alpha);
        const blocks = (mc + 3) >> 2;
        for (let rb = 0; rb < blocks; rb++) {
          const mr = min(4, mc - (rb << 2));
          const pa = ap + (<usize>rb * <usize>kc << 4);
          const row = c + <usize>(i0 + (rb << 2)) * ldcBytes + (<usize>j0 << 2);
          for (let sb = 0; sb < strips; sb++) {
            const o = row + (<usize>sb << 5);
            tile4x8<f32, f32>(o, o, ldcBytes, pa, bp + (<usize>sb * <usize>kc << 5), kc, mr, min(8, nc - (sb << 3)), tmp, mode, beta, ldcBytes, 0, 0);
          }
        }
      }
    }
  }
}

/**
 * c = alpha·x·Yᵀ + beta·c for a single row x: [1, K] and Y: [m, K] (nn.Linear at batch 1).
 *
 * A matrix-vector product reads every weight once and does one FMA per weight, so it is
 * memory-bound; packing Y would read and write it once more for nothing. This reads Y in place,
 * one row at a time, so the weights arrive as ONE sequential stream (the layout the hardware
 * prefetcher serves best: on the 2-core EPYC, 4 or 8 rows at a time were 10–20 % slower than one,
 * measured), while x (K floats) stays in L1. Each row is 16 floats per step into four independent
 * accumulators (four FMA chains hide the FMA latency), then 4 at a time into the first, then a
 * scalar tail, and one horizontal sum:
 *   acc[u] += Y[j, q+4u .. q+4u+4) · x[q+4u .. q+4u+4)     u = 0..3, q = 0, 16, 32, ...
 * Rows are independent, so a split over threads by rows gives the same bits as one call.
 */
export function gemvT(c: usize, x: usize, y: usize, m: i32, k: i32, alpha: f32, beta: f32): void {
  const ld = <usize>k << 2;
  const end16 = x + (<usize>(k & ~15) << 2);
  const end4 = x + (<usize>(k & ~3) << 2);
  const end = x + ld;
  for (let j = 0; j < m; j++) {
    let p = y + <usize>j * ld;
    let xp = x;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    while (xp < end16) {
      a0 = madd(v128.load(p, 0), v128.load(xp, 0), a0);
      a1 = madd(v128.load(p, 16), v128.load(xp, 16), a1);
      a2 = madd(v128.load(p, 32), v128.load(xp, 32), a2);
      a3 = madd(v128.load(p, 48), v128.load(xp, 48), a3);
      p += 64;
      xp += 64;
    }
    while (xp < end4) {
      a0 = madd(v128.load(p), v128.load(xp), a0);
      p += 16;
      xp += 16;
    }
    let s = hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)));
    while (xp < end) {
      s += load<f32>(p) * load<f32>(xp);
      p += 4;
      xp += 4;
    }
    const o = c + (<usize>j << 2);
    store<f32>(o, axpby(alpha, s, beta, o));
  }
}

// @ts-ignore: decorator
@inline
function hsum(v: v128): f32 {
  return (f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 1)) + (f32x4.extract_lane(v, 2) + f32x4.extract_lane(v, 3));
}

/** alpha·s + beta·c[0]; c is not read when beta == 0 (it may hold garbage). */
// @ts-ignore: decorator
@inline
function axpby(alpha: f32, s: f32, beta: f32, c: usize): f32 {
  return beta == 0 ? alpha * s : alpha * s + beta * load<f32>(c);
}
