/**
 * Truncated SVDs for the adapter algebra.
 *
 * factoredSvd: ΔW = L·R given as factors (L [m, R], R [R, n], R small). Never forms ΔW:
 *   L = Qa·Ra, Rᵀ = Qb·Rb (Householder, f64)  ⇒  ΔW = Qa·(Ra·Rbᵀ)·Qbᵀ
 *   Ra·Rbᵀ = Uc·S·Vcᵀ (Jacobi, R × R)          ⇒  ΔW = (Qa·Uc)·S·(Qb·Vc)ᵀ, exact to f64 rounding.
 *
 * randomizedSvd: M [m, n] known only through products M·X and Mᵀ·Y (LinearOperator), which run as
 * f32 GEMMs in wasm (Halko, Martinsson & Tropp 2011, Algorithms 4.4 and 5.1):
 *   Y = M·Ω (Ω Gaussian [n, l], l = k + oversampling); q power iterations Q = orth(M·orth(Mᵀ·Q));
 *   Bᵀ = Mᵀ·Q = Qt·Rt;  Rtᵀ = Ur·S·Vrᵀ  ⇒  M ≈ (Q·Ur)·S·(Qt·Vr)ᵀ.
 * The orthonormalisations are f64 Householder QR of the thin sketches.
 */
import { LoRARangeError } from '../errors.js';
import type { Matrix } from '../memory/matrix.js';
import { createMatrix } from '../ops/create.js';
import { fillRandom } from '../random.js';
import type { Engine } from '../runtime/engine.js';
import { type Cols, fromRowMajor, mul, qr, svd, toRowMajor, transposed } from './linalg.js';

export interface Truncation {
  /** Left factor with the singular values folded in: U·diag(S), [m, k]. */
  us: Cols;
  /** Right factor Vᵀ, as V [n, k]. */
  v: Cols;
  /** All singular values found (descending); the first k were kept. */
  singularValues: Float64Array;
  rank: number;
  /** Σ_{i<k} S_i² / ‖M‖²_F. */
  energy: number;
}

/** How to pick the rank: a fixed k, or the smallest k keeping this fraction of ‖M‖²_F. */
export type RankChoice = { rank: number } | { energy: number };

/** The smallest k whose S_0² + … + S_{k−1}² reaches `energy`·total (at least 1), and that sum. */
function rankFor(s: Float64Array, total: number, choice: RankChoice): number {
  if ('rank' in choice) return Math.min(choice.rank, s.length);
  let acc = 0;
  for (let k = 0; k < s.length; k++) {
    acc += s[k]! * s[k]!;
    if (acc >= choice.energy * total * (1 - 1e-12)) return k + 1;
  }
  return s.length;
}

function truncate(u: Cols, s: Float64Array, v: Cols, total: number, choice: RankChoice): Truncation {
  const k = Math.max(1, rankFor(s, total, choice));
  const us: Cols = { rows: u.rows, cols: k, data: new Float64Array(u.rows * k) };
  for (let j = 0; j < k; j++) for (let i = 0; i < u.rows; i++) us.data[j * u.rows + i] = u.data[j * u.rows + i]! * s[j]!;
  const vk: Cols = { rows: v.rows, cols: k, data: v.data.slice(0, v.rows * k) };
  let kept = 0;
  for (let j = 0; j < k; j++) kept += s[j]! * s[j]!;
  return { us, v: vk, singularValues: s, rank: k, energy: total > 0 ? Math.min(1, kept / total) : 1 };
}

/** Truncated SVD of L·R from its factors (L [m, R] and R [R, n], column-major f64). */
export function factoredSvd(l: Cols, r: Cols, choice: RankChoice): Truncation {
  const a = qr(l);
  const b = qr(transposed(r));
  const core = mul(a.r, transposed(b.r));
  const c = svd(core);
  let total = 0;
  for (const x of c.s) total += x * x; // ‖L·R‖²_F = ‖core‖²_F (Qa, Qb orthonormal)
  return truncate(mul(a.q, c.u), c.s, mul(b.q, c.v), total, choice);
}

/** M [rows, cols], available through f32 products in wasm. */
export interface LinearOperator {
  readonly rows: number;
  readonly cols: number;
  /** out [rows, l] = M·x, x [cols, l]. */
  apply(x: Matrix, out: Matrix): void;
  /** out [cols, l] = Mᵀ·y, y [rows, l]. */
  applyT(y: Matrix, out: Matrix): void;
  /** ‖M‖²_F. */
  frobenius2(): number;
}

export interface RandomizedOptions {
  oversample?: number;
  powerIters?: number;
  seed?: number;
}

/** Truncated SVD of an operator by a randomized range finder; `energy` grows the sketch until it is reached. */
export function randomizedSvd(engine: Engine, op: LinearOperator, choice: RankChoice, o: RandomizedOptions = {}): Truncation {
  const { rows: m, cols: n } = op;
  const full = Math.min(m, n);
  const p = o.oversample ?? 10;
  const q = o.powerIters ?? 2;
  const total = op.frobenius2();
  let l = 'rank' in choice ? Math.min(full, choice.rank + p) : Math.min(full, 32);
  for (;;) {
    const t = sketch(engine, op, l, q, o.seed ?? 0);
    const enough = 'rank' in choice || l >= full || rankFor(t.s, total, choice) <= l - Math.min(p, l >> 2);
    if (enough) {
      if ('rank' in choice && choice.rank > full) throw new LoRARangeError(`rank ${choice.rank} exceeds min(rows, cols) = ${full}`);
      return truncate(t.u, t.s, t.v, total, choice);
    }
    l = Math.min(full, l * 2);
  }
}

/** One randomized SVD with sketch width l: u [m, l], s, v [n, l]. */
function sketch(engine: Engine, op: LinearOperator, l: number, powerIters: number, seed: number): { u: Cols; s: Float64Array; v: Cols } {
  const { rows: m, cols: n } = op;
  const omega = new Float32Array(n * l);
  fillRandom(omega, seed, 'normal', 1);
  const held: Matrix[] = [];
  const mat = (rows: number, c: number, data?: Float32Array): Matrix => {
    const x = createMatrix(engine, rows, c, data) as Matrix;
    held.push(x);
    return x;
  };
  const orth = (x: Matrix): { m: Matrix; q: Cols } => {
    const qq = qr(fromRowMajor(x.toFloat32(), x.rows, x.cols)).q;
    return { m: mat(x.rows, qq.cols, toRowMajor(qq)), q: qq };
  };
  try {
    const y = mat(m, l);
    op.apply(mat(n, l, omega), y);
    let Q = orth(y);
    const z = mat(n, Q.q.cols);
    for (let i = 0; i < powerIters; i++) {
      op.applyT(Q.m, z);
      const Qz = orth(z);
      const y2 = mat(m, Qz.q.cols);
      op.apply(Qz.m, y2);
      Q = orth(y2);
    }
    const bt = mat(n, Q.q.cols);
    op.applyT(Q.m, bt); // Bᵀ = Mᵀ·Q
    const { q: qt, r: rt } = qr(fromRowMajor(bt.toFloat32(), n, Q.q.cols));
    const c = svd(transposed(rt)); // B = Rtᵀ·Qtᵀ
    return { u: mul(Q.q, c.u), s: c.s, v: mul(qt, c.v) };
  } finally {
    for (const x of held) x.dispose();
  }
}
