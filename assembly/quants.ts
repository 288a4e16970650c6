// ggml's legacy block quantization types (32 values per block), byte-exact with llama.cpp, and the
// entry points for every quantized type (the K-quants live in quants-k.ts).
//
// Block layouts (ggml-common.h; d and m are f16, all little-endian, blocks packed back to back):
//   Q4_0 18 B: d, qs[16]                 x[j] = (qs[j] & 15) − 8, x[j+16] = (qs[j] >> 4) − 8;  value = q·d
//   Q4_1 20 B: d, m, qs[16]              q as Q4_0 without the −8;                             value = q·d + m
//   Q5_0 22 B: d, qh[4], qs[16]          q = nibble | bit j (resp. j+16) of qh << 4, − 16;      value = q·d
//   Q5_1 24 B: d, m, qh[4], qs[16]       q = nibble | high bit, no offset;                     value = q·d + m
//   Q8_0 34 B: d, qs[32] (int8)                                                                value = q·d
//
// Quantizers: ports of quantize_row_{q4_0,q4_1,q5_0,q5_1,q8_0}_ref (ggml/src/ggml-quants.c), which
// ggml_quantize_chunk runs when no importance matrix is given. The arithmetic is f32, in C's order;
// the C casts (int8_t)f and (uint8_t)f are x86's cvttss2si (cvtt in quant-math.ts), so even
// blocks whose scale's inverse overflows (tiny values) give ggml's bytes.
// Dequantizers: dequantize_row_* of the same file, in SIMD128: 16 nibbles at once are masked or
// shifted as i8x16, widened to f32x4 and scaled; q·d + m stays a multiply then an add (no FMA, also
// in the relaxed build), as in the C.

import { dequantizeK, quantizeK } from './quants-k';
import {
  GGML_Q4_0, GGML_Q4_1, GGML_Q5_0, GGML_Q5_1, GGML_Q8_0, cvtt, getF16, imin, putF16, roundAway,
} from './quant-math';

/** Stores q (i8x16 of small signed ints) as 16 f32 at y: q·d, plus m when addM. */
// @ts-ignore: decorator
@inline
function store16(y: usize, q: v128, d: v128, m: v128, addM: bool): void {
  const lo = i16x8.extend_low_i8x16_s(q);
  const hi = i16x8.extend_high_i8x16_s(q);
  let v0 = f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(lo)), d);
  let v1 = f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(lo)), d);
  let v2 = f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(hi)), d);
  let v3 = f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(hi)), d);
  if (addM) {
    v0 = f32x4.add(v0, m);
    v1 = f32x4.add(v1, m);
    v2 = f32x4.add(v2, m);
    v3 = f32x4.add(v3, m);
  }
  v128.store(y, v0, 0);
  v128.store(y, v1, 16);
  v128.store(y, v2, 32);
  v128.store(y, v3, 48);
}

/** 0x10 in byte lane j where bit (base + j) of qh is set (j < 16): the fifth bits of Q5_0/Q5_1. */
// @ts-ignore: decorator
@inline
function highBits(qh: u32, upper: bool): v128 {
  const bytes = upper
    ? i8x16.swizzle(i32x4.splat(qh), i8x16(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3))
    : i8x16.swizzle(i32x4.splat(qh), i8x16(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
  const bit = i8x16(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
  return v128.and(i8x16.eq(v128.and(bytes, bit), bit), i8x16.splat(0x10));
}

// ------------------------------------------------------------ dequantize (dequantize_row_*)

function dequantizeQ4(y: usize, x: usize, nb: i32, hasMin: bool): void {
  const bytes: usize = hasMin ? 20 : 18;
  const qsAt: usize = hasMin ? 4 : 2;
  const low = i8x16.splat(0x0f);
  const off = i8x16.splat(hasMin ? 0 : 8);
  for (let i = 0; i < nb; i++) {
    const b = x + <usize>i * bytes;
    const d = f32x4.splat(getF16(b));
    const m = f32x4.splat(hasMin ? getF16(b + 2) : 0);
    const qs = v128.load(b + qsAt);
    const yb = y + (<usize>i << 7);
    store16(yb, i8x16.sub(v128.and(qs, low), off), d, m, hasMin);
    store16(yb + 64, i8x16.sub(i8x16.shr_u(qs, 4), off), d, m, hasMin);
  }
}

function dequantizeQ5(y: usize, x: usize, nb: i32, hasMin: bool): void {
  const bytes: usize = hasMin ? 24 : 22;
  const qhAt: usize = hasMin ? 4 : 2;
  const low = i8x16.splat(0x0f);
  const off = i8x16.splat(hasMin ? 0 : 16);
  for (let i = 0; i < nb; i++) {
    const b = x + <usize>i * bytes;
    const d = f32x4.splat(getF16(b));
    const m = f32x4.splat(hasMin ? getF16(b + 2) : 0);
    const qh = load<u32>(b + qhAt);
    const qs = v128.load(b + qhAt + 4);
    const yb = y + (<usize>i << 7);
    store16(yb, i8x16.sub(v128.or(v128.and(qs, low), highBits(qh, false)), off), d, m, hasMin);
    store16(yb + 64, i8x16.sub(v128.or(i8x16.shr_u(qs, 4), highBits(qh, true)), off), d, m, hasMin);
  }
}

function dequantizeQ8_0(y: usize, x: usize, nb: i32): void {
  const zero = f32x4.splat(0);
  for (let i = 0; i < nb; i++) {
    const b = x + <usize>i * 34;
    const d = f32x4.splat(getF16(b));
    const yb = y + (<usize>i << 7);
    store16(yb, v128.load(b + 2), d, zero, false);
    store16(yb + 64, v128.load(b + 18), d, zero, false);
  }
}

// ------------------------------------------------------------ quantize (quantize_row_*_ref)

/** quantize_row_q4_0_ref / quantize_row_q5_0_ref: d = (the value of largest |x|) / −2^(bits−1). */
function quantizeQ4Q5Sym(y: usize, x: usize, nb: i32, five: bool): void {
  const bytes: usize = five ? 22 : 18;
  const half: f32 = five ? 16.5 : 8.5;
  const top = five ? 31 : 15;
  for (let i = 0; i < nb; i++) {
    const xb = x + (<usize>i << 7);
    const b = y + <usize>i * bytes;
    let amax: f32 = 0;
    let max: f32 = 0;
    for (let j = 0; j < 32; j++) {
      const v = load<f32>(xb + (<usize>j << 2));
      if (amax < Mathf.abs(v)) {
        amax = Mathf.abs(v);
        max = v;
      }
    }
    const d = max / (five ? <f32>-16 : <f32>-8);
    const id: f32 = d != 0 ? <f32>1.0 / d : 0;
    putF16(b, d);
    let qh: u32 = 0;
    const qs = b + (five ? 6 : 2);
    for (let j = 0; j < 16; j++) {
      const x0 = load<f32>(xb + (<usize>j << 2)) * id;
      const x1 = load<f32>(xb + (<usize>(j + 16) << 2)) * id;
      const xi0 = imin(top, <i32><i8>cvtt(x0 + half)) & 0xff; // MIN(top, (int8_t)(x0 + half)) as uint8_t
      const xi1 = imin(top, <i32><i8>cvtt(x1 + half)) & 0xff;
      // Q4_0: qs = xi0 | xi1 << 4 (truncated to a byte); Q5_0: the low nibbles, fifth bits to qh
      store<u8>(qs + j, five ? (xi0 & 0x0f) | ((xi1 & 0x0f) << 4) : xi0 | (xi1 << 4));
      qh |= (<u32>(xi0 & 0x10) >> 4) << j;
      qh |= (<u32>(xi1 & 0x10) >> 4) << (j + 16);
    }
    if (five) store<u32>(b + 2, qh);
  }
}

/** quantize_row_q4_1_ref / quantize_row_q5_1_ref: d = (max − min)/(2^bits − 1), m = min. */
function quantizeQ4Q5Min(y: usize, x: usize, nb: i32, five: bool): void {
  const bytes: usize = five ? 24 : 20;
  for (let i = 0; i < nb; i++) {
    const xb = x + (<usize>i << 7);
    const b = y + <usize>i * bytes;
    let min = F32.MAX_VALUE;
    let max = -F32.MAX_VALUE;
    for (let j = 0; j < 32; j++) {
      const v = load<f32>(xb + (<usize>j << 2));
      if (v < min) min = v;
      if (v > max) max = v;
    }
    const d = (max - min) / (five ? <f32>31 : <f32>15);
    const id: f32 = d != 0 ? <f32>1.0 / d : 0;
    putF16(b, d);
    putF16(b + 2, min);
    let qh: u32 = 0;
    const qs = b + (five ? 8 : 4);
    for (let j = 0; j < 16; j++) {
      const x0 = (load<f32>(xb + (<usize>j << 2)) - min) * id;
      const x1 = (load<f32>(xb + (<usize>(j + 16) << 2)) - min) * id;
      // Q4_1: MIN(15, (int8_t)(x + 0.5f)); Q5_1: (uint8_t)(x + 0.5f)
      const xi0 = (five ? cvtt(x0 + <f32>0.5) : imin(15, <i32><i8>cvtt(x0 + <f32>0.5))) & 0xff;
      const xi1 = (five ? cvtt(x1 + <f32>0.5) : imin(15, <i32><i8>cvtt(x1 + <f32>0.5))) & 0xff;
      store<u8>(qs + j, five ? (xi0 & 0x0f) | ((xi1 & 0x0f) << 4) : xi0 | (xi1 << 4));
      qh |= (<u32>(xi0 & 0x10) >> 4) << j;
      qh |= (<u32>(xi1 & 0x10) >> 4) << (j + 16);
    }
    if (five) store<u32>(b + 4, qh);
  }
}

/** quantize_row_q8_0_ref: d = max|x|/127, q = roundf(x/d) (as x·(1/d)). */
function quantizeQ8_0(y: usize, x: usize, nb: i32): void {
  for (let i = 0; i < nb; i++) {
    const xb = x + (<usize>i << 7);
    const b = y + <usize>i * 34;
    let amax: f32 = 0;
    for (let j = 0; j < 32; j++) {
      const a = Mathf.abs(load<f32>(xb + (<usize>j << 2)));
      amax = amax > a ? amax : a; // C's MAX(amax, fabsf(v))
    }
    const d = amax / <f32>127;
    const id: f32 = d != 0 ? <f32>1.0 / d : 0;
    putF16(b, d);
    for (let j = 0; j < 32; j++) {
      store<i8>(b + 2 + j, <i8>cvtt(roundAway(load<f32>(xb + (<usize>j << 2)) * id)));
    }
  }
}

// ------------------------------------------------------------ entry points

/**
 * dst ← the ggml blocks of src[0..n) f32 values, for ggml_type `type` (n a multiple of the block
 * size, checked by the caller; tmp: QUANT_TMP_BYTES of per-thread scratch). Returns 0, or −1 for a
 * type without a quantizer here.
 */
export function quantize(dst: usize, src: usize, n: i32, type: i32, tmp: usize): i32 {
  if (type == GGML_Q8_0) quantizeQ8_0(dst, src, n >> 5);
  else if (type == GGML_Q4_0) quantizeQ4Q5Sym(dst, src, n >> 5, false);
  else if (type == GGML_Q5_0) quantizeQ4Q5Sym(dst, src, n >> 5, true);
  else if (type == GGML_Q4_1) quantizeQ4Q5Min(dst, src, n >> 5, false);
  else if (type == GGML_Q5_1) quantizeQ4Q5Min(dst, src, n >> 5, true);
  else return quantizeK(dst, src, n, type, tmp);
  return 0;
}

/** dst[0..n) f32 ← the ggml blocks at src of ggml_type `type`. Returns 0, or −1 for an unknown type. */
export function dequantize(dst: usize, src: usize, n: i32, type: i32): i32 {
  if (type == GGML_Q8_0) dequantizeQ8_0(dst, src, n >> 5);
  else if (type == GGML_Q4_0) dequantizeQ4(dst, src, n >> 5, false);
  else if (type == GGML_Q4_1) dequantizeQ4(dst, src, n >> 5, true);
  else if (type == GGML_Q5_0) dequantizeQ5(dst, src, n >> 5, false);
  else if (type == GGML_Q5_1) dequantizeQ5(dst, src, n >> 5, true);
  else return dequantizeK(dst, src, n, type);
  return 0;
}
