/**
 * Adapters from weights, and smaller adapters from larger ones:
 *
 *   lw.extractAdapter(Wtuned, Wbase, { rank | energy })   kohya's extract_lora_from_models, mergekit's
 *     extract_lora: ΔW = Wtuned − Wbase ≈ U_k·S_k·V_kᵀ by a randomized SVD (rsvd.ts) whose products are
 *     the GEMM; A = U_k·S_k, B = V_kᵀ, scale 1. ΔW is formed once in f32 (the only dOut×dIn temporary).
 *   lw.resizeAdapter(adapter, { rank | energy })          kohya's resize_lora: s·A·B truncated per
 *     module from its factors (QR of A and Bᵀ, SVD of the r×r core), never forming ΔW.
 *
 * Both report, per module, the singular values found and the fraction of ‖ΔW‖²_F kept.
 */
import { LoRARangeError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { Adapter, type AdapterModule, refuseDora } from './adapter.js';
import { describe } from '../kernel/descriptor.js';
import { type DType, Matrix, newMatrix } from '../memory/matrix.js';
import { checkMatrix, intOption, numberOption, readOptions, rejectNonFinite, seedOption, stringOption } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { checkAdapterOwner, moduleFrom, newAdapter, rejectNonFiniteAdapter, rejectNonFiniteResult } from './result.js';
import { fromRowMajor } from './linalg.js';
import { type LinearOperator, type RankChoice, factoredSvd, randomizedSvd } from './rsvd.js';

export interface TruncateOptions {
  /** Keep this many singular values (at most min(out, in))… */
  rank?: number;
  /** …or the fewest that keep this fraction of ‖ΔW‖²_F, in (0, 1]. */
  energy?: number;
}

export interface ExtractOptions extends TruncateOptions {
  /** Module name for a single pair of matrices. Default 'weight'. */
  name?: string;
  /** Randomized SVD: extra sketch columns (default 10), power iterations (default 2), seed (an integer in [0, 2³² − 1], default 0). */
  oversample?: number;
  powerIters?: number;
  seed?: number;
}

export interface ModuleReport {
  name: string;
  rank: number;
  /** The singular values found, descending (all of them for resize; the sketch's for extract). */
  singularValues: Float64Array;
  /** Fraction of ‖ΔW‖²_F the kept rank holds. */
  energy: number;
}

export interface TruncateResult {
  adapter: Adapter;
  modules: ModuleReport[];
}

/** The fields of { rank | energy }, shared by extract and resize. */
const TRUNCATE = {
  rank: intOption({ min: 1 }),
  energy: numberOption({ min: 0, minOpen: true, max: 1, what: 'a fraction' }),
};

function rankChoice(fn: string, o: TruncateOptions): RankChoice {
  if ((o.rank === undefined) === (o.energy === undefined)) {
    throw new LoRATypeError(`${fn}: give exactly one of options.rank (a positive integer) and options.energy (a fraction in (0, 1])`);
  }
  return o.rank !== undefined ? { rank: o.rank } : { energy: o.energy! };
}

const FN = 'extractAdapter';

/** ΔW = tuned − base, formed once in f32, as a LinearOperator over the GEMM. */
class Difference implements LinearOperator {
  readonly rows: number;
  readonly cols: number;
  readonly d: Matrix<DType>;
  readonly #engine: Engine;

  readonly #norm2: number;

  constructor(engine: Engine, name: string, tuned: Matrix<DType>, base: Matrix<DType>) {
    this.#engine = engine;
    this.rows = tuned.rows;
    this.cols = tuned.cols;
    this.d = newMatrix(engine.heap, 'extractAdapter ΔW', this.rows, this.cols) as Matrix<DType>; // every element is written: no zero fill
    try {
      // one fused pass (assembly/difference.ts): ΔW = f32(tuned) − f32(base) and ‖ΔW‖²_F
      this.#norm2 = engine.kernel.difference(FN, describe(this.d, 'ΔW'), describe(tuned, 'Wtuned'), describe(base, 'Wbase'));
      // ‖ΔW‖² is NaN/Inf exactly when ΔW holds a NaN/±Inf: then name the input that has one, or the overflow
      if (!Number.isFinite(this.#norm2)) {
        const what = 'extractAdapter takes finite weights only';
        rejectNonFinite(engine, FN, describe(tuned, `${name}: Wtuned`), what);
        rejectNonFinite(engine, FN, describe(base, `${name}: Wbase`), what);
        rejectNonFinite(engine, FN, describe(this.d, `${name}: ΔW = Wtuned − Wbase`), 'the difference of these finite weights overflows f32');
      }
    } catch (e) {
      this.d.dispose();
      throw e;
    }
  }

  apply(x: Matrix, out: Matrix): void {
    this.#engine.kernel.gemm('extractAdapter', describe(out, 'Y'), describe(this.d, 'ΔW'), describe(x, 'Ω'));
  }

  applyT(y: Matrix, out: Matrix): void {
    this.#engine.kernel.gemm('extractAdapter', describe(out, 'Z'), describe(this.d, 'ΔW'), describe(y, 'Q'), { transX: true });
  }

  frobenius2(): number {
    return this.#norm2;
  }
}

function checkWeight(engine: Engine, fn: string, x: unknown, name: string): Matrix<DType> {
  if (!(x instanceof Matrix)) throw new LoRATypeError(`${fn}: ${name} must be a Matrix (f32, f16 or bf16), got ${describeValue(x)}`);
  checkMatrix(engine.heap, fn, name, x as Matrix<DType>);
  return x as Matrix<DType>;
}

export function extractAdapter(engine: Engine, tuned: unknown, base: unknown, optsIn: unknown): TruncateResult {
  const fn = 'extractAdapter';
  const o = readOptions(fn, optsIn, {
    ...TRUNCATE,
    name: stringOption(),
    oversample: intOption({ min: 0 }),
    powerIters: intOption({ min: 0 }),
    seed: seedOption(),
  }, '{ rank: 16 } or { energy: 0.9 }');
  const choice = rankChoice(fn, o);
  // pairs of (name, tuned, base): one pair of matrices, or two maps of them keyed alike
  let pairs: [string, Matrix<DType>, Matrix<DType>][];
  if (tuned instanceof Matrix || base instanceof Matrix) {
    pairs = [[o.name ?? 'weight', checkWeight(engine, fn, tuned, 'Wtuned'), checkWeight(engine, fn, base, 'Wbase')]];
  } else {
    if (typeof tuned !== 'object' || tuned === null || typeof base !== 'object' || base === null) {
      throw new LoRATypeError(`${fn}: give two matrices, or two objects of matrices keyed by tensor name (e.g. lw.loadTensors(…).tensors), got ${describeValue(tuned)} and ${describeValue(base)}`);
    }
    const t = tuned as Record<string, unknown>;
    const b = base as Record<string, unknown>;
    const names = Object.keys(t).filter((k) => k in b);
    if (names.length === 0) throw new LoRAShapeError(`${fn}: the tuned and base tensors share no name`);
    pairs = names.map((k) => [k.replace(/\.weight$/, ''), checkWeight(engine, fn, t[k], `Wtuned['${k}']`), checkWeight(engine, fn, b[k], `Wbase['${k}']`)]);
  }
  for (const [name, t, b] of pairs) {
    if (t.rows !== b.rows || t.cols !== b.cols) throw new LoRAShapeError(`${fn}: ${name}: Wtuned is [${t.rows}, ${t.cols}] but Wbase is [${b.rows}, ${b.cols}]`);
    const full = Math.min(t.rows, t.cols);
    if ('rank' in choice && choice.rank > full) throw new LoRARangeError(`${fn}: options.rank ${choice.rank} exceeds min(out, in) = ${full} of ${name} [${t.rows}, ${t.cols}]`);
  }
  const modules: AdapterModule[] = [];
  const reports: ModuleReport[] = [];
  try {
    for (const [name, t, b] of pairs) {
      const op = new Difference(engine, name, t, b);
      try {
        const tr = randomizedSvd(engine, op, choice, { oversample: o.oversample, powerIters: o.powerIters, seed: o.seed });
        const m = moduleFrom(engine, tr, { name, kind: 'linear', fanInFanOut: false });
        modules.push(m);
        rejectNonFiniteResult(engine, fn, m, 'the truncated factors overflow f32');
        reports.push({ name, rank: tr.rank, singularValues: tr.singularValues, energy: tr.energy });
      } finally {
        op.d.dispose();
      }
    }
  } catch (e) {
    for (const m of modules) for (const x of [m.A, m.B]) x.dispose();
    throw e;
  }
  return { adapter: newAdapter(modules), modules: reports };
}

export function resizeAdapter(engine: Engine, adapter: unknown, optsIn: unknown): TruncateResult {
  const fn = 'resizeAdapter';
  const a = checkAdapterOwner(engine, fn, adapter, 'adapter');
  refuseDora(fn, a, 'resizing it would drop its magnitude (the norms depend on the full-rank update)');
  const choice = rankChoice(fn, readOptions(fn, optsIn, TRUNCATE, '{ rank: 8 } or { energy: 0.95 }'));
  rejectNonFiniteAdapter(engine, fn, a, 'adapter');
  const modules: AdapterModule[] = [];
  const reports: ModuleReport[] = [];
  try {
    for (const m of a.modules) {
      // the factors as stored; a rank above the module's keeps it whole
      const want: RankChoice = 'rank' in choice ? { rank: Math.min(choice.rank, m.r) } : choice;
      const tr = factoredSvd(fromRowMajor(m.A.toFloat32(), m.A.rows, m.r, m.scale), fromRowMajor(m.B.toFloat32(), m.r, m.B.cols), want);
      const out = moduleFrom(engine, tr, m);
      modules.push(out);
      rejectNonFiniteResult(engine, fn, out, `the truncated factors overflow f32 (scale ${m.scale})`);
      reports.push({ name: m.name, rank: tr.rank, singularValues: tr.singularValues, energy: tr.energy });
    }
  } catch (e) {
    for (const m of modules) for (const x of [m.A, m.B]) x.dispose();
    throw e;
  }
  return { adapter: a.format === 'peft' ? newAdapter(modules, a.config) : new Adapter(a.format, modules, [], a.config as Record<string, unknown>), modules: reports };
}
