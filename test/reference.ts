/**
 * The one float64 reference and the one tolerance, for tests, bench and examples alike.
 *
 *   gemmElement  one element of alpha·op(X)·op(Y) + beta·C0 in float64, with its magnitude
 *                mag = |beta·C0| + |alpha|·Σ_q |op(X)[i,q]·op(Y)[q,j]|  (what rounding errors scale with)
 *   gemm64       the whole matrix of it
 *   rankReference  W0 + s·A·B              (gemm64 with beta = 1)
 *   loraReference  X·Wᵀ + s·(X·Bᵀ)·Aᵀ + bias   (three gemm64 calls)
 *
 * The tolerance is the standard bound for an f32 sum of k products, γ_k ≈ k·u, plus `extra`
 * roundings the kernel makes around it (scaling, the epilogue's add, a second pass):
 *   |got − value| ≤ (k + extra)·u·mag,  u = 2⁻²⁴.
 * It is rigorous, not tuned: a kernel that is wrong by a single O(1) term exceeds it.
 */
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
