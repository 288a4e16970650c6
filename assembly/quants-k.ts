// ggml's K-quants: 256-value super-blocks of 16 or 8 sub-blocks, each with its own 4-, 6- or 8-bit
// scale (and min), themselves scaled by one f16 per super-block. Byte-exact with llama.cpp.
//
// Block layouts (ggml-common.h, QK_K = 256; d, dmin f16; little-endian):
//   Q2_K  84 B: scales[16] (low nibble: scale, high: min, of 16-value sub-block j), qs[64], d, dmin
//               qs: 2 bits per value; byte l of 32-byte group g, bits 2s..2s+1 = value 128g + 32s + l
//               value = d·(sc & 15)·q − dmin·(sc >> 4)
//   Q3_K 110 B: hmask[32], qs[64], scales[12], d
//               q = (2 low bits as Q2_K) | (bit (4g + s) of hmask[l'] for value 128g + 32s + l') << 2, − 4
//               scales: 16 six-bit values: low nibbles in bytes 0–7 (j < 8 low, j ≥ 8 high nibble of j−8),
//               top two bits in bytes 8–11 (byte 8 + j%4, bits 2·(j/4)); value = d·(scale − 32)·q
//   Q4_K 144 B: d, dmin, scales[12], qs[128]
//               8 sub-blocks of 32: six-bit scale and min packed by get_scale_min_k4; qs byte l of
//               32-byte group g: low nibble = value 64g + l, high nibble = value 64g + 32 + l
//               value = d·sc·q − dmin·m
//   Q5_K 176 B: d, dmin, scales[12], qh[32], qs[128]: Q4_K plus a fifth bit, bit (2g) / (2g + 1) of qh[l]
//   Q6_K 210 B: ql[128], qh[64], scales[16] (int8), d
//               per 128-value half h: ql[64h + l] low nibble = value 128h + l, of ql[64h + 32 + l] =
//               value 128h + 32 + l, high nibbles the values + 64; qh[32h + l] bits 2k..2k+1 = top bits
//               of value 128h + 32k + l; value = d·scale[v/16]·(q − 32)
//
// Quantizers: ports of quantize_row_q{2,3,4,5,6}_K_ref (ggml/src/ggml-quants.c) and the helpers they
// use: make_qkx2_quants (Q2_K: nstep 15, rmin −0.5, rdelta 0.1, mean absolute error; Q4_K: 20, −1,
// 0.1; Q5_K: 15, −0.5, 0.1; both squared error), make_q3_quants (Q3_K, with the rmse refinement) and
// make_qx_quants (Q6_K, rmse_type 1, no weights). They are iterative searches, so they stay scalar and
// keep the C's f32 operation order exactly (products and sums left to right, no FMA).
// Dequantizers: dequantize_row_q*_K, 16 values per step in SIMD128 (mask/shift as i8x16, widen,
// scale: d·q − m as a multiply then a subtract, as in the C).

import { cvtt, getF16, imax, imin, nearestInt, putF16, GGML_Q2_K, GGML_Q3_K, GGML_Q4_K, GGML_Q5_K, GGML_Q6_K } from './quant-math';

const QK_K = 256;
/** ggml's GROUP_MAX_EPS: a group whose largest |x| is below this quantizes to zeros. */
const GROUP_MAX_EPS: f32 = 1e-15;

// per-thread scratch (QUANT_TMP_BYTES): the C's stack arrays
const T_L: usize = 0; //        u8/i8 L[256]
const T_LAUX: usize = 256; //   u8 Laux[32]
const T_W: usize = 288; //      f32 weights[32]
const T_SCALES: usize = 416; // f32 scales[16]
const T_MINS: usize = 480; //   f32 mins[16]

// @ts-ignore: decorator
@inline
function f(p: usize, i: i32): f32 {
  return load<f32>(p + (<usize>i << 2));
}

// ------------------------------------------------------------ helpers (ggml-quants.c)

/**
 * make_qkx2_quants: scale and min (returned, and −min stored at minOut) for n values x with weights w,
 * L[i] ∈ [0, nmax]: the min–max start, then nstep + 1 trial scales (rmin + rdelta·is + nmax)/(max − min),
 * each refit by weighted least squares, kept when its error (|diff| or diff²) is lower.
 */
function makeQkx2Quants(
  n: i32, nmax: i32, x: usize, w: usize, L: usize, minOut: usize, Laux: usize,
  rmin: f32, rdelta: f32, nstep: i32, useMad: bool,
): f32 {
  let min = f(x, 0);
  let max = f(x, 0);
  let sumW = f(w, 0);
  let sumX = sumW * f(x, 0);
  for (let i = 1; i < n; i++) {
    const xi = f(x, i);
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    const wi = f(w, i);
    sumW += wi;
    sumX += wi * xi;
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (let i = 0; i < n; i++) store<u8>(L + i, 0);
    store<f32>(minOut, -min);
    return 0;
  }
  let iscale = <f32>nmax / (max - min);
  let scale = <f32>1 / iscale;
  let bestError: f32 = 0;
  for (let i = 0; i < n; i++) {
    const l = imax(0, imin(nmax, nearestInt(iscale * (f(x, i) - min))));
    store<u8>(L + i, l);
    let diff = scale * <f32>l + min - f(x, i);
    diff = useMad ? Mathf.abs(diff) : diff * diff;
    bestError += f(w, i) * diff;
  }
  if (nstep < 1) {
    store<f32>(minOut, -min);
    return scale;
  }
  for (let is = 0; is <= nstep; is++) {
    iscale = (rmin + rdelta * <f32>is + <f32>nmax) / (max - min);
    let sumL: f32 = 0, sumL2: f32 = 0, sumXL: f32 = 0;
    for (let i = 0; i < n; i++) {
      const xi = f(x, i);
      const l = imax(0, imin(nmax, nearestInt(iscale * (xi - min))));
      store<u8>(Laux + i, l);
      const wi = f(w, i);
      const fl = <f32>l;
      sumL += wi * fl;
      sumL2 += wi * fl * fl;
      sumXL += wi * fl * xi;
    }
    const D = sumW * sumL2 - sumL * sumL;
    if (D > 0) {
      let thisScale = (sumW * sumXL - sumX * sumL) / D;
      let thisMin = (sumL2 * sumX - sumL * sumXL) / D;
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = sumXL / sumL2;
      }
      let curError: f32 = 0;
      for (let i = 0; i < n; i++) {
        let diff = thisScale * <f32>load<u8>(Laux + i) + thisMin - f(x, i);
        diff = useMad ? Mathf.abs(diff) : diff * diff;
        curError += f(w, i) * diff;
      }
      if (curError < bestError) {
        memory.copy(L, Laux, n);
        bestError = curError;
        scale = thisScale;
        min = thisMin;
      }
    }
  }
  store<f32>(minOut, -min);
  return scale;
}

/**
 * make_q3_quants with do_rmse: L[i] ∈ [0, 2·nmax) (stored as l + nmax, int8) for scale −nmax/max,
 * then up to 5 passes that move single L[i] where the x²-weighted fit improves.
 */
function makeQ3Quants(n: i32, nmax: i32, x: usize, L: usize): f32 {
  let max: f32 = 0;
  let amax: f32 = 0;
  for (let i = 0; i < n; i++) {
    const ax = Mathf.abs(f(x, i));
    if (ax > amax) {
      amax = ax;
      max = f(x, i);
    }
  }
  if (amax < GROUP_MAX_EPS) {
    for (let i = 0; i < n; i++) store<i8>(L + i, 0);
    return 0;
  }
  const iscale = <f32>-nmax / max;
  let sumlx: f32 = 0;
  let suml2: f32 = 0;
  for (let i = 0; i < n; i++) {
    const xi = f(x, i);
    const l = imax(-nmax, imin(nmax - 1, nearestInt(iscale * xi)));
    store<i8>(L + i, <i8>l);
    const w = xi * xi;
    sumlx += w * xi * <f32>l;
    suml2 += w * <f32>l * <f32>l;
  }
  for (let itry = 0; itry < 5; itry++) {
    let nChanged = 0;
    for (let i = 0; i < n; i++) {
      const xi = f(x, i);
      const w = xi * xi;
      const li = <f32>load<i8>(L + i);
      let slx = sumlx - w * xi * li;
      if (slx > 0) {
        let sl2 = suml2 - w * li * li;
        const newL = imax(-nmax, imin(nmax - 1, nearestInt(xi * sl2 / slx)));
        if (newL != <i32>load<i8>(L + i)) {
          slx += w * xi * <f32>newL;
          sl2 += w * <f32>newL * <f32>newL;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            store<i8>(L + i, <i8>newL);
            sumlx = slx;
            suml2 = sl2;
            nChanged++;
          }
        }
      }
    }
    if (nChanged == 0) break;
  }
  for (let i = 0; i < n; i++) store<i8>(L + i, <i8>(<i32>load<i8>(L + i) + nmax));
  return suml2 > 0 ? sumlx / suml2 : 0;
}

/** The value l = nearest_int(iscale·x) of make_qx_quants, clamped to [−nmax, nmax). */
// @ts-ignore: decorator
@inline
function qxLevel(iscale: f32, x: f32, nmax: i32): i32 {
  return imax(-nmax, imin(nmax - 1, nearestInt(iscale * x)));
}

/**
 * make_qx_quants with rmse_type 1 and no weights (w = x²): L[i] = l + nmax for the best of 19 trial
 * scales −(nmax + 0.1·is)/max by the weighted least-squares criterion sumlx²/suml2.
 */
function makeQxQuants(n: i32, nmax: i32, x: usize, L: usize): f32 {
  let max: f32 = 0;
  let amax: f32 = 0;
  for (let i = 0; i < n; i++) {
    const ax = Mathf.abs(f(x, i));
    if (ax > amax) {
      amax = ax;
      max = f(x, i);
    }
  }
  if (amax < GROUP_MAX_EPS) {
    for (let i = 0; i < n; i++) store<i8>(L + i, 0);
    return 0;
  }
  let iscale = <f32>-nmax / max;
  let sumlx: f32 = 0;
  let suml2: f32 = 0;
  for (let i = 0; i < n; i++) {
    const xi = f(x, i);
    const l = qxLevel(iscale, xi, nmax);
    store<i8>(L + i, <i8>(l + nmax));
    const w = xi * xi;
    sumlx += w * xi * <f32>l;
    suml2 += w * <f32>l * <f32>l;
  }
  let scale: f32 = suml2 != 0 ? sumlx / suml2 : 0;
  let best = scale * sumlx;
  for (let is = -9; is <= 9; is++) {
    if (is == 0) continue;
    iscale = -(<f32>nmax + <f32>0.1 * <f32>is) / max;
    sumlx = 0;
    suml2 = 0;
    for (let i = 0; i < n; i++) {
      const xi = f(x, i);
      const l = qxLevel(iscale, xi, nmax);
      const w = xi * xi;
      sumlx += w * xi * <f32>l;
      suml2 += w * <f32>l * <f32>l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (let i = 0; i < n; i++) store<i8>(L + i, <i8>(nmax + qxLevel(iscale, f(x, i), nmax)));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

/** get_scale_min_k4: the six-bit scale (low 8 bits of the result) and min (bits 8–15) of sub-block j. */
// @ts-ignore: decorator
@inline
function scaleMinK4(j: i32, q: usize): i32 {
  let d: i32, m: i32;
  if (j < 4) {
    d = load<u8>(q + j) & 63;
    m = load<u8>(q + j + 4) & 63;
  } else {
    d = (load<u8>(q + j + 4) & 0xf) | ((load<u8>(q + j - 4) >> 6) << 4);
    m = (load<u8>(q + j + 4) >> 4) | ((load<u8>(q + j) >> 6) << 4);
  }
  return d | (m << 8);
}

/** Packs L[0..256) (2-bit values) into 64 bytes as Q2_K/Q3_K do: byte 32g + l = L[128g + l + 32s] << 2s. */
function pack2(qs: usize, L: usize): void {
  for (let j = 0; j < QK_K; j += 128) {
    for (let l = 0; l < 32; l++) {
      const a = L + j + l;
      store<u8>(qs + (j >> 2) + l, load<u8>(a) | (load<u8>(a, 32) << 2) | (load<u8>(a, 64) << 4) | (load<u8>(a, 96) << 6));
    }
  }
}

// ------------------------------------------------------------ quantize_row_q*_K_ref

/** quantize_row_q2_K_ref. */
function quantizeQ2K(y: usize, x: usize, nb: i32, tmp: usize): void {
  const L = tmp + T_L, Laux = tmp + T_LAUX, weights = tmp + T_W, scales = tmp + T_SCALES, mins = tmp + T_MINS;
  const q4scale: f32 = 15;
  for (let i = 0; i < nb; i++) {
    const b = y + <usize>i * 84;
    let maxScale: f32 = 0;
    let maxMin: f32 = 0;
    for (let j = 0; j < 16; j++) {
      const xj = x + (<usize>(16 * j) << 2);
      for (let l = 0; l < 16; l++) store<f32>(weights + (<usize>l << 2), Mathf.abs(f(xj, l)));
      const scale = makeQkx2Quants(16, 3, xj, weights, L + 16 * j, mins + (<usize>j << 2), Laux, -0.5, 0.1, 15, true);
      store<f32>(scales + (<usize>j << 2), scale);
      if (scale > maxScale) maxScale = scale;
      const min = f(mins, j);
      if (min > maxMin) maxMin = min;
    }
    if (maxScale > 0) {
      const iscale = q4scale / maxScale;
      for (let j = 0; j < 16; j++) store<u8>(b + j, nearestInt(iscale * f(scales, j)));
      putF16(b + 80, maxScale / q4scale);
    } else {
      for (let j = 0; j < 16; j++) store<u8>(b + j, 0);
      putF16(b + 80, 0);
    }
    if (maxMin > 0) {
      const iscale = q4scale / maxMin;
      for (let j = 0; j < 16; j++) store<u8>(b + j, load<u8>(b + j) | (nearestInt(iscale * f(mins, j)) << 4));
      putF16(b + 82, maxMin / q4scale);
    } else {
      putF16(b + 82, 0);
    }
    const dAll = getF16(b + 80);
    const mAll = getF16(b + 82);
    for (let j = 0; j < 16; j++) {
      const sc = <i32>load<u8>(b + j);
      const d = dAll * <f32>(sc & 0xf);
      if (d == 0) continue;
      const dm = mAll * <f32>(sc >> 4);
      for (let ii = 0; ii < 16; ii++) {
        const l = nearestInt((f(x, 16 * j + ii) + dm) / d);
        store<u8>(L + 16 * j + ii, imax(0, imin(3, l)));
      }
    }
    pack2(b + 16, L);
    x += QK_K << 2;
  }
}

/** quantize_row_q3_K_ref. */
function quantizeQ3K(y: usize, x: usize, nb: i32, tmp: usize): void {
  const L = tmp + T_L, scales = tmp + T_SCALES;
  for (let i = 0; i < nb; i++) {
    const b = y + <usize>i * 110;
    const hmask = b, qs = b + 32, sc = b + 96;
    let maxScale: f32 = 0;
    let amax: f32 = 0;
    for (let j = 0; j < 16; j++) {
      const s = makeQ3Quants(16, 4, x + (<usize>(16 * j) << 2), L + 16 * j);
      store<f32>(scales + (<usize>j << 2), s);
      const a = Mathf.abs(s);
      if (a > amax) {
        amax = a;
        maxScale = s;
      }
    }
    memory.fill(sc, 0, 12);
    if (maxScale != 0) {
      const iscale = <f32>-32 / maxScale;
      for (let j = 0; j < 16; j++) {
        let l = <i32><i8>nearestInt(iscale * f(scales, j)); // int8_t l = nearest_int(...)
        l = <i32><i8>(imax(-32, imin(31, l)) + 32);
        if (j < 8) store<u8>(sc + j, l & 0xf);
        else store<u8>(sc + j - 8, load<u8>(sc + j - 8) | ((l & 0xf) << 4));
        l >>= 4;
        store<u8>(sc + (j % 4) + 8, load<u8>(sc + (j % 4) + 8) | (l << (2 * (j / 4))));
      }
      putF16(b + 108, <f32>1 / iscale);
    } else {
      putF16(b + 108, 0);
    }
    const dAll = getF16(b + 108);
    for (let j = 0; j < 16; j++) {
      let s = j < 8 ? <i32>load<u8>(sc + j) & 0xf : <i32>load<u8>(sc + j - 8) >> 4;
      s = <i32><i8>((s | (((<i32>load<u8>(sc + 8 + (j % 4)) >> (2 * (j / 4))) & 3) << 4)) - 32);
      const d = dAll * <f32>s;
      if (d == 0) continue;
      for (let ii = 0; ii < 16; ii++) {
        const l = imax(-4, imin(3, nearestInt(f(x, 16 * j + ii) / d)));
        store<i8>(L + 16 * j + ii, <i8>(l + 4));
      }
    }
    memory.fill(hmask, 0, 32);
    // the high bit of value j goes to bit j/32 of hmask[j % 32]
    let m = 0;
    let hm = 1;
    for (let j = 0; j < QK_K; j++) {
      const lj = <i32>load<i8>(L + j);
      if (lj > 3) {
        store<u8>(hmask + m, load<u8>(hmask + m) | hm);
        store<i8>(L + j, <i8>(lj - 4));
      }
      if (++m == 32) {
        m = 0;
        hm <<= 1;
      }
    }
    pack2(qs, L);
    x += QK_K << 2;
  }
}

/** Packs the scales and mins of Q4_K/Q5_K (six bits each) as get_scale_min_k4 reads them. */
function packScalesK4(sc: usize, j: i32, ls: i32, lm: i32): void {
  if (j < 4) {
    store<u8>(sc + j, ls);
    store<u8>(sc + j + 4, lm);
  } else {
    store<u8>(sc + j + 4, (ls & 0xf) | ((lm & 0xf) << 4));
    store<u8>(sc + j - 4, load<u8>(sc + j - 4) | ((ls >> 4) << 6));
    store<u8>(sc + j, load<u8>(sc + j) | ((lm >> 4) << 6));
  }
}

/** quantize_row_q4_K_ref (five = false) and quantize_row_q5_K_ref (five = true). */
function quantizeQ45K(y: usize, x: usize, nb: i32, tmp: usize, five: bool): void {
  const L = tmp + T_L, Laux = tmp + T_LAUX, weights = tmp + T_W, scales = tmp + T_SCALES, mins = tmp + T_MINS;
  const bytes: usize = five ? 176 : 144;
  const nmax = five ? 31 : 15;
  for (let i = 0; i < nb; i++) {
    const b = y + <usize>i * bytes;
    let maxScale: f32 = 0;
    let maxMin: f32 = 0;
    for (let j = 0; j < 8; j++) {
      const xj = x + (<usize>(32 * j) << 2);
      let sumX2: f32 = 0;
      for (let l = 0; l < 32; l++) sumX2 += f(xj, l) * f(xj, l);
      const avX = Mathf.sqrt(sumX2 / <f32>32);
      for (let l = 0; l < 32; l++) store<f32>(weights + (<usize>l << 2), avX + Mathf.abs(f(xj, l)));
      const scale = five
        ? makeQkx2Quants(32, 31, xj, weights, L + 32 * j, mins + (<usize>j << 2), Laux, -0.5, 0.1, 15, false)
        : makeQkx2Quants(32, 15, xj, weights, L + 32 * j, mins + (<usize>j << 2), Laux, -1.0, 0.1, 20, false);
      store<f32>(scales + (<usize>j << 2), scale);
      if (scale > maxScale) maxScale = scale;
      const min = f(mins, j);
      if (min > maxMin) maxMin = min;
    }
    const invScale: f32 = maxScale > 0 ? <f32>63 / maxScale : 0;
    const invMin: f32 = maxMin > 0 ? <f32>63 / maxMin : 0;
    const sc = b + 4;
    for (let j = 0; j < 8; j++) {
      const ls = imin(63, nearestInt(invScale * f(scales, j)) & 0xff); // uint8_t ls = nearest_int(...); MIN(63, ls)
      const lm = imin(63, nearestInt(invMin * f(mins, j)) & 0xff);
      packScalesK4(sc, j, ls, lm);
    }
    putF16(b, maxScale / <f32>63);
    putF16(b + 2, maxMin / <f32>63);
    const dAll = getF16(b);
    const mAll = getF16(b + 2);
    for (let j = 0; j < 8; j++) {
      const sm = scaleMinK4(j, sc);
      const d = dAll * <f32>(sm & 0xff);
      if (d == 0) continue;
      const dm = mAll * <f32>(sm >> 8);
      for (let ii = 0; ii < 32; ii++) {
        const l = nearestInt((f(x, 32 * j + ii) + dm) / d);
        store<u8>(L + 32 * j + ii, imax(0, imin(nmax, l)));
      }
    }
    if (five) {
      const qh = b + 16;
      let ql = b + 48;
      memory.fill(qh, 0, 32);
      let m1 = 1, m2 = 2;
      for (let n = 0; n < QK_K; n += 64) {
        for (let j = 0; j < 32; j++) {
          let l1 = <i32>load<u8>(L + n + j);
          if (l1 > 15) {
            l1 -= 16;
            store<u8>(qh + j, load<u8>(qh + j) | m1);
          }
          let l2 = <i32>load<u8>(L + n + j + 32);
          if (l2 > 15) {
            l2 -= 16;
            store<u8>(qh + j, load<u8>(qh + j) | m2);
          }
          store<u8>(ql + j, l1 | (l2 << 4));
        }
        m1 <<= 2;
        m2 <<= 2;
        ql += 32;
      }
    } else {
      let q = b + 16;
      for (let j = 0; j < QK_K; j += 64) {
        for (let l = 0; l < 32; l++) store<u8>(q + l, load<u8>(L + j + l) | (load<u8>(L + j + l + 32) << 4));
        q += 32;
      }
    }
    x += QK_K << 2;
  }
}

/** quantize_row_q6_K_ref. */
function quantizeQ6K(y: usize, x: usize, nb: i32, tmp: usize): void {
  const L = tmp + T_L, scales = tmp + T_SCALES;
  for (let i = 0; i < nb; i++) {
    const b = y + <usize>i * 210;
    let maxScale: f32 = 0;
    let maxAbsScale: f32 = 0;
    for (let ib = 0; ib < 16; ib++) {
      const scale = makeQxQuants(16, 32, x + (<usize>(16 * ib) << 2), L + 16 * ib);
      store<f32>(scales + (<usize>ib << 2), scale);
      const a = Mathf.abs(scale);
      if (a > maxAbsScale) {
        maxAbsScale = a;
        maxScale = scale;
      }
    }
    if (maxAbsScale < GROUP_MAX_EPS) {
      memory.fill(b, 0, 210);
      putF16(b + 208, 0);
      x += QK_K << 2;
      continue;
    }
    const iscale = <f32>-128 / maxScale;
    putF16(b + 208, <f32>1 / iscale);
    const sc = b + 192;
    for (let ib = 0; ib < 16; ib++) store<i8>(sc + ib, <i8>imin(127, nearestInt(iscale * f(scales, ib))));
    const dAll = getF16(b + 208);
    for (let j = 0; j < 16; j++) {
      const d = dAll * <f32>load<i8>(sc + j);
      if (d == 0) continue;
      for (let ii = 0; ii < 16; ii++) {
        const l = imax(-32, imin(31, nearestInt(f(x, 16 * j + ii) / d)));
        store<u8>(L + 16 * j + ii, l + 32);
      }
    }
    let ql = b, qh = b + 128;
    for (let j = 0; j < QK_K; j += 128) {
      for (let l = 0; l < 32; l++) {
        const a = L + j + l;
        const l0 = <i32>load<u8>(a), l1 = <i32>load<u8>(a, 32), l2 = <i32>load<u8>(a, 64), l3 = <i32>load<u8>(a, 96);
        store<u8>(ql + l, (l0 & 0xf) | ((l2 & 0xf) << 4));
        store<u8>(ql + l + 32, (l1 & 0xf) | ((l3 & 0xf) << 4));
        store<u8>(qh + l, (l0 >> 4) | ((l1 >> 4) << 2) | ((l2 >> 4) << 4) | ((l3 >> 4) << 6));
      }
      ql += 64;
      qh += 32;
    }
    x += QK_K << 2;
  }
}

// ------------------------------------------------------------ dequantize_row_q*_K

/** Stores q (i8x16 of small signed ints) as 16 f32 at y: d·q − m (a multiply, then a subtract). */
// @ts-ignore: decorator
@inline
function store16(y: usize, q: v128, d: f32, m: f32): void {
  const dv = f32x4.splat(d), mv = f32x4.splat(m);
  const lo = i16x8.extend_low_i8x16_s(q);
  const hi = i16x8.extend_high_i8x16_s(q);
  v128.store(y, f32x4.sub(f32x4.mul(dv, f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(lo))), mv), 0);
  v128.store(y, f32x4.sub(f32x4.mul(dv, f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(lo))), mv), 16);
  v128.store(y, f32x4.sub(f32x4.mul(dv, f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(hi))), mv), 32);
  v128.store(y, f32x4.sub(f32x4.mul(dv, f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(hi))), mv), 48);
}

/** Two bits at `shift` of each byte of v (i8x16). */
// @ts-ignore: decorator
@inline
function bits2(v: v128, shift: i32): v128 {
  return v128.and(i8x16.shr_u(v, shift), i8x16.splat(3));
}

function dequantizeQ2K(y: usize, x: usize, nb: i32): void {
  for (let i = 0; i < nb; i++) {
    const b = x + <usize>i * 84;
    const d = getF16(b + 80);
    const min = getF16(b + 82);
    let is = 0;
    for (let n = 0; n < 2; n++) {
      const q0 = v128.load(b + 16 + 32 * n), q1 = v128.load(b + 32 + 32 * n);
      for (let j = 0; j < 4; j++) {
        let sc = <i32>load<u8>(b + is++);
        store16(y, bits2(q0, 2 * j), d * <f32>(sc & 0xf), min * <f32>(sc >> 4));
        sc = <i32>load<u8>(b + is++);
        store16(y + 64, bits2(q1, 2 * j), d * <f32>(sc & 0xf), min * <f32>(sc >> 4));
        y += 128;
      }
    }
  }
}

function dequantizeQ3K(y: usize, x: usize, nb: i32): void {
  const four = i8x16.splat(4);
  for (let i = 0; i < nb; i++) {
    const b = x + <usize>i * 110;
    const dAll = getF16(b + 108);
    const sc = b + 96;
    const h0 = v128.load(b), h1 = v128.load(b + 16);
    let is = 0;
    for (let n = 0; n < 2; n++) {
      const q0 = v128.load(b + 32 + 32 * n), q1 = v128.load(b + 48 + 32 * n);
      for (let j = 0; j < 4; j++) {
        const bit = 4 * n + j;
        const mbit = i8x16.splat(<i8>(<i32>1 << bit));
        // q − (high bit clear ? 4 : 0): the and-not mask is 0xff where the bit is clear
        for (let half = 0; half < 2; half++) {
          const s = <i32><i8>(((is < 8 ? <i32>load<u8>(sc + is) & 0xf : <i32>load<u8>(sc + is - 8) >> 4)
            | (((<i32>load<u8>(sc + 8 + (is % 4)) >> (2 * (is / 4))) & 3) << 4)) - 32);
          const h = half == 0 ? h0 : h1;
          const clear = i8x16.eq(v128.and(h, mbit), i8x16.splat(0));
          const q = i8x16.sub(bits2(half == 0 ? q0 : q1, 2 * j), v128.and(clear, four));
          store16(y, q, dAll * <f32>s, 0);
          y += 64;
          is++;
        }
      }
    }
  }
}

function dequantizeQ45K(y: usize, x: usize, nb: i32, five: bool): void {
  const low = i8x16.splat(0x0f);
  const sixteen = i8x16.splat(16);
  const zero = i8x16.splat(0);
  const bytes: usize = five ? 176 : 144;
  for (let i = 0; i < nb; i++) {
    const b = x + <usize>i * bytes;
    const d = getF16(b);
    const min = getF16(b + 2);
    const sc = b + 4;
    const qh = b + 16;
    let q = b + (five ? 48 : 16);
    for (let g = 0; g < 4; g++) {
      const sm1 = scaleMinK4(2 * g, sc), sm2 = scaleMinK4(2 * g + 1, sc);
      const d1 = d * <f32>(sm1 & 0xff), m1 = min * <f32>(sm1 >> 8);
      const d2 = d * <f32>(sm2 & 0xff), m2 = min * <f32>(sm2 >> 8);
      for (let h = 0; h < 2; h++) {
        const v = v128.load(q + 16 * h);
        let lo = v128.and(v, low);
        let hi = i8x16.shr_u(v, 4);
        if (five) {
          const hv = v128.load(qh + 16 * h);
          const shift = 2 * g;
          const u1 = i8x16.splat(<i8>(<i32>1 << shift)), u2 = i8x16.splat(<i8>(<i32>2 << shift));
          lo = v128.or(lo, v128.andnot(sixteen, i8x16.eq(v128.and(hv, u1), zero)));
          hi = v128.or(hi, v128.andnot(sixteen, i8x16.eq(v128.and(hv, u2), zero)));
        }
        store16(y + 64 * h, lo, d1, m1);
        store16(y + 128 + 64 * h, hi, d2, m2);
      }
      y += 256;
      q += 32;
    }
  }
}

function dequantizeQ6K(y: usize, x: usize, nb: i32): void {
  const low = i8x16.splat(0x0f);
  const thirtyTwo = i8x16.splat(32);
  for (let i = 0; i < nb; i++) {
    const b = x + <usize>i * 210;
    const d = getF16(b + 208);
    for (let n = 0; n < 2; n++) {
      const ql = b + 64 * n, qh = b + 128 + 32 * n, sc = b + 192 + 8 * n;
      for (let h = 0; h < 2; h++) {
        const a = v128.load(ql + 16 * h), c = v128.load(ql + 32 + 16 * h), hv = v128.load(qh + 16 * h);
        // q1..q4 of l = 16h..16h+15: values l, l + 32, l + 64, l + 96 of this 128-value half
        const q1 = i8x16.sub(v128.or(v128.and(a, low), i8x16.shl(bits2(hv, 0), 4)), thirtyTwo);
        const q2 = i8x16.sub(v128.or(v128.and(c, low), i8x16.shl(bits2(hv, 2), 4)), thirtyTwo);
        const q3 = i8x16.sub(v128.or(i8x16.shr_u(a, 4), i8x16.shl(bits2(hv, 4), 4)), thirtyTwo);
        const q4 = i8x16.sub(v128.or(i8x16.shr_u(c, 4), i8x16.shl(bits2(hv, 6), 4)), thirtyTwo);
        const yo = y + 64 * h;
        // y = d·sc·q: (d·sc) first, as the C evaluates d * sc[is] * q
        store16(yo, q1, d * <f32>load<i8>(sc + h), 0);
        store16(yo + 128, q2, d * <f32>load<i8>(sc + h + 2), 0);
        store16(yo + 256, q3, d * <f32>load<i8>(sc + h + 4), 0);
        store16(yo + 384, q4, d * <f32>load<i8>(sc + h + 6), 0);
      }
      y += 512;
    }
  }
}

// ------------------------------------------------------------ entry points (called by quants.ts)

/** quantize for the K types; −1 for any other type. */
export function quantizeK(dst: usize, src: usize, n: i32, type: i32, tmp: usize): i32 {
  const nb = n >> 8;
  if (type == GGML_Q4_K) quantizeQ45K(dst, src, nb, tmp, false);
  else if (type == GGML_Q6_K) quantizeQ6K(dst, src, nb, tmp);
  else if (type == GGML_Q5_K) quantizeQ45K(dst, src, nb, tmp, true);
  else if (type == GGML_Q3_K) quantizeQ3K(dst, src, nb, tmp);
  else if (type == GGML_Q2_K) quantizeQ2K(dst, src, nb, tmp);
  else return -1;
  return 0;
}

/** dequantize for the K types; −1 for any other type. */
export function dequantizeK(dst: usize, src: usize, n: i32, type: i32): i32 {
  const nb = n >> 8;
  if (type == GGML_Q4_K) dequantizeQ45K(dst, src, nb, false);
  else if (type == GGML_Q6_K) dequantizeQ6K(dst, src, nb);
  else if (type == GGML_Q5_K) dequantizeQ45K(dst, src, nb, true);
  else if (type == GGML_Q3_K) dequantizeQ3K(dst, src, nb);
  else if (type == GGML_Q2_K) dequantizeQ2K(dst, src, nb);
  else return -1;
  return 0;
}
