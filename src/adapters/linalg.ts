/**
 * Small dense linear algebra in float64, for the adapter algebra's cores.
 *
 * Everything large (products with a whole W or ΔW) runs as f32 GEMMs in wasm;
 * what lands here is tall-skinny (n × k with k ≤ a few hundred) or k × k:
 * Householder QR of stacked factors or sketches, and a one-sided Jacobi SVD of
 * the small core. Matrices are column-major here (`Cols`): column j is
 * data[j·rows … j·rows + rows), so a Householder reflection or a Jacobi
 * rotation walks contiguous memory.
 * see: Golub & Van Loan, Matrix Computations, 4th ed., §5.2 (Householder QR), §8.6.3 (one-sided Jacobi).
 */

/** A column-major f64 matrix. */
export interface Cols {
  rows: number;
  cols: number;
  data: Float64Array;
}

export const cols = (rows: number, ncols: number): Cols => ({ rows, cols: ncols, data: new Float64Array(rows * ncols) });

/** Column-major copy of a row-major [rows, cols] array, each element times `scale`. */
export function fromRowMajor(x: ArrayLike<number>, rows: number, ncols: number, scale = 1): Cols {
  const m = cols(rows, ncols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < ncols; j++) m.data[j * rows + i] = x[i * ncols + j]! * scale;
  return m;
}

/** Row-major f32 copy of m. */
export function toRowMajor(m: Cols): Float32Array {
  const out = new Float32Array(m.rows * m.cols);
  for (let i = 0; i < m.rows; i++) for (let j = 0; j < m.cols; j++) out[i * m.cols + j] = m.data[j * m.rows + i]!;
  return out;
}

/** a·b (column-major, f64). */
export function mul(a: Cols, b: Cols): Cols {
  const c = cols(a.rows, b.cols);
  for (let j = 0; j < b.cols; j++) {
    const cj = c.data.subarray(j * a.rows, (j + 1) * a.rows);
    for (let p = 0; p < a.cols; p++) {
      const bpj = b.data[j * b.rows + p]!;
      if (bpj === 0) continue;
      const ap = a.data.subarray(p * a.rows, (p + 1) * a.rows);
      for (let i = 0; i < a.rows; i++) cj[i]! += ap[i]! * bpj;
    }
  }
  return c;
}

/** aᵀ. */
export function transposed(a: Cols): Cols {
  const t = cols(a.cols, a.rows);
  for (let j = 0; j < a.cols; j++) for (let i = 0; i < a.rows; i++) t.data[i * a.cols + j] = a.data[j * a.rows + i]!;
  return t;
}

/**
 * Thin QR by Householder reflections: a [m, n] = q [m, k] · r [k, n], k = min(m, n), q with
 * orthonormal columns, r upper triangular (upper trapezoidal when n > m).
 */
export function qr(a: Cols): { q: Cols; r: Cols } {
  const { rows: m, cols: n } = a;
  const k = Math.min(m, n);
  const w = new Float64Array(a.data); // overwritten by R above the diagonal and the reflectors below
  const vs: Float64Array[] = [];
  const betas = new Float64Array(k);
  for (let j = 0; j < k; j++) {
    const col = w.subarray(j * m, (j + 1) * m);
    let norm = 0;
    for (let i = j; i < m; i++) norm += col[i]! * col[i]!;
    norm = Math.sqrt(norm);
    const v = new Float64Array(m - j);
    if (norm === 0) {
      vs.push(v);
      betas[j] = 0;
      continue;
    }
    const alpha = col[j]! >= 0 ? -norm : norm; // x − alpha·e1 without cancellation
    for (let i = j; i < m; i++) v[i - j] = col[i]!;
    v[0]! -= alpha;
    let vv = 0;
    for (let i = 0; i < v.length; i++) vv += v[i]! * v[i]!;
    const beta = vv === 0 ? 0 : 2 / vv;
    vs.push(v);
    betas[j] = beta;
    // apply H = I − beta·v·vᵀ to columns j..n−1
    for (let c = j; c < n; c++) {
      const cc = w.subarray(c * m, (c + 1) * m);
      let dot = 0;
      for (let i = 0; i < v.length; i++) dot += v[i]! * cc[j + i]!;
      const f = beta * dot;
      if (f !== 0) for (let i = 0; i < v.length; i++) cc[j + i]! -= f * v[i]!;
    }
  }
  const r = cols(k, n);
  for (let c = 0; c < n; c++) for (let i = 0; i <= Math.min(c, k - 1); i++) r.data[c * k + i] = w[c * m + i]!;
  // Q = H0·H1·…·H(k−1) applied to the first k columns of I, accumulated backwards
  const q = cols(m, k);
  for (let j = 0; j < k; j++) q.data[j * m + j] = 1;
  for (let j = k - 1; j >= 0; j--) {
    const v = vs[j]!;
    const beta = betas[j]!;
    if (beta === 0) continue;
    for (let c = j; c < k; c++) {
      const qc = q.data.subarray(c * m, (c + 1) * m);
      let dot = 0;
      for (let i = 0; i < v.length; i++) dot += v[i]! * qc[j + i]!;
      const f = beta * dot;
      if (f !== 0) for (let i = 0; i < v.length; i++) qc[j + i]! -= f * v[i]!;
    }
  }
  return { q, r };
}

/**
 * SVD a [m, n] = u · diag(s) · vᵀ, thin (k = min(m, n)), singular values descending, by one-sided
 * Jacobi rotations on the columns (on aᵀ when m < n). Accurate to f64 rounding on small matrices.
 */
export function svd(a: Cols): { u: Cols; s: Float64Array; v: Cols } {
  if (a.rows < a.cols) {
    const t = svd(transposed(a));
    return { u: t.v, s: t.s, v: t.u };
  }
  const { rows: m, cols: n } = a;
  const u = { rows: m, cols: n, data: new Float64Array(a.data) };
  const v = cols(n, n);
  for (let j = 0; j < n; j++) v.data[j * n + j] = 1;
  const eps = 1e-15;
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      const up = u.data.subarray(p * m, (p + 1) * m);
      for (let q = p + 1; q < n; q++) {
        const uq = u.data.subarray(q * m, (q + 1) * m);
        let alpha = 0;
        let beta = 0;
        let gamma = 0;
        for (let i = 0; i < m; i++) {
          alpha += up[i]! * up[i]!;
          beta += uq[i]! * uq[i]!;
          gamma += up[i]! * uq[i]!;
        }
        if (gamma === 0 || Math.abs(gamma) <= eps * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        // the rotation that zeroes the (p, q) entry of uᵀu
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < m; i++) {
          const x = up[i]!;
          const y = uq[i]!;
          up[i] = c * x - s * y;
          uq[i] = s * x + c * y;
        }
        const vp = v.data.subarray(p * n, (p + 1) * n);
        const vq = v.data.subarray(q * n, (q + 1) * n);
        for (let i = 0; i < n; i++) {
          const x = vp[i]!;
          const y = vq[i]!;
          vp[i] = c * x - s * y;
          vq[i] = s * x + c * y;
        }
      }
    }
    if (!rotated) break;
  }
  const s = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    let norm = 0;
    for (let i = 0; i < m; i++) norm += u.data[j * m + i]! ** 2;
    s[j] = Math.sqrt(norm);
  }
  const order = Array.from({ length: n }, (_, j) => j).sort((x, y) => s[y]! - s[x]!);
  const uo = cols(m, n);
  const vo = cols(n, n);
  const so = new Float64Array(n);
  order.forEach((j, k) => {
    so[k] = s[j]!;
    const inv = s[j]! > 0 ? 1 / s[j]! : 0;
    for (let i = 0; i < m; i++) uo.data[k * m + i] = u.data[j * m + i]! * inv;
    vo.data.set(v.data.subarray(j * n, (j + 1) * n), k * n);
  });
  // a zero singular value leaves a zero column in u: complete it to an orthonormal set
  completeOrthonormal(uo, so);
  return { u: uo, s: so, v: vo };
}

/** Replaces the columns of u whose singular value is 0 by unit vectors orthogonal to the others. */
function completeOrthonormal(u: Cols, s: Float64Array): void {
  for (let j = 0; j < u.cols; j++) {
    if (s[j]! > 0) continue;
    unitOrthogonalColumn(u.data, u.rows, u.cols, j, (c) => !(s[c] === 0 && c > j));
  }
}

/**
 * Column j of a column-major [m, n] array becomes a unit vector orthogonal to the columns c ≠ j for
 * which `against(c)` holds (orthonormal themselves): the first unit vector e_t, t = (e·7919 + j) mod m,
 * that keeps a quarter of its length after two Gram–Schmidt passes.
 */
export function unitOrthogonalColumn(data: Float64Array, m: number, n: number, j: number, against: (c: number) => boolean = () => true): void {
  const v = data.subarray(j * m, (j + 1) * m);
  for (let e = 0; e < m; e++) {
    v.fill(0);
    v[(e * 7919 + j) % m] = 1;
    for (let pass = 0; pass < 2; pass++) {
      for (let c = 0; c < n; c++) {
        if (c === j || !against(c)) continue;
        const uc = data.subarray(c * m, (c + 1) * m);
        let dot = 0;
        for (let i = 0; i < m; i++) dot += uc[i]! * v[i]!;
        for (let i = 0; i < m; i++) v[i]! -= dot * uc[i]!;
      }
    }
    let norm = 0;
    for (let i = 0; i < m; i++) norm += v[i]! * v[i]!;
    if (norm > 0.25) {
      const inv = 1 / Math.sqrt(norm);
      for (let i = 0; i < m; i++) v[i]! *= inv;
      return;
    }
  }
}

/**
 * torch.quantile's default (linear interpolation) of the values in `x` at q ∈ [0, 1]:
 * position q·(n − 1) in sorted order, interpolated between its neighbours.
 */
export function quantile(x: Float64Array, q: number): number {
  const sorted = Float64Array.from(x).sort();
  const pos = q * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(sorted.length - 1, lo + 1);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}
