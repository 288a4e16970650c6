/**
 * Serving many adapters over one base layer in one batch (Punica, S-LoRA, LoRAX; PEFT's mixed-adapter
 * batches): lw.adapterSet(W, adapters).forward(X, rowAdapter) computes, for every row i of X,
 *
 *   y_i = x_i·Wᵀ [+ bias] + s_a·(x_i·B_aᵀ)·A_aᵀ     a = rowAdapter[i]; a = −1: the bare base row
 *
 * with ONE GEMM for the base over the whole batch, then the low-rank work per adapter:
 *   SGMV (segments, prefill-sized): the rows of one adapter, when there are at least SGMV_MIN_ROWS of
 *     them, go as one block: H = X_a·B_aᵀ, Y_a += s·H·A_aᵀ, two small GEMMs (rows that are not
 *     contiguous are gathered into scratch and the result added back);
 *   BGMV (gather per row, decode-sized): a lone row runs two matrix-vector products straight on its
 *     row of X and of Y, reading A_a and B_a in place.
 * Ranks and scales may differ per adapter. The factors are the caller's (kept alive by them; a
 * half-precision factor is copied to f32 once, here); W is used in place and never changed.
 */
import { LoRADisposedError, LoRARangeError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { type MatrixDesc, describe, describeBlock, describeRows } from '../kernel/descriptor.js';
import { type DType, Matrix } from '../memory/matrix.js';
import { convert } from '../ops/convert.js';
import { createMatrix } from '../ops/create.js';
import { type MatrixInput, operand, optionsObject, withStaging } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';

/** Rows of one adapter at or above which they are run as one segment (SGMV) rather than row by row (BGMV). */
export const SGMV_MIN_ROWS = 4;

/** One adapter to serve: ΔW = scale·A·B with A [dOut, r], B [r, dIn] (an AdapterModule fits). */
export interface ServedAdapter {
  A: Matrix<DType>;
  B: Matrix<DType>;
  scale: number;
}

export interface AdapterSetOptions {
  /** Base bias [1, dOut], added to every row. */
  bias?: Matrix;
}

export class AdapterSet {
  readonly dIn: number;
  readonly dOut: number;
  /** Adapters served, in the order rowAdapter indexes them. */
  readonly size: number;
  readonly #engine: Engine;
  readonly #W: Matrix;
  readonly #bias: Matrix | undefined;
  readonly #adapters: { A: Matrix; B: Matrix; scale: number; r: number }[];
  /** f32 copies this set made of half-precision factors (freed by dispose). */
  readonly #owned: Matrix[] = [];
  /** Scratch, grown on demand: gathered X rows, H, and the segment's low-rank output. */
  #scratch: { x?: Matrix; h?: Matrix; y?: Matrix } = {};
  #disposed = false;

  /** @internal use lw.adapterSet */
  constructor(engine: Engine, w: unknown, adapters: unknown, optsIn?: unknown) {
    const fn = 'adapterSet';
    this.#engine = engine;
    if (!(w instanceof Matrix)) throw new LoRATypeError(`${fn}: the base weight W must be an f32 Matrix [dOut, dIn], got ${describeValue(w)}`);
    operand(engine.heap, fn, 'W', w); // instance, liveness, f32
    this.#W = w as Matrix;
    [this.dOut, this.dIn] = [w.rows, w.cols];
    const o = optionsObject<AdapterSetOptions>(fn, optsIn, '{ bias }');
    if (o.bias !== undefined) {
      if (!(o.bias instanceof Matrix)) throw new LoRATypeError(`${fn}: options.bias must be an f32 Matrix [1, ${this.dOut}], got ${describeValue(o.bias)}`);
      operand(engine.heap, fn, 'bias', o.bias);
      if (o.bias.rows !== 1 || o.bias.cols !== this.dOut) throw new LoRAShapeError(`${fn}: options.bias is [${o.bias.rows}, ${o.bias.cols}] but W [${this.dOut}, ${this.dIn}] needs [1, ${this.dOut}]`);
      this.#bias = o.bias;
    }
    if (!Array.isArray(adapters)) throw new LoRATypeError(`${fn}: adapters must be an array of { A, B, scale } (an Adapter's modules fit), got ${describeValue(adapters)}`);
    const checked = adapters.map((a, i) => {
      if (typeof a !== 'object' || a === null) throw new LoRATypeError(`${fn}: adapters[${i}] must be { A, B, scale }, got ${describeValue(a)}`);
      const { A, B, scale } = a as ServedAdapter;
      for (const [name, m] of [['A', A], ['B', B]] as const) {
        if (!(m instanceof Matrix)) throw new LoRATypeError(`${fn}: adapters[${i}].${name} must be a Matrix, got ${describeValue(m)}`);
        operand(engine.heap, fn, `adapters[${i}].${name}`, m, ['f32', 'f16', 'bf16']);
      }
      if (A.rows !== this.dOut || B.cols !== this.dIn || A.cols !== B.rows) {
        throw new LoRAShapeError(`${fn}: adapters[${i}] has A [${A.rows}, ${A.cols}] and B [${B.rows}, ${B.cols}]; W [${this.dOut}, ${this.dIn}] needs A [${this.dOut}, r] and B [r, ${this.dIn}]`);
      }
      if (typeof scale !== 'number' || !Number.isFinite(scale) || Math.abs(scale) > 3.4028234663852886e38) {
        throw new LoRARangeError(`${fn}: adapters[${i}].scale must be a finite number in f32 range, got ${describeValue(scale)}`);
      }
      return { A, B, scale };
    });
    // half factors: one f32 copy each, made after every check passed
    try {
      this.#adapters = checked.map(({ A, B, scale }) => ({ A: this.#f32(A), B: this.#f32(B), scale, r: A.cols }));
    } catch (e) {
      for (const m of this.#owned) m.dispose();
      throw e;
    }
    this.size = checked.length;
  }

  #f32(m: Matrix<DType>): Matrix {
    if (m.dtype === 'f32') return m as Matrix;
    const c = createMatrix(this.#engine, m.rows, m.cols) as Matrix;
    this.#owned.push(c);
    convert(this.#engine, c, m);
    return c;
  }

  /**
   * Y [n, dOut] for X [n, dIn], row i through adapter rowAdapter[i] (−1: the base alone). Returns a
   * new Matrix, or writes `out` ([n, dOut]) and returns it.
   */
  forward(x: MatrixInput, rowAdapter: ArrayLike<number>, out?: Matrix): Matrix {
    const fn = 'adapterSet.forward';
    const e = this.#engine;
    if (this.#disposed) throw new LoRADisposedError(`${fn}: this adapter set was disposed`);
    for (const [name, m] of [['W', this.#W], ['bias', this.#bias], ...this.#adapters.flatMap((a, i) => [[`adapters[${i}].A`, a.A], [`adapters[${i}].B`, a.B]])] as const) {
      if (m && !e.heap.isLive((m as Matrix).block)) throw new LoRADisposedError(`${fn}: ${name} was disposed; the set cannot run without it`);
    }
    const xs = operand(e.heap, fn, 'X', x);
    if (xs.cols !== this.dIn) throw new LoRAShapeError(`${fn}: X is [${xs.rows}, ${xs.cols}] but W [${this.dOut}, ${this.dIn}] takes ${this.dIn} features`);
    const n = xs.rows;
    if (typeof rowAdapter !== 'object' || rowAdapter === null || typeof rowAdapter.length !== 'number') {
      throw new LoRATypeError(`${fn}: rowAdapter must be an array of adapter indexes (−1 for the base), got ${describeValue(rowAdapter)}`);
    }
    if (rowAdapter.length !== n) throw new LoRAShapeError(`${fn}: rowAdapter has ${rowAdapter.length} entries but X has ${n} rows`);
    const rows: number[][] = this.#adapters.map(() => []);
    for (let i = 0; i < n; i++) {
      const a = rowAdapter[i];
      if (!Number.isInteger(a) || a! < -1 || a! >= this.size) {
        throw new LoRARangeError(`${fn}: rowAdapter[${i}] is ${describeValue(a)}; it must be −1 (the base) or an adapter index in [0, ${this.size})`);
      }
      if (a! >= 0) rows[a!]!.push(i);
    }
    if (out !== undefined) {
      if (!(out instanceof Matrix)) throw new LoRATypeError(`${fn}: out must be a Matrix [${n}, ${this.dOut}], got ${describeValue(out)}`);
      operand(e.heap, fn, 'out', out);
      if (out.rows !== n || out.cols !== this.dOut) throw new LoRAShapeError(`${fn}: out is [${out.rows}, ${out.cols}] but needs [${n}, ${this.dOut}]`);
    }
    return withStaging(e.heap, fn, (staging) => {
      const X = staging.input(xs);
      const Y = out ?? staging.result(createMatrix(e, n, this.dOut) as Matrix);
      const Yd = describe(Y, 'Y');
      // the base, once for the whole batch
      if (this.#bias) e.kernel.broadcastRows(fn, Yd, describe(this.#bias, 'bias'));
      e.kernel.gemm(fn, Yd, X, describe(this.#W, 'W'), { transY: true, beta: this.#bias ? 1 : 0 });
      const xRows = (r0: number, r1: number) => ({ ...X, offset: X.offset + r0 * this.dIn * 4, rows: r1 - r0, name: 'X' });
      for (let a = 0; a < this.size; a++) {
        const idx = rows[a]!;
        if (idx.length === 0) continue;
        const { A, B, scale, r } = this.#adapters[a]!;
        if (idx.length >= SGMV_MIN_ROWS) {
          const len = idx.length;
          const contiguous = idx[len - 1]! - idx[0]! === len - 1;
          const H = this.#buffer('h', len, r, 'H');
          if (contiguous) {
            e.kernel.gemm(fn, H, xRows(idx[0]!, idx[0]! + len), describe(B, 'B'), { transY: true }); // H = X_a·Bᵀ
            e.kernel.gemm(fn, describeRows(Y, idx[0]!, idx[0]! + len, 'Y'), H, describe(A, 'A'), { transY: true, alpha: scale, beta: 1 }); // Y_a += s·H·Aᵀ
            continue;
          }
          const G = this.#buffer('x', len, this.dIn, 'X (gathered)');
          idx.forEach((i, j) => e.heap.copyBytes(G.block.ptr + j * this.dIn * 4, X.block.ptr + X.offset + i * this.dIn * 4, this.dIn * 4));
          e.kernel.gemm(fn, H, G, describe(B, 'B'), { transY: true });
          const D = this.#buffer('y', len, this.dOut, 'ΔY');
          e.kernel.gemm(fn, D, H, describe(A, 'A'), { transY: true, alpha: scale });
          const yv = Y.data as Float32Array; // views after the last kernel call
          const dv = e.heap.f32At(D.block.ptr, len * this.dOut);
          idx.forEach((i, j) => {
            const yo = i * this.dOut;
            const d0 = j * this.dOut;
            for (let k = 0; k < this.dOut; k++) yv[yo + k]! += dv[d0 + k]!;
          });
          continue;
        }
        const H = this.#buffer('h', 1, r, 'h');
        for (const i of idx) {
          e.kernel.gemm(fn, H, xRows(i, i + 1), describe(B, 'B'), { transY: true }); // h = x_i·Bᵀ
          e.kernel.gemm(fn, describeRows(Y, i, i + 1, 'y'), H, describe(A, 'A'), { transY: true, alpha: scale, beta: 1 }); // y_i += s·h·Aᵀ
        }
      }
      return Y;
    });
  }

  /** A descriptor of [rows, cols] over a scratch block kept for reuse (grown when too small). */
  #buffer(key: 'x' | 'h' | 'y', rows: number, cols: number, name: string): MatrixDesc {
    let m = this.#scratch[key];
    if (!m || m.rows * m.cols < rows * cols || !this.#engine.heap.isLive(m.block)) {
      m?.dispose();
      m = createMatrix(this.#engine, rows, cols) as Matrix;
      this.#scratch[key] = m;
    }
    return describeBlock(this.#engine.heap, m.block, rows, cols, name);
  }

  /** Frees the scratch and the f32 copies of half factors; W and the adapters stay the caller's. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const m of [...Object.values(this.#scratch), ...this.#owned]) m?.dispose();
    this.#scratch = {};
  }
}
