/**
 * The one float64 reference and the one tolerance, for tests, bench and examples alike.
 *
 *   gemmElement  one element of alpha·op(X)·op(Y) + beta·C0 in float64, with its magnitude
 *                mag = |beta·C0| + |alpha|·Σ_q |op(X)[i,q]·op(Y)[q,j]|  (what rounding errors scale with)
 *   gemm64       the whole matrix of it
 *   rankReference  W0 + s·A·B              (gemm64 with beta = 1)
 *   loraReference  X·Wᵀ + s·(X·Bᵀ)·Aᵀ + bias   (three gemm64 calls)
 *   f16Bits, bf16Bits, roundTo   rounding to half precision: the f16 polyfill (@petamoriken/float16),
 *                and for bf16 an exact nearest-pattern search (ties to even)
 *
 * The tolerance is the standard bound for an f32 sum of k products, γ_k ≈ k·u, plus `extra`
 * roundings the kernel makes around it (scaling, the epilogue's add, a second pass):
 *   |got − value| ≤ (k + extra)·u·mag,  u = 2⁻²⁴.
 * It is rigorous, not tuned: a kernel that is wrong by a single O(1) term exceeds it.
 */
import { getFloat16, setFloat16 } from '@petamoriken/float16';
import * as assert from 'uvu/assert';

export const U = 2 ** -24; // unit roundoff of f32

/** op(M) of a row-major matrix stored [rows, cols]: M itself, or Mᵀ with trans. */
export interface Operand64 {
  readonly data: ArrayLike<number>;
  readonly rows: number;
  readonly cols: number;
  readonly trans?: boolean;
  /** Magnitudes to use instead of |data| (for a reference built on another reference's result). */
  readonly mag?: ArrayLike<number>;
}

export interface GemmReferenceOptions {
  alpha?: number;
  beta?: number;
  c0?: ArrayLike<number>;
  c0Mag?: ArrayLike<number>;
}

const at = (m: Operand64, i: number, q: number): number => (m.trans ? m.data[q * m.cols + i]! : m.data[i * m.cols + q]!);
const magAt = (m: Operand64, i: number, q: number): number => {
  const src = m.mag ?? m.data;
  return Math.abs(m.trans ? src[q * m.cols + i]! : src[i * m.cols + q]!);
};
const innerOf = (x: Operand64): number => (x.trans ? x.rows : x.cols);

/** Element [i, j] of alpha·op(X)·op(Y) + beta·C0 (C0 is [n, m], row-major), with its magnitude. */
export function gemmElement(x: Operand64, y: Operand64, i: number, j: number, o: GemmReferenceOptions = {}): { value: number; mag: number } {
  const k = innerOf(x);
  const m = y.trans ? y.rows : y.cols;
  const alpha = o.alpha ?? 1;
  const beta = o.beta ?? 0;
  let acc = 0;
  let abs = 0;
  for (let q = 0; q < k; q++) {
    acc += at(x, i, q) * at(y, q, j);
    abs += magAt(x, i, q) * magAt(y, q, j);
  }
  const c = beta === 0 || !o.c0 ? 0 : beta * o.c0[i * m + j]!;
  const cMag = beta === 0 || !o.c0 ? 0 : Math.abs(beta) * (o.c0Mag ? o.c0Mag[i * m + j]! : Math.abs(o.c0[i * m + j]!));
  return { value: c + alpha * acc, mag: cMag + Math.abs(alpha) * abs };
}

export interface Reference {
  value: Float64Array;
  mag: Float64Array;
}

/** alpha·op(X)·op(Y) + beta·C0 in float64, [n, m]. */
export function gemm64(x: Operand64, y: Operand64, o: GemmReferenceOptions = {}): Reference {
  const n = x.trans ? x.cols : x.rows;
  const m = y.trans ? y.rows : y.cols;
  const value = new Float64Array(n * m);
  const mag = new Float64Array(n * m);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < m; j++) {
      const e = gemmElement(x, y, i, j, o);
      value[i * m + j] = e.value;
      mag[i * m + j] = e.mag;
    }
  }
  return { value, mag };
}

/** out = [W0 +] s·A·B for A: [dOut, r], B: [r, dIn] (W0 undefined: the delta). */
export function rankReference(
  w0: ArrayLike<number> | undefined, a: ArrayLike<number>, b: ArrayLike<number>, dOut: number, r: number, dIn: number, s: number,
): Reference {
  return gemm64({ data: a, rows: dOut, cols: r }, { data: b, rows: r, cols: dIn }, { alpha: s, beta: w0 ? 1 : 0, c0: w0 });
}

/** One element of the rank update, for sampled checks of large results (bench). */
export const rankElement = (
  w0: ArrayLike<number> | undefined, a: ArrayLike<number>, b: ArrayLike<number>, dOut: number, r: number, dIn: number, s: number,
) => (i: number, j: number) => gemmElement({ data: a, rows: dOut, cols: r }, { data: b, rows: r, cols: dIn }, i, j, { alpha: s, beta: w0 ? 1 : 0, c0: w0 });

/** One element of x·wᵀ for x: [n, k], w: [m, k] (nn.Linear without bias). */
export const linearElement = (x: ArrayLike<number>, w: ArrayLike<number>, n: number, m: number, k: number) => (i: number, j: number) =>
  gemmElement({ data: x, rows: n, cols: k }, { data: w, rows: m, cols: k, trans: true }, i, j);

/** One element of the LoRA forward X·Wᵀ + s·(X·Bᵀ)·Aᵀ (no bias), for sampled checks of large results (bench). */
export const loraElement = (
  x: ArrayLike<number>, w: ArrayLike<number>, a: ArrayLike<number>, b: ArrayLike<number>, n: number, dIn: number, dOut: number, r: number, s: number,
) => (i: number, j: number): { value: number; mag: number } => {
  const X = { data: x, rows: n, cols: dIn };
  const base = gemmElement(X, { data: w, rows: dOut, cols: dIn, trans: true }, i, j);
  let value = base.value;
  let mag = base.mag;
  for (let k = 0; k < r; k++) {
    const h = gemmElement(X, { data: b, rows: r, cols: dIn, trans: true }, i, k);
    value += s * h.value * a[j * r + k]!;
    mag += Math.abs(s * a[j * r + k]!) * h.mag;
  }
  return { value, mag };
};

/**
 * The LoRA layer's forward in float64: H = X·Bᵀ, Y = bias + X·Wᵀ + s·H·Aᵀ, for X: [n, dIn],
 * W: [dOut, dIn], A: [dOut, r], B: [r, dIn], bias: [dOut] or none.
 */
export function loraReference(
  x: ArrayLike<number>, w: ArrayLike<number>, a: ArrayLike<number>, b: ArrayLike<number>, bias: ArrayLike<number> | undefined,
  n: number, dIn: number, dOut: number, r: number, s: number,
): Reference {
  const X = { data: x, rows: n, cols: dIn };
  const h = gemm64(X, { data: b, rows: r, cols: dIn, trans: true });
  const c0 = bias ? Float64Array.from({ length: n * dOut }, (_, q) => bias[q % dOut]!) : undefined;
  const base = gemm64(X, { data: w, rows: dOut, cols: dIn, trans: true }, { beta: c0 ? 1 : 0, c0 });
  return gemm64(
    { data: h.value, mag: h.mag, rows: n, cols: r }, { data: a, rows: dOut, cols: r, trans: true },
    { alpha: s, beta: 1, c0: base.value, c0Mag: base.mag },
  );
}

/** The tolerance for one element: (k + extra)·u·mag, plus a floor far below any f32 normal. */
export const bound = (k: number, extra: number, mag: number): number => (k + extra) * U * mag + 2 ** -120;

/**
 * Asserts every element of an f32 result is within bound(k, extra) of the float64 reference.
 * extra counts the roundings beyond the k-term sum: 4 for the rank update (s·A, the add to W0,
 * slack), 6 for the GEMM (alpha, beta·C), 8 for the LoRA forward (two passes over Y).
 */
export function assertWithinBound(got: ArrayLike<number>, ref: Reference, k: number, label: string, extra = 4): void {
  let worst = 0;
  let at = -1;
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs(got[i]! - ref.value[i]!);
    const tol = bound(k, extra, ref.mag[i]!);
    if (!(err <= tol) && (at < 0 || err / tol > worst)) {
      // NaN compares false and is reported too
      worst = err / tol;
      at = i;
    }
  }
  if (at >= 0) {
    assert.unreachable(
      `${label}: element ${at} is ${got[at]} but the float64 reference is ${ref.value[at]} ` +
        `(error ${Math.abs(got[at]! - ref.value[at]!)} > bound ${bound(k, extra, ref.mag[at]!)}, ${worst.toFixed(1)}× over)`,
    );
  }
}

// ---------------------------------------------------------------- half precision

const dv = new DataView(new ArrayBuffer(8));
/** The f16 value of a bit pattern, by the polyfill. */
export const f16Value = (h: number): number => {
  dv.setUint16(0, h, true);
  return getFloat16(dv, 0, true);
};
/** The f16 pattern of a number, rounded to nearest even by the polyfill. */
export const f16Bits = (x: number): number => {
  setFloat16(dv, 0, x, true);
  return dv.getUint16(0, true);
};
export const f32Bits = (x: number): number => {
  dv.setFloat32(0, x, true);
  return dv.getUint32(0, true);
};
export const f32FromBits = (u: number): number => {
  dv.setUint32(0, u >>> 0, true);
  return dv.getFloat32(0, true);
};
/** bf16 of an f32 value by exhaustive nearest search between the two neighbouring patterns, ties to even. */
export const bf16Bits = (x: number): number => {
  if (Number.isNaN(x)) return -1; // checked apart
  const lo = f32Bits(x) >>> 16; // the pattern truncated toward zero
  const hi = (lo + 1) & 0xffff; // the next one away from zero
  const vlo = f32FromBits(lo << 16);
  if (vlo === x) return lo;
  // past the largest finite value the next pattern is ±Inf, which IEEE rounding treats as ±2¹²⁸
  const vhi = (hi & 0x7f80) === 0x7f80 ? Math.sign(x) * 2 ** 128 : f32FromBits(hi << 16);
  const dlo = Math.abs(x - vlo), dhi = Math.abs(vhi - x);
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return lo & 1 ? hi : lo;
};

/** x rounded once to dtype and decoded back (f32: Math.fround). */
export function roundTo(x: number, dtype: 'f32' | 'f16' | 'bf16'): number {
  if (dtype === 'f32') return Math.fround(x);
  if (dtype === 'f16') return f16Value(f16Bits(x));
  return Number.isNaN(x) ? x : f32FromBits(bf16Bits(Math.fround(x)) << 16);
}

/** Half the distance from |x| to the next value of dtype: the most a single rounding to dtype can move x. */
export function halfUlp(x: number, dtype: 'f32' | 'f16' | 'bf16'): number {
  const a = Math.abs(x);
  const [bits, minExp] = dtype === 'f32' ? [24, -126] : dtype === 'f16' ? [11, -14] : [8, -126];
  const e = Math.max(a === 0 ? minExp : Math.floor(Math.log2(a)), minExp);
  return 2 ** (e - bits);
}
