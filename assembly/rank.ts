// Rank-r products and fused LoRA merges.
//
//   Δ = s·A·B              A: [dOut, r], B: [r, dIn], Δ: [dOut, dIn], all row-major f32
//   out = W0 + s·A·B       (merge when out == W0, unmerge with -s)
//
// One pass over W, no ΔW temporary: each 4×8 tile of Δ is accumulated in
// registers (tile.ts) and added to the W0 tile on its way to `out`. The
// caller packs s·A with packA and B with packB (pack.ts) into scratch of
// O(r·(dOut + dIn)), so the tile reads both panels contiguously (kc = r).
//
// The epilogue (tile.ts) says what happens to each finished tile:
//   EPILOGUE_STORE  out = s·A·B           (delta; w0 unused)
//   EPILOGUE_ADD    out = w0 + s·A·B      (merge; out may equal w0)
//   EPILOGUE_CHECK  write nothing; return 1 if any w0 + s·A·B would be NaN/±Inf
//
// Rounding: Δ̂ is the same f32 sum for every epilogue, so
//   rankUpdate(ADD) == fl(W0 + rankUpdate(STORE)) bit for bit,
// and merge followed by unmerge (scale negated exactly) returns W0 within
// one rounding of W0 + Δ̂ and one of W0.

import { DTYPE_F32 } from './convert';
import { tile4x8 } from './tile';

/**
 * out = w0 + Ap·Bp (EPILOGUE_ADD), out = Ap·Bp (EPILOGUE_STORE), or a finiteness
 * check of w0 + Ap·Bp that writes nothing (EPILOGUE_CHECK, returns 1 on NaN/±Inf).
 *
 * out, w0: [dOut, dIn] row-major; ap = packA(sA·A), bp = packB(sB·B), both with kc = r
 * (sA·sB = s; the caller splits s so that neither packed factor overflows f32);
 * tmp: 128 bytes, 16-byte aligned, private to the caller.
 * colBlock: columns per B panel block (multiple of 8), so that r·colBlock·4 bytes
 * of Bp stay cache-resident while every row block of W streams past it.
 *
 * outDt, srcDt: the element types of out and w0 (DTYPE_F32/F16/BF16, convert.ts); a half w0 is
 * decoded exactly and a half out encoded once: out = round(f32(w0) + Ap·Bp).
 *
 * Row blocks are independent, so a caller may split dOut across threads by
 * offsetting out, w0 and ap (by multiples of 4 rows).
 */
export function rankUpdate(
  out: usize, w0: usize, ap: usize, bp: usize, tmp: usize,
  dOut: i32, dIn: i32, r: i32, colBlock: i32, epilogue: i32, outDt: i32, srcDt: i32,
): i32 {
  // one specialised loop per (src, out) storage type: the all-f32 merge is the f32 kernel alone
  if (outDt == DTYPE_F32) {
    return srcDt == DTYPE_F32
      ? rankLoop<f32, f32>(out, w0, ap, bp, tmp, dOut, dIn, r, colBlock, epilogue, outDt, srcDt)
      : rankLoop<u16, f32>(out, w0, ap, bp, tmp, dOut, dIn, r, colBlock, epilogue, outDt, srcDt);
  }
  return srcDt == DTYPE_F32
    ? rankLoop<f32, u16>(out, w0, ap, bp, tmp, dOut, dIn, r, colBlock, epilogue, outDt, srcDt)
    : rankLoop<u16, u16>(out, w0, ap, bp, tmp, dOut, dIn, r, colBlock, epilogue, outDt, srcDt);
}

function rankLoop<S, O>(
  out: usize, w0: usize, ap: usize, bp: usize, tmp: usize,
  dOut: i32, dIn: i32, r: i32, colBlock: i32, epilogue: i32, outDt: i32, srcDt: i32,
): i32 {
  const ob = <usize>sizeof<O>(), sbytes = <usize>sizeof<S>();
  const ld = <usize>dIn * ob;
  const lds = <usize>dIn * sbytes;
  const rowBlocks = (dOut + 3) >> 2;
  const strips = (dIn + 7) >> 3;
  const stripsPerBlock = max(1, colBlock >> 3);
  const apStride = <usize>r << 4;
  const bpStride = <usize>r << 5;
  for (let s0 = 0; s0 < strips; s0 += stripsPerBlock) {
    const s1 = min(strips, s0 + stripsPerBlock);
    for (let rb = 0; rb < rowBlocks; rb++) {
      const mr = min(4, dOut - (rb << 2));
      const o = out + <usize>(rb << 2) * ld;
      const w = w0 + <usize>(rb << 2) * lds;
      const pa = ap + <usize>rb * apStride;
      for (let sb = s0; sb < s1; sb++) {
        const col = <usize>(sb << 3);
        const nr = min(8, dIn - (sb << 3));
        const hit = tile4x8<S, O>(o + col * ob, w + col * sbytes, ld, pa, bp + <usize>sb * bpStride, r, mr, nr, tmp, epilogue, 1, lds, srcDt, outDt);
        if (hit != 0) return 1;
      }
    }
  }
  return 0;
}
