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
 *   B = Qᵀ·M, B·Bᵀ = Ub·S²·Ubᵀ  ⇒  M ≈ (Q·Ub)·S·(Bᵀ·Ub·S⁻¹)ᵀ.
 * The orthonormalisations are f64 Gram–Schmidt (twice) of the thin sketches; B's SVD comes from
 * the l × l eigenproblem of B·Bᵀ in f64 (B is f32 data, so squaring costs nothing it had).
 */
import { LoRARangeError } from '../errors.js';
import { type Matrix, newMatrix } from '../memory/matrix.js';
import { fillRandom } from '../random.js';
import type { Engine } from '../runtime/engine.js';
import { type Cols, mul, qr, svd, transposed, unitOrthogonalColumn } from './linalg.js';

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
  if ('rank' in choice && choice.rank > full) throw new LoRARangeError(`rank ${choice.rank} exceeds min(rows, cols) = ${full}`);
  const total = op.frobenius2();
  // the sketch width: k + oversampling, rounded up to whole 8-column strips of the GEMM tile (the
  // extra columns cost no more tile work, and sharpen the sketch)
  const strips = (w: number): number => Math.min(full, Math.ceil(w / 8) * 8);
  let l = 'rank' in choice ? strips(choice.rank + p) : strips(32);
  for (;;) {
    const t = sketch(engine, op, l, q, o.seed ?? 0);
    const enough = 'rank' in choice || l >= full || rankFor(t.s, total, choice) <= l - Math.min(p, l >> 2);
    if (enough) {
      const { u, v } = t.factors(Math.max(1, rankFor(t.s, total, choice)));
      return truncate(u, t.s, v, total, choice);
    }
    l = strips(l * 2);
  }
}

/**
 * Orthonormal columns of a column-major f64 [m, l], in place: the kernel's Gram–Schmidt twice
 * (assembly/orthonormalize.ts); a column that vanished (a rank-deficient sketch) becomes a unit
 * vector orthogonal to the others.
 */
function orthonormalizeColumns(engine: Engine, c: Float64Array, m: number, l: number): void {
  if (engine.kernel.orthonormalize('randomizedSvd', c, m, l) === 0) return;
  for (let j = 0; j < l; j++) {
    if (c.subarray(j * m, (j + 1) * m).every((x) => x === 0)) unitOrthogonalColumn(c, m, l, j);
  }
}

interface Sketch {
  /** The singular values found, descending. */
  s: Float64Array;
  /** The first k left and right singular vectors (column-major [m, k] and [n, k]). */
  factors(k: number): { u: Cols; v: Cols };
}

/** One randomized SVD with sketch width l; the singular vectors are formed only for the k kept. */
function sketch(engine: Engine, op: LinearOperator, l: number, powerIters: number, seed: number): Sketch {
  const { rows: m, cols: n } = op;
  const omega = new Float32Array(n * l);
  fillRandom(omega, seed, 'normal', 1);
  const held: Matrix[] = [];
  const mat = (rows: number, c: number, data?: Float32Array): Matrix => {
    const x = newMatrix(engine.heap, 'randomizedSvd sketch', rows, c);
    held.push(x);
    if (data) x.data.set(data); // our own finite values: no scan
    return x;
  };
  /** An orthonormal basis of x's columns: f64 column-major, and uploaded as a row-major f32 Matrix. */
  const orth = (x: Matrix): { m: Matrix; q: Float64Array } => {
    const rows = x.rows;
    const xr = x.toFloat32();
    const q = new Float64Array(rows * l);
    for (let i = 0, row = 0; i < rows; i++, row += l) for (let p = 0; p < l; p++) q[p * rows + i] = xr[row + p]!;
    orthonormalizeColumns(engine, q, rows, l);
    for (let i = 0, row = 0; i < rows; i++, row += l) for (let p = 0; p < l; p++) xr[row + p] = q[p * rows + i]!;
    return { m: mat(rows, l, xr), q };
  };
  try {
    const y = mat(m, l);
    op.apply(mat(n, l, omega), y);
    let Q = orth(y);
    const z = mat(n, l);
    for (let i = 0; i < powerIters; i++) {
      op.applyT(Q.m, z);
      const Qz = orth(z);
      op.apply(Qz.m, y);
      Q = orth(y);
    }
    op.applyT(Q.m, z); // Bᵀ = Mᵀ·Q [n, l]
    const bt = z.toFloat32();
    // B·Bᵀ = U_b·S²·U_bᵀ (l × l, f64, Jacobi): B = U_b·S·Vᵀ with V = Bᵀ·U_b·S⁻¹
    const g = new Float64Array(l * l);
    for (let i = 0, row = 0; i < n; i++, row += l) {
      for (let p = 0; p < l; p++) {
        const bp = bt[row + p]!;
        if (bp !== 0) for (let q = p; q < l; q++) g[p * l + q]! += bp * bt[row + q]!;
      }
    }
    for (let p = 0; p < l; p++) for (let q = 0; q < p; q++) g[p * l + q] = g[q * l + p]!;
    const e = svd({ rows: l, cols: l, data: g }); // symmetric positive semi-definite: s are the eigenvalues
    const sigma = Float64Array.from(e.s, (x) => Math.sqrt(Math.max(0, x)));
    const q = Q.q;
    const factors = (k: number): { u: Cols; v: Cols } => {
      const u: Cols = { rows: m, cols: k, data: new Float64Array(m * k) };
      const v: Cols = { rows: n, cols: k, data: new Float64Array(n * k) };
      // u = Q·U_b, v = Bᵀ·U_b·S⁻¹ (a column with σ = 0 stays zero: it carries no weight)
      for (let c = 0; c < k; c++) {
        const ub = e.u.data.subarray(c * l, (c + 1) * l);
        const inv = sigma[c]! > 0 ? 1 / sigma[c]! : 0;
        const uc = u.data.subarray(c * m, (c + 1) * m);
        for (let p = 0; p < l; p++) {
          const w = ub[p]!;
          const qp = q.subarray(p * m, (p + 1) * m);
          for (let i = 0; i < m; i++) uc[i]! += qp[i]! * w;
        }
        for (let i = 0, row = 0; i < n; i++, row += l) {
          let acc = 0;
          for (let p = 0; p < l; p++) acc += bt[row + p]! * ub[p]!;
          v.data[c * n + i] = acc * inv;
        }
      }
      return { u, v };
    };
    return { s: sigma, factors };
  } finally {
    for (const x of held) x.dispose();
  }
}
