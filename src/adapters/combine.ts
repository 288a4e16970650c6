/**
 * Combining adapters into one: lw.combineAdapters([{ adapter, weight }], { method, … }).
 *
 * Definitions follow PEFT's add_weighted_adapter (tuners/lora/model.py) and utils/merge_utils.py, per
 * module, with sᵢ each adapter's scale and wᵢ its weight; the result has scale 1 (alpha = r):
 *   cat              A = [w₁s₁A₁ | w₂s₂A₂ | …], B = [B₁; B₂; …]: exact, rank Σrᵢ
 *   linear           A = Σ √|wᵢsᵢ|·Aᵢ, B = Σ sign(wᵢsᵢ)·√|wᵢsᵢ|·Bᵢ (equal ranks): the sign
 *                    goes on PEFT's lora_A, which is our B. NOT Σ wᵢsᵢAᵢBᵢ: the cross terms
 *                    Aᵢ·Bⱼ stay in, as in PEFT.
 *   svd              Σ wᵢsᵢAᵢBᵢ truncated to rank k, from the stacked factors (rsvd.ts factoredSvd)
 *   ties, dare_linear, dare_ties, magnitude_prune
 *                    PEFT's *_svd types: per-element decisions on each ΔWᵢ = sᵢAᵢBᵢ, then a rank-k
 *                    truncation of the result by a randomized SVD. The result is only ever formed
 *                    a row block at a time (PRUNE_BLOCK_FLOATS per operand), never whole.
 *     magnitude      keep the ⌊density·numel⌋ largest |ΔWᵢ| (ties at the threshold: the first in
 *                    row-major order), zero the rest
 *     dare           keep each element with probability density, divided by density (the mask is a
 *                    hash of (seed, adapter, element index), so every pass sees the same mask)
 *     ties merge     majority sign per element from Σ pruned ΔWᵢ ('total', PEFT's default) or Σ sign
 *                    ('frequency'); Σ wᵢ·pruned ΔWᵢ over the adapters that agree, divided by their count
 *   clamp (svd-type) PEFT's svd_clamp: U·S and Vᵀ clamped to ± the clamp-quantile of their entries.
 *
 * PEFT itself multiplies the scale in twice for the *_svd types (weight·scaling times
 * get_delta_weight, which is already scaled); pass weights wᵢ·sᵢ to reproduce it.
 */
import { LoRANonFiniteError, LoRARangeError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { type Adapter, type AdapterModule, refuseDora } from './adapter.js';
import { describe, describeBlock, describeRows } from '../kernel/descriptor.js';
import { Epilogue } from '../kernel/kernels.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { createMatrix } from '../ops/create.js';
import { f32Option, intOption, numberOption, oneOf, readOptions, seedOption } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { type Cols, fromRowMajor, cols as newCols, toRowMajor } from './linalg.js';
import { checkAdapterOwner, clampTruncation, moduleFrom, newAdapter, rejectNonFiniteAdapter, rejectNonFiniteResult } from './result.js';
import { type LinearOperator, type Truncation, factoredSvd, randomizedSvd } from './rsvd.js';

export type CombineMethod = 'cat' | 'linear' | 'svd' | 'ties' | 'dare_linear' | 'dare_ties' | 'magnitude_prune';
const METHODS: readonly CombineMethod[] = ['cat', 'linear', 'svd', 'ties', 'dare_linear', 'dare_ties', 'magnitude_prune'];
const PRUNED: readonly CombineMethod[] = ['ties', 'dare_linear', 'dare_ties', 'magnitude_prune'];
/** The methods each option applies to; given to any other method it is refused (LoRATypeError). */
const APPLIES = {
  rank: ['svd', ...PRUNED],
  clamp: ['svd', ...PRUNED],
  density: PRUNED,
  seed: PRUNED,
  majoritySign: ['ties', 'dare_ties'],
} as const satisfies Record<string, readonly CombineMethod[]>;

export interface WeightedAdapter {
  adapter: Adapter;
  weight: number;
}

export interface CombineOptions {
  method: CombineMethod;
  /** Rank of the result for svd and the pruned methods, an integer ≥ 1. Default: the largest input rank of the module. */
  rank?: number;
  /** Fraction kept by ties, dare_* and magnitude_prune, in (0, 1]; required by them. */
  density?: number;
  /** The pruned methods: DARE's mask seed and the randomized SVD's, an integer in [0, 2³² − 1]. Default 0. */
  seed?: number;
  /** PEFT's svd_clamp quantile in (0, 1), for the svd-type methods. */
  clamp?: number;
  /** ties and dare_ties: 'total' (default) or 'frequency'. */
  majoritySign?: 'total' | 'frequency';
}

/** Floats per row block when a pruned combination forms ΔW (4 MiB per operand). */
export const PRUNE_BLOCK_FLOATS = 2 ** 20;

interface Part {
  module: AdapterModule;
  weight: number;
}

export function combineAdapters(engine: Engine, items: unknown, optsIn: unknown): Adapter {
  const fn = 'combineAdapters';
  if (!Array.isArray(items) || items.length === 0) {
    throw new LoRATypeError(`${fn}: the first argument must be a non-empty array of { adapter, weight }, got ${describeValue(items)}`);
  }
  const list = items.map((it, i) => {
    if (typeof it !== 'object' || it === null) throw new LoRATypeError(`${fn}: item ${i} must be { adapter, weight }, got ${describeValue(it)}`);
    const { adapter, weight } = it as WeightedAdapter;
    checkAdapterOwner(engine, fn, adapter, `item ${i}'s adapter`);
    refuseDora(fn, adapter, 'combining adapters would drop its magnitudes');
    if (weight === undefined) throw new LoRATypeError(`${fn}: item ${i} needs a weight (a finite number)`);
    f32Option(fn, `item ${i}'s weight`, weight, 1);
    return { adapter, weight };
  });
  const read = readOptions(fn, optsIn, {
    method: oneOf(METHODS),
    rank: intOption({ min: 1 }),
    density: numberOption({ min: 0, minOpen: true, max: 1, what: 'a fraction' }),
    seed: seedOption(),
    clamp: numberOption({ min: 0, minOpen: true, max: 1, maxOpen: true, what: 'a quantile' }),
    majoritySign: oneOf(['total', 'frequency']),
  }, "{ method: 'svd', rank: 16 }");
  if (read.method === undefined) throw new LoRATypeError(`${fn}: options.method is required: one of ${METHODS.join(', ')}`);
  const o: CombineOptions = { ...read, method: read.method };
  for (const [key, methods] of Object.entries(APPLIES) as [keyof typeof APPLIES, readonly CombineMethod[]][]) {
    if (o[key] !== undefined && !methods.includes(o.method)) throw new LoRATypeError(`${fn}: options.${key} applies to ${methods.join(', ')}, not '${o.method}'`);
  }
  if (PRUNED.includes(o.method) && o.density === undefined) throw new LoRATypeError(`${fn}: method '${o.method}' needs options.density, a fraction in (0, 1]`);

  // the same modules, the same shapes, in every adapter
  const first = list[0]!.adapter;
  const names = first.modules.map((m) => m.name);
  list.forEach(({ adapter }, i) => {
    const have = new Set(adapter.modules.map((m) => m.name));
    const missing = names.filter((n) => !have.has(n));
    const extra = [...have].filter((n) => !names.includes(n));
    if (missing.length || extra.length) {
      throw new LoRAShapeError(
        `${fn}: mismatched module sets: adapter ${i} ${missing.length ? `lacks ${missing.slice(0, 3).join(', ')}` : ''}${missing.length && extra.length ? ' and ' : ''}${extra.length ? `has ${extra.slice(0, 3).join(', ')} that adapter 0 lacks` : ''}`,
      );
    }
  });
  const groups: Part[][] = names.map((name) => list.map(({ adapter, weight }) => ({ module: adapter.modules.find((m) => m.name === name)!, weight })));
  for (const parts of groups) {
    const m0 = parts[0]!.module;
    for (const [i, { module: m }] of parts.entries()) {
      if (m.A.rows !== m0.A.rows || m.B.cols !== m0.B.cols || m.kind !== m0.kind || m.fanInFanOut !== m0.fanInFanOut) {
        throw new LoRAShapeError(`${fn}: module ${m.name}: adapter ${i}'s ΔW is ${m.kind} [${m.A.rows}, ${m.B.cols}] but adapter 0's is ${m0.kind} [${m0.A.rows}, ${m0.B.cols}]`);
      }
      if (o.method === 'linear' && m.r !== m0.r) throw new LoRAShapeError(`${fn}: method 'linear' needs equal ranks; module ${m.name} has r=${m0.r} in adapter 0 and r=${m.r} in adapter ${i} (use 'cat' or 'svd')`);
    }
    const full = Math.min(m0.A.rows, m0.B.cols);
    if (o.rank !== undefined && o.rank > full) throw new LoRARangeError(`${fn}: options.rank ${o.rank} exceeds min(out, in) = ${full} of module ${m0.name} [${m0.A.rows}, ${m0.B.cols}]`);
  }

  // finite inputs only (a kernel scan per factor), before any work
  list.forEach(({ adapter }, i) => rejectNonFiniteAdapter(engine, fn, adapter, `item ${i}`));
  if (PRUNED.includes(o.method)) for (const parts of groups) checkDeltaRange(engine, fn, parts);

  const modules: AdapterModule[] = [];
  const weights = list.map((x) => x.weight).join(', ');
  try {
    for (const parts of groups) {
      const m = combineModule(engine, parts, o);
      modules.push(m);
      rejectNonFiniteResult(engine, fn, m, `the '${o.method}' combination (weights ${weights}) overflows f32`);
    }
  } catch (e) {
    for (const m of modules) for (const x of [m.A, m.B]) x.dispose();
    throw e;
  }
  return newAdapter(modules, first.config);
}

function combineModule(engine: Engine, parts: Part[], o: CombineOptions): AdapterModule {
  const m0 = parts[0]!.module;
  const [rows, cols] = [m0.A.rows, m0.B.cols];
  const make = (r: number, a: Float32Array, b: Float32Array): AdapterModule => {
    const A = createMatrix(engine, rows, r, a) as Matrix<DType>;
    let B: Matrix<DType>;
    try {
      B = createMatrix(engine, r, cols, b) as Matrix<DType>;
    } catch (e) {
      A.dispose();
      throw e;
    }
    return { name: m0.name, kind: m0.kind, r, alpha: r, scale: 1, fanInFanOut: m0.fanInFanOut, A, B };
  };
  const rank = o.rank ?? Math.max(...parts.map((p) => p.module.r));
  const truncated = (t: Truncation): AdapterModule => {
    if (o.clamp !== undefined) clampTruncation(t, o.clamp);
    return moduleFrom(engine, t, m0);
  };
  if (o.method === 'cat' || o.method === 'svd') {
    // L = [w₁s₁A₁ | w₂s₂A₂ | …] [rows, R], Rr = [B₁; B₂; …] [R, cols]
    const R = parts.reduce((s, p) => s + p.module.r, 0);
    const l: Cols = newCols(rows, R);
    const rr: Cols = newCols(R, cols);
    let c0 = 0;
    for (const { module: m, weight } of parts) {
      const ai = fromRowMajor(m.A.toFloat32(), rows, m.r, weight * m.scale);
      l.data.set(ai.data, c0 * rows);
      const bi = m.B.toFloat32();
      for (let k = 0; k < m.r; k++) for (let j = 0; j < cols; j++) rr.data[j * R + c0 + k] = bi[k * cols + j]!;
      c0 += m.r;
    }
    if (o.method === 'cat') return make(R, toRowMajor(l), toRowMajor(rr));
    return truncated(factoredSvd(l, rr, { rank }));
  }
  if (o.method === 'linear') {
    // PEFT's _generalized_task_arithmetic_weighted_adapter: sign·√|ws| weighs lora_A (our B), √|ws|
    // weighs lora_B (our A), and task_arithmetic sums each side over the adapters.
    const r = m0.r;
    const a = new Float32Array(rows * r);
    const b = new Float32Array(r * cols);
    for (const { module: m, weight } of parts) {
      const ws = weight * m.scale;
      const root = Math.sqrt(Math.abs(ws));
      const signed = ws >= 0 ? root : -root;
      const ai = m.A.toFloat32();
      const bi = m.B.toFloat32();
      for (let i = 0; i < ai.length; i++) a[i]! += root * ai[i]!;
      for (let i = 0; i < bi.length; i++) b[i]! += signed * bi[i]!;
    }
    return make(r, a, b);
  }
  const op = new PrunedDelta(engine, parts, o);
  try {
    return truncated(randomizedSvd(engine, op, { rank }, { seed: o.seed ?? 0 }));
  } finally {
    op.dispose();
  }
}

/**
 * The pruned methods form each ΔWᵢ = sᵢ·Aᵢ·Bᵢ in f32: refuse (LoRANonFiniteError) an adapter whose
 * ΔW could overflow f32, by the merge's bound |s|·maxᵢ Σₖ|A[i,k]|·max|B| on every partial sum
 * (O(r·(dOut + dIn)) per adapter; ΔW itself is never scanned).
 */
function checkDeltaRange(engine: Engine, fn: string, parts: Part[]): void {
  parts.forEach(({ module: m }, i) => {
    const bound = Math.abs(m.scale) * engine.kernel.maxRowAbsSum(fn, describe(m.A, 'A')) * engine.kernel.absMax(fn, describe(m.B, 'B'));
    if (!(bound < F32_MAX)) {
      throw new LoRANonFiniteError(`${fn}: item ${i}'s ${m.name}: ΔW = s·A·B may overflow f32 (scale ${m.scale}, A [${m.A.rows}, ${m.r}], B [${m.r}, ${m.B.cols}], bound ${bound.toPrecision(3)}); the pruned methods form ΔW in f32`);
    }
  });
}

/** The largest finite f32. */
const F32_MAX = 3.4028234663852886e38;

/** 32-bit integer hash (murmur3's finaliser). */
const mix32 = (h: number): number => {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
};

/** DARE's keep decision for element `index` of adapter `adapter`: uniform(seed, adapter, index) < density. */
export function dareKeeps(seed: number, adapter: number, index: number, density: number): boolean {
  const stream = mix32((seed >>> 0) ^ Math.imul(adapter + 1, 0x9e3779b9));
  return mix32((index >>> 0) ^ stream ^ mix32(Math.floor(index / 2 ** 32))) / 4294967296 < density;
}

/**
 * The pruned, merged ΔW of ties / dare / magnitude_prune as a LinearOperator, formed one row block
 * at a time in wasm scratch: per adapter ΔWᵢ rows = sᵢ·Aᵢ[rows]·Bᵢ (the rank-r kernel), the
 * per-element rules in JS over the block, then a GEMM of the block.
 */
class PrunedDelta implements LinearOperator {
  readonly rows: number;
  readonly cols: number;
  readonly #engine: Engine;
  readonly #parts: Part[];
  readonly #o: CombineOptions;
  readonly #blockRows: number;
  readonly #deltas: Matrix[];
  readonly #merged: Matrix;
  /** Magnitude pruning: per adapter, the threshold's |x| bits and how many elements equal to it are kept. */
  readonly #thresholds: { bits: number; ties: number }[] = [];

  constructor(engine: Engine, parts: Part[], o: CombineOptions) {
    this.#engine = engine;
    this.#parts = parts;
    this.#o = o;
    this.rows = parts[0]!.module.A.rows;
    this.cols = parts[0]!.module.B.cols;
    this.#blockRows = Math.max(1, Math.min(this.rows, Math.floor(PRUNE_BLOCK_FLOATS / this.cols)));
    const held: Matrix[] = [];
    try {
      for (let i = 0; i < parts.length; i++) held.push(createMatrix(engine, this.#blockRows, this.cols) as Matrix);
      held.push(createMatrix(engine, this.#blockRows, this.cols) as Matrix);
    } catch (e) {
      for (const m of held) m.dispose();
      throw e;
    }
    this.#merged = held.pop()!;
    this.#deltas = held;
    if (o.method === 'ties' || o.method === 'magnitude_prune') this.#findThresholds();
  }

  dispose(): void {
    for (const m of [...this.#deltas, this.#merged]) m.dispose();
  }

  /**
   * ΔWᵢ rows [r0, r1) = sᵢ·Aᵢ[r0:r1]·Bᵢ into the adapter's delta block; returns a view of it. The
   * view is taken after the kernel ran (its scratch may grow memory); take no other view across
   * another kernel call.
   */
  #delta(i: number, r0: number, r1: number): Float32Array {
    const { module: m } = this.#parts[i]!;
    const d = this.#deltas[i]!;
    this.#engine.kernel.rankUpdate('combineAdapters', {
      out: describeBlock(this.#engine.heap, d.block, r1 - r0, this.cols, 'ΔW block'),
      a: describeRows(m.A, r0, r1, 'A'),
      b: describe(m.B, 'B'),
      scaleA: m.scale,
      epilogue: Epilogue.Store,
    });
    return d.data.subarray(0, (r1 - r0) * this.cols);
  }

  /** Exact top-k thresholds of |ΔWᵢ| by a two-pass radix select on the f32 bit patterns of |x|. */
  #findThresholds(): void {
    const total = this.rows * this.cols;
    const k = Math.floor(this.#o.density! * total);
    const u32 = (x: Float32Array): Uint32Array => new Uint32Array(x.buffer, x.byteOffset, x.length);
    for (let i = 0; i < this.#parts.length; i++) {
      if (k === 0) {
        this.#thresholds.push({ bits: 0x7fffffff, ties: 0 });
        continue;
      }
      const hi = new Float64Array(65536);
      for (let r0 = 0; r0 < this.rows; r0 += this.#blockRows) {
        const bits = u32(this.#delta(i, r0, Math.min(this.rows, r0 + this.#blockRows)));
        for (let j = 0; j < bits.length; j++) hi[(bits[j]! & 0x7fffffff) >>> 16]!++;
      }
      let above = 0;
      let top = 65535;
      while (above + hi[top]! < k) above += hi[top--]!;
      const lo = new Float64Array(65536);
      for (let r0 = 0; r0 < this.rows; r0 += this.#blockRows) {
        const bits = u32(this.#delta(i, r0, Math.min(this.rows, r0 + this.#blockRows)));
        for (let j = 0; j < bits.length; j++) {
          const b = bits[j]! & 0x7fffffff;
          if (b >>> 16 === top) lo[b & 0xffff]!++;
        }
      }
      let low = 65535;
      while (above + lo[low]! < k) above += lo[low--]!;
      this.#thresholds.push({ bits: (top << 16) | low, ties: k - above });
    }
  }

  /** The merged, pruned rows [r0, r1) into the merged block. */
  #block(r0: number, r1: number, tiesSeen: number[]): Matrix {
    const o = this.#o;
    const n = this.#parts.length;
    const len = (r1 - r0) * this.cols;
    this.#parts.forEach((_, i) => this.#delta(i, r0, r1));
    const ds = this.#deltas.map((d) => d.data.subarray(0, len)); // views after every kernel call
    const out = this.#merged.data;
    const ties = o.method === 'ties' || o.method === 'dare_ties';
    const magnitude = o.method === 'ties' || o.method === 'magnitude_prune';
    const density = o.density!;
    const seed = o.seed ?? 0;
    const base = r0 * this.cols;
    const p = new Float64Array(n);
    const bitsOf = new Uint32Array(1);
    const f32 = new Float32Array(bitsOf.buffer);
    for (let e = 0; e < len; e++) {
      for (let i = 0; i < n; i++) {
        let x = ds[i]![e]!;
        if (magnitude) {
          f32[0] = x;
          const b = bitsOf[0]! & 0x7fffffff;
          const t = this.#thresholds[i]!;
          if (b < t.bits || (b === t.bits && tiesSeen[i]!++ >= t.ties)) x = 0;
        } else {
          x = dareKeeps(seed, i, base + e, density) ? x / density : 0;
        }
        p[i] = x;
      }
      let v = 0;
      if (ties) {
        let s = 0;
        for (let i = 0; i < n; i++) s += o.majoritySign === 'frequency' ? Math.sign(p[i]!) : p[i]!;
        const major = s >= 0 ? 1 : -1;
        let count = 0;
        for (let i = 0; i < n; i++) {
          if (Math.sign(p[i]!) === major) {
            v += this.#parts[i]!.weight * p[i]!;
            count++;
          }
        }
        v /= Math.max(1, count);
      } else {
        for (let i = 0; i < n; i++) v += this.#parts[i]!.weight * p[i]!;
      }
      out[e] = v;
    }
    return this.#merged;
  }

  #blocks(body: (r0: number, r1: number, block: Matrix) => void): void {
    const tiesSeen = this.#parts.map(() => 0);
    for (let r0 = 0; r0 < this.rows; r0 += this.#blockRows) {
      const r1 = Math.min(this.rows, r0 + this.#blockRows);
      body(r0, r1, this.#block(r0, r1, tiesSeen));
    }
  }

  apply(x: Matrix, out: Matrix): void {
    this.#blocks((r0, r1, b) => {
      this.#engine.kernel.gemm('combineAdapters', describeRows(out, r0, r1, 'Y'), describeRows(b, 0, r1 - r0, 'ΔW block'), describe(x, 'Ω'));
    });
  }

  applyT(y: Matrix, out: Matrix): void {
    this.#blocks((r0, r1, b) => {
      this.#engine.kernel.gemm('combineAdapters', describe(out, 'Z'), describeRows(b, 0, r1 - r0, 'ΔW block'), describeRows(y, r0, r1, 'Q'), { transX: true, beta: r0 === 0 ? 0 : 1 });
    });
  }

  frobenius2(): number {
    let s = 0;
    this.#blocks((r0, r1, b) => {
      const d = b.data;
      for (let e = 0; e < (r1 - r0) * this.cols; e++) s += d[e]! * d[e]!;
    });
    return s;
  }
}
