/**
 * Serving many adapters over one base layer in one batch (Punica, S-LoRA, LoRAX; PEFT's mixed-adapter
 * batches): lw.adapterSet(W, adapters).forward(X, rowAdapter) computes, for every row i of X,
 *
 *   y_i = x_i·Wᵀ [+ bias] + s_a·(x_i·B_aᵀ)·A_aᵀ     a = rowAdapter[i]; a = −1: the bare base row
 *
 * in three named steps, every one a guarded kernel-layer call on descriptors:
 *   base     ONE GEMM over the whole batch (after the bias is broadcast into Y);
 *   segment  SGMV (prefill-sized): the rows of one adapter, when there are at least SGMV_MIN_ROWS of
 *            them, go as one block: H = X_a·B_aᵀ, Y_a += s·H·A_aᵀ, two small GEMMs. Rows that are not
 *            adjacent are gathered (row copies) into scratch, X_a and Y_a alike, and Y_a is copied back;
 *   lone     BGMV (decode-sized): a lone row runs two matrix-vector products straight on its rows of
 *            X and of Y.
 * Ranks and scales may differ per adapter.
 *
 * Ownership. The factors are SNAPSHOTTED: every A and B, f32 or half, is copied into the set's own f32
 * storage when the set is made. Later changes to the caller's factors do not show, and the caller may
 * dispose its adapter once the set exists. W and the bias are read in place, live, and never changed.
 */
import { LoRADisposedError, LoRARangeError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { type MatrixDesc, describe, describeBlock } from '../kernel/descriptor.js';
import { ITEM_BYTES } from '../memory/dtype.js';
import { type DType, Matrix, disposeSymbol, newMatrix } from '../memory/matrix.js';
import { type MatrixInput, type Operand, type OptionField, assertDisjoint, operand, readOptions, withStaging } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { Adapter, type AdapterModule } from './adapter.js';

/** Rows of one adapter at or above which they are run as one segment (SGMV) rather than row by row (BGMV). */
export const SGMV_MIN_ROWS = 4;

/** One module's factors: ΔW = scale·A·B with A [dOut, r], B [r, dIn], any dtype (an AdapterModule fits). */
export interface AdapterFactors {
  A: Matrix<DType>;
  B: Matrix<DType>;
  scale: number;
}

/**
 * One adapter to serve: its factors `{ A, B, scale }`, an `Adapter` with exactly one module (as
 * lw.loadAdapter returns it), or `{ adapter, module: 'name' }` for one module of a larger Adapter.
 */
export type ServedAdapter = AdapterFactors | Adapter | { adapter: Adapter; module: string };

export interface AdapterSetOptions {
  /** Base bias [1, dOut], added to every row (read in place). */
  bias?: Matrix;
}

/** The set's own f32 copy of one adapter. */
interface OwnFactors {
  A: Matrix;
  B: Matrix;
  scale: number;
  r: number;
}

/** An option that must be a Matrix (its dtype, liveness and shape are checked where it is used). */
const matrixOption = (what: string): OptionField<Matrix> => ({
  read(fn, name, v) {
    if (!(v instanceof Matrix)) throw new LoRATypeError(`${fn}: ${name} must be ${what}, got ${describeValue(v)}`);
    return v as Matrix;
  },
});

/** The first few module names of an Adapter, for messages. */
function moduleNames(a: Adapter): string {
  const names = a.modules.slice(0, 4).map((m) => m.name);
  return a.modules.length > 4 ? `${names.join(', ')}, … (${a.modules.length} in all)` : names.join(', ');
}

/** Rows [r0, r1) of a descriptor: describeRows for a descriptor (X may be staged, or a view with an offset). */
const rowsOf = (d: MatrixDesc, r0: number, r1: number): MatrixDesc =>
  ({ ...d, offset: d.offset + r0 * d.ld * ITEM_BYTES[d.dtype], rows: r1 - r0 });

/** adapters[i] as factors: an Adapter's only module, a named module, or the factors themselves. */
function factorsOf(fn: string, item: unknown, i: number): AdapterFactors {
  const at = `adapters[${i}]`;
  let m: unknown = item;
  if (item instanceof Adapter) {
    if (item.modules.length !== 1) {
      if (item.modules.length === 0) throw new LoRATypeError(`${fn}: ${at} is an Adapter with no modules; there is nothing to serve`);
      throw new LoRATypeError(
        `${fn}: ${at} is an Adapter with ${item.modules.length} modules (${moduleNames(item)}); a set serves one module per ` +
          `entry: pass { adapter, module: '${item.modules[0]!.name}' }`,
      );
    }
    m = item.modules[0];
  } else if (typeof item === 'object' && item !== null && 'adapter' in item) {
    const { adapter, module } = item as { adapter: unknown; module: unknown };
    if (!(adapter instanceof Adapter)) throw new LoRATypeError(`${fn}: ${at}.adapter must be an Adapter from lw.loadAdapter, got ${describeValue(adapter)}`);
    if (typeof module !== 'string') throw new LoRATypeError(`${fn}: ${at}.module must be a module name (${moduleNames(adapter)}), got ${describeValue(module)}`);
    m = adapter.modules.find((x) => x.name === module);
    if (m === undefined) throw new LoRATypeError(`${fn}: ${at}.module '${module}' is not a module of the adapter; its modules are ${moduleNames(adapter)}`);
  } else if (typeof item !== 'object' || item === null) {
    throw new LoRATypeError(`${fn}: ${at} must be { A, B, scale }, an Adapter or { adapter, module }, got ${describeValue(item)}`);
  }
  // an AdapterModule: only the ones whose ΔW adds to x·Wᵀ as it is
  const mod = m as Partial<AdapterModule>;
  const named = mod.name === undefined ? at : `${at} (module ${mod.name})`;
  if (mod.kind === 'embedding') throw new LoRATypeError(`${fn}: ${named} is an embedding module; adapterSet serves linear layers (y = x·Wᵀ)`);
  if (mod.fanInFanOut) {
    throw new LoRATypeError(`${fn}: ${named} is a fan_in_fan_out module (W stored [in, out], GPT-2's Conv1D); adapterSet serves y = x·Wᵀ with W [out, in]`);
  }
  if (mod.biasDelta) throw new LoRATypeError(`${fn}: ${named} carries a bias delta (PEFT lora_bias), which adapterSet does not serve`);
  if (mod.magnitude) throw new LoRATypeError(`${fn}: ${named} is DoRA (a magnitude vector), whose output is not x·Wᵀ + s·(x·Bᵀ)·Aᵀ; adapterSet serves plain LoRA (merge it, or convert it to a plain LoRA)`);
  return m as AdapterFactors;
}

export class AdapterSet {
  readonly dIn: number;
  readonly dOut: number;
  /** Adapters served, in the order rowAdapter indexes them. */
  readonly size: number;
  readonly #engine: Engine;
  readonly #W: Matrix;
  readonly #bias: Matrix | undefined;
  /** The set's own f32 copies of the factors (freed by dispose). */
  readonly #adapters: OwnFactors[];
  /** What an output must not overlap: W, the bias, and the caller's factors (while they live). */
  readonly #inputs: { op: Operand; m: Matrix<DType> }[];
  /** Scratch, grown on demand: gathered X rows, gathered Y rows, H. */
  #scratch: { x?: Matrix; y?: Matrix; h?: Matrix } = {};
  #disposed = false;

  /** @internal use lw.adapterSet */
  constructor(engine: Engine, w: unknown, adapters: unknown, optsIn?: unknown) {
    const fn = 'adapterSet';
    this.#engine = engine;
    if (!(w instanceof Matrix)) throw new LoRATypeError(`${fn}: the base weight W must be an f32 Matrix [dOut, dIn], got ${describeValue(w)}`);
    const wOp = operand(engine.heap, fn, 'W', w); // instance, liveness, f32
    this.#W = w as Matrix;
    [this.dOut, this.dIn] = [w.rows, w.cols];
    this.#inputs = [{ op: wOp, m: w }];
    const o = readOptions(fn, optsIn, { bias: matrixOption(`an f32 Matrix [1, ${this.dOut}]`) }, '{ bias }');
    if (o.bias !== undefined) {
      this.#inputs.push({ op: operand(engine.heap, fn, 'bias', o.bias), m: o.bias });
      if (o.bias.rows !== 1 || o.bias.cols !== this.dOut) throw new LoRAShapeError(`${fn}: options.bias is [${o.bias.rows}, ${o.bias.cols}] but W [${this.dOut}, ${this.dIn}] needs [1, ${this.dOut}]`);
      this.#bias = o.bias;
    }
    const items = this.#check(fn, adapters);
    this.#adapters = this.#snapshot(fn, items);
    this.size = items.length;
  }

  /** Every entry resolved to factors and checked (dtype, liveness, shapes against W, scale); nothing allocated. */
  #check(fn: string, adapters: unknown): AdapterFactors[] {
    if (!Array.isArray(adapters)) {
      throw new LoRATypeError(`${fn}: adapters must be an array of { A, B, scale }, Adapters or { adapter, module }, got ${describeValue(adapters)}`);
    }
    const heap = this.#engine.heap;
    return adapters.map((item, i) => {
      const { A, B, scale } = factorsOf(fn, item, i);
      for (const [name, m] of [['A', A], ['B', B]] as const) {
        if (!(m instanceof Matrix)) throw new LoRATypeError(`${fn}: adapters[${i}].${name} must be a Matrix, got ${describeValue(m)}`);
        this.#inputs.push({ op: operand(heap, fn, `adapters[${i}].${name}`, m, ['f32', 'f16', 'bf16']), m });
      }
      if (A.rows !== this.dOut || B.cols !== this.dIn || A.cols !== B.rows) {
        throw new LoRAShapeError(`${fn}: adapters[${i}] has A [${A.rows}, ${A.cols}] and B [${B.rows}, ${B.cols}]; W [${this.dOut}, ${this.dIn}] needs A [${this.dOut}, r] and B [r, ${this.dIn}]`);
      }
      if (typeof scale !== 'number') throw new LoRATypeError(`${fn}: adapters[${i}].scale must be a number, got ${describeValue(scale)}`);
      if (!Number.isFinite(scale) || Math.abs(scale) > 3.4028234663852886e38) {
        throw new LoRARangeError(`${fn}: adapters[${i}].scale must be a finite number in f32 range, got ${describeValue(scale)}`);
      }
      return { A, B, scale };
    });
  }

  /** The set's own f32 copy of every factor (all or nothing: a failure frees the copies made). */
  #snapshot(fn: string, items: AdapterFactors[]): OwnFactors[] {
    const { heap, kernel } = this.#engine;
    const made: Matrix[] = [];
    const copy = (m: Matrix<DType>, name: string): Matrix => {
      const c = newMatrix(heap, `${fn} (${name})`, m.rows, m.cols);
      made.push(c);
      kernel.convert(fn, describe(c, name), describe(m, name)); // f32: a copy; f16/bf16: exact decode
      return c;
    };
    try {
      return items.map(({ A, B, scale }, i) => ({ A: copy(A, `adapters[${i}].A`), B: copy(B, `adapters[${i}].B`), scale, r: A.cols }));
    } catch (e) {
      for (const m of made) m.dispose();
      throw e;
    }
  }

  /**
   * Y [n, dOut] for X [n, dIn], row i through adapter rowAdapter[i] (−1: the base alone). Returns a
   * new Matrix, or writes `out` ([n, dOut], a Matrix or a plain { rows, cols, data }) and returns it.
   * `out` must not share memory with X, W, the bias or the caller's factors (LoRATypeError).
   */
  forward(x: MatrixInput, rowAdapter: ArrayLike<number>): Matrix;
  forward<T extends MatrixInput>(x: MatrixInput, rowAdapter: ArrayLike<number>, out: T): T;
  forward(x: MatrixInput, rowAdapter: ArrayLike<number>, out?: MatrixInput): MatrixInput {
    const fn = 'adapterSet.forward';
    const e = this.#engine;
    this.#assertUsable(fn);
    const xs = operand(e.heap, fn, 'X', x);
    if (xs.cols !== this.dIn) throw new LoRAShapeError(`${fn}: X is [${xs.rows}, ${xs.cols}] but W [${this.dOut}, ${this.dIn}] takes ${this.dIn} features`);
    const groups = this.#groupRows(fn, rowAdapter, xs.rows);
    const outOp = out === undefined ? undefined : this.#checkOut(fn, out, xs);
    return withStaging(e.heap, fn, (staging) => {
      const X = staging.input(xs);
      const result = outOp ? undefined : staging.result(newMatrix(e.heap, fn, xs.rows, this.dOut));
      const Y = outOp ? staging.output(outOp, false) : describe(result!, 'Y');
      this.#reserve(groups); // every allocation before the plain inputs are copied in
      staging.load();
      this.#base(fn, Y, X);
      groups.forEach((rows, a) => {
        if (rows.length >= SGMV_MIN_ROWS) this.#segment(fn, Y, X, this.#adapters[a]!, rows);
        else this.#lone(fn, Y, X, this.#adapters[a]!, rows);
      });
      staging.commit();
      return out ?? result!;
    });
  }

  #assertUsable(fn: string): void {
    if (this.#disposed) throw new LoRADisposedError(`${fn}: this adapterSet was disposed`);
    for (const [name, m] of [['W', this.#W], ['bias', this.#bias]] as const) {
      if (m && (m.disposed || !this.#engine.heap.isLive(m.block))) throw new LoRADisposedError(`${fn}: ${name} was disposed; the set cannot run without it`);
    }
  }

  /** The rows of each adapter, in order; −1 rows are the base alone. */
  #groupRows(fn: string, rowAdapter: ArrayLike<number>, n: number): number[][] {
    if (typeof rowAdapter !== 'object' || rowAdapter === null || typeof rowAdapter.length !== 'number') {
      throw new LoRATypeError(`${fn}: rowAdapter must be an array of adapter indexes (−1 for the base), got ${describeValue(rowAdapter)}`);
    }
    if (rowAdapter.length !== n) throw new LoRAShapeError(`${fn}: rowAdapter has ${rowAdapter.length} entries but X has ${n} rows`);
    const groups: number[][] = this.#adapters.map(() => []);
    for (let i = 0; i < n; i++) {
      const a = rowAdapter[i]!;
      if (typeof a !== 'number') throw new LoRATypeError(`${fn}: rowAdapter[${i}] must be a number, got ${describeValue(a)}`);
      if (!Number.isInteger(a) || a < -1 || a >= this.size) {
        throw new LoRARangeError(`${fn}: rowAdapter[${i}] is ${describeValue(a)}; it must be −1 (the base) or an adapter index in [0, ${this.size})`);
      }
      if (a >= 0) groups[a]!.push(i);
    }
    return groups;
  }

  /** out: [n, dOut], sharing no memory with anything the set reads. */
  #checkOut(fn: string, out: unknown, xs: Operand): Operand {
    const o = operand(this.#engine.heap, fn, 'out', out);
    if (o.rows !== xs.rows || o.cols !== this.dOut) throw new LoRAShapeError(`${fn}: out is [${o.rows}, ${o.cols}] but needs [${xs.rows}, ${this.dOut}]`);
    const live = this.#inputs.filter(({ m }) => !m.disposed && this.#engine.heap.isLive(m.block)).map(({ op }) => op);
    assertDisjoint(fn, o, [xs, ...live]);
    return o;
  }

  /** base: Y = [bias +] X·Wᵀ over the whole batch. */
  #base(fn: string, Y: MatrixDesc, X: MatrixDesc): void {
    const k = this.#engine.kernel;
    if (this.#bias) k.broadcastRows(fn, Y, describe(this.#bias, 'bias'));
    k.gemm(fn, Y, X, describe(this.#W, 'W'), { transY: true, beta: this.#bias ? 1 : 0 });
  }

  /** segment (SGMV): Y_a += s·(X_a·Bᵀ)·Aᵀ for the rows of one adapter as one block, gathered when not adjacent. */
  #segment(fn: string, Y: MatrixDesc, X: MatrixDesc, f: OwnFactors, rows: number[]): void {
    const k = this.#engine.kernel;
    const len = rows.length;
    const H = this.#scratchDesc('h', len, f.r, 'H');
    const adjacent = rows[len - 1]! - rows[0]! === len - 1;
    const Xa = adjacent ? rowsOf(X, rows[0]!, rows[0]! + len) : this.#gather(fn, 'x', X, rows);
    const Ya = adjacent ? rowsOf(Y, rows[0]!, rows[0]! + len) : this.#gather(fn, 'y', Y, rows);
    k.gemm(fn, H, Xa, describe(f.B, 'B'), { transY: true }); // H = X_a·Bᵀ
    k.gemm(fn, Ya, H, describe(f.A, 'A'), { transY: true, alpha: f.scale, beta: 1 }); // Y_a += s·H·Aᵀ
    if (!adjacent) rows.forEach((i, j) => k.copy(fn, rowsOf(Y, i, i + 1), rowsOf(Ya, j, j + 1))); // scatter back
  }

  /** lone rows (BGMV): y_i += s·(x_i·Bᵀ)·Aᵀ, two matrix-vector products per row, in place. */
  #lone(fn: string, Y: MatrixDesc, X: MatrixDesc, f: OwnFactors, rows: number[]): void {
    const k = this.#engine.kernel;
    const h = this.#scratchDesc('h', 1, f.r, 'h');
    const [A, B] = [describe(f.A, 'A'), describe(f.B, 'B')];
    for (const i of rows) {
      k.gemm(fn, h, rowsOf(X, i, i + 1), B, { transY: true }); // h = x_i·Bᵀ
      k.gemm(fn, rowsOf(Y, i, i + 1), h, A, { transY: true, alpha: f.scale, beta: 1 }); // y_i += s·h·Aᵀ
    }
  }

  /** Rows `rows` of M copied, in order, into scratch `key`. */
  #gather(fn: string, key: 'x' | 'y', M: MatrixDesc, rows: number[]): MatrixDesc {
    const G = this.#scratchDesc(key, rows.length, M.cols, `${M.name} (gathered)`);
    rows.forEach((i, j) => this.#engine.kernel.copy(fn, rowsOf(G, j, j + 1), rowsOf(M, i, i + 1)));
    return G;
  }

  /** Grows the scratch to what this batch's groups need, before anything is computed. */
  #reserve(groups: number[][]): void {
    let [x, y, h] = [0, 0, 0];
    groups.forEach((rows, a) => {
      const len = rows.length;
      if (len === 0) return;
      const seg = len >= SGMV_MIN_ROWS;
      h = Math.max(h, (seg ? len : 1) * this.#adapters[a]!.r);
      if (seg && rows[len - 1]! - rows[0]! !== len - 1) [x, y] = [Math.max(x, len * this.dIn), Math.max(y, len * this.dOut)];
    });
    for (const [key, elems] of [['x', x], ['y', y], ['h', h]] as const) {
      const m = this.#scratch[key];
      if (elems === 0 || (m && m.rows * m.cols >= elems && !m.disposed)) continue;
      m?.dispose();
      this.#scratch[key] = newMatrix(this.#engine.heap, `adapterSet (scratch ${key})`, 1, elems);
    }
  }

  /** A [rows, cols] descriptor over scratch `key` (reserved by #reserve). */
  #scratchDesc(key: 'x' | 'y' | 'h', rows: number, cols: number, name: string): MatrixDesc {
    return describeBlock(this.#engine.heap, this.#scratch[key]!.block, rows, cols, name);
  }

  /** Frees the set's factor copies and scratch; W, the bias and the caller's adapters stay the caller's. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const m of [...Object.values(this.#scratch), ...this.#adapters.flatMap((a) => [a.A, a.B])]) m?.dispose();
    this.#scratch = {};
  }

  [disposeSymbol](): void {
    this.dispose();
  }
}
