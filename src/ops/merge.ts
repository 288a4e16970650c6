/**
 * delta / merge / unmerge / mergeInto: argument checks, then one rank-r
 * update through the kernel layer (assembly/rank.ts).
 *
 *   A: [dOut, r]   B: [r, dIn]   W, W0, out: [dOut, dIn]   s = scale
 *   delta      Δ = s·A·B                      (allocates the result)
 *   merge      W ← W + s·A·B                  (in place, one pass over W)
 *   unmerge    W ← W − s·A·B                  (in place)
 *   mergeInto  out ← W0 + s·A·B               (W0 untouched; out may be W0)
 *
 * HuggingFace PEFT names the same factors the other way round:
 *   our A = PEFT `lora_B.weight` [out, r],  our B = PEFT `lora_A.weight` [r, in].
 *
 * Where s goes. The kernel multiplies packed (sA·A) by packed (sB·B) with
 * sA·sB = s. Normally sA = s, sB = 1. When |s|·max|A| would overflow f32
 * (s = 1e30, A = 1e10, B = 1e-30: the product is 1e10), a power of two moves
 * from A's side to B's side, exactly; if no split keeps both packed factors
 * finite, the call is refused before anything is written.
 *
 * Overflow inside the sum. P = |s|·max_i Σ_k |A[i,k]|·max|B| bounds every
 * partial sum of s·A·B. Below f32max/2 nothing can overflow on the way; at or
 * above it (adapters with values near 1e38) a check pass runs first and the
 * call is refused if any result would be NaN/±Inf. `safe: true` extends the
 * bound to max|W0| + P, so W is never left non-finite.
 *
 * Half precision. W, W0, out, A and B may each be f32, f16 or bf16. A half A
 * or B is decoded exactly into f32 before packing; a half W0 is decoded in the
 * tile and a half out encoded once (round to nearest, ties to even), so
 *   out = round_out(f32(W0) + Σₖ (sA·Aᵢₖ)·(sB·Bₖⱼ))   in one pass over W, no f32 copy.
 * f16 overflows past 65504: `safe` bounds against the output type's range.
 *
 * Order of work: validate everything, allocate (staging, result), copy plain
 * inputs in, reject non-finite factors, prove the result finite where needed,
 * then write.
 */
import { LoRANonFiniteError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { type MatrixDesc, describe } from '../kernel/descriptor.js';
import { Epilogue } from '../kernel/kernels.js';
import { DTYPES, type DType, type Matrix, newMatrix } from '../memory/matrix.js';
import type { Engine } from '../runtime/engine.js';
import {
  ANY_DTYPE, type AnyMatrixInput, type Operand, withStaging, assertDisjoint, assertSameOrDisjoint, boolOption, f32Option, operand,
  optionsObject, rejectNonFinite, shapeOf,
} from './operands.js';

const F32_MAX = 3.4028234663852886e38;
const SAFE = F32_MAX / 2;
/** Largest finite value of each type: safe merges bound results below half of it. */
const MAX_OF: Record<DType, number> = { f32: F32_MAX, f16: 65504, bf16: 3.3895313892515355e38 };

export interface ScaleOptions {
  /** s in W + s·A·B. Default 1. Use loraScale({ alpha, r }) for PEFT's alpha/r. Applied in f32. */
  scale?: number;
}

export interface DeltaOptions extends ScaleOptions {
  /** The result's element type. Default 'f32'. */
  dtype?: DType;
}

export interface MergeOptions extends ScaleOptions {
  /**
   * Guarantee that W is either fully merged and finite, or left bit-for-bit
   * untouched (the call then throws LoRANonFiniteError). Costs one read pass
   * over W, plus a second compute pass only when values come within 2× of
   * f32's range. A and B are always checked, safe or not.
   */
  safe?: boolean;
}

function readOptions(fn: string, opts: unknown, merge: boolean): { scale: number; safe: boolean; dtype: DType } {
  const o = optionsObject<MergeOptions & DeltaOptions>(fn, opts, merge ? '{ scale, safe }' : '{ scale, dtype }');
  const dtype = o.dtype ?? 'f32';
  if (merge && o.dtype !== undefined) throw new LoRATypeError(`${fn}: options.dtype is for delta; ${fn} writes in its output's own dtype`);
  if (!DTYPES.includes(dtype)) throw new LoRATypeError(`${fn}: options.dtype must be 'f32', 'f16' or 'bf16', got ${describeValue(o.dtype)}`);
  return {
    scale: f32Option(fn, 'options.scale', o.scale, 1),
    safe: merge ? boolOption(fn, 'options.safe', o.safe, false) : false,
    dtype,
  };
}

/** Checks A: [dOut, r] and B: [r, dIn] against each other and against the output's [dOut, dIn]. */
function checkFactors(fn: string, a: Operand, b: Operand, w?: Operand): void {
  if (a.cols !== b.rows) {
    throw new LoRAShapeError(
      `${fn}: A is ${shapeOf(a)} but B is ${shapeOf(b)}; A's columns and B's rows are the rank r and must agree`,
    );
  }
  if (w === undefined) return;
  if (a.rows !== w.rows) {
    throw new LoRAShapeError(`${fn}: A is ${shapeOf(a)} but ${w.name} is ${shapeOf(w)}; A must have ${w.name}'s ${w.rows} rows`);
  }
  if (b.cols !== w.cols) {
    throw new LoRAShapeError(
      `${fn}: B is ${shapeOf(b)} but ${w.name} is ${shapeOf(w)}; B must have ${w.name}'s ${w.cols} columns`,
    );
  }
}

/** The placement of s between the packed factors, and whether partial sums can reach f32's range. */
export interface ScalePlan {
  scaleA: number;
  scaleB: number;
  /** |s|·max_i Σ_k |A[i,k]|·max|B|: bounds every partial sum of s·A·B. */
  bound: number;
}

/**
 * Scans A and B (rejecting NaN/±Inf with the element named) and places s.
 * O(r·(dOut + dIn)); throws LoRANonFiniteError before anything is written.
 */
export function planScale(engine: Engine, fn: string, a: MatrixDesc, b: MatrixDesc, s: number, rejected: string): ScalePlan {
  const k = engine.kernel;
  const maxA = k.absMax(fn, a);
  if (!Number.isFinite(maxA)) rejectNonFinite(engine, fn, a, rejected);
  const maxB = k.absMax(fn, b);
  if (!Number.isFinite(maxB)) rejectNonFinite(engine, fn, b, rejected);
  const bound = Math.abs(s) * k.maxRowAbsSum(fn, a) * maxB;
  if (Math.abs(s) * maxA < SAFE) return { scaleA: s, scaleB: 1, bound };
  // Move 2^e from A's side to B's: both stay exact powers-of-two rescalings.
  const e = Math.max(1, Math.ceil(Math.log2((Math.abs(s) * maxA) / 2 ** 126)));
  const scaleA = Math.fround(s / 2 ** e);
  const scaleB = 2 ** e;
  if (!(Math.abs(scaleA) * maxA < SAFE && scaleB * maxB < SAFE)) {
    throw new LoRANonFiniteError(
      `${fn}: s·A·B cannot be formed in f32 (scale ${s}, max|A| ${maxA}, max|B| ${maxB}); ${rejected}`,
    );
  }
  return { scaleA, scaleB, bound };
}

/**
 * What one public operation asks of the rank-r update (the descriptors below; no flags, and
 * the routine never looks at a name):
 *   target  where the result goes: 'W' in place, 'out' (from W0), or a new 'result' Matrix;
 *   sign    how the user's scale enters (unmerge subtracts);
 *   effect  'write' the result, or 'check' everything a write would check and write nothing.
 */
interface RankOp {
  readonly fn: string;
  readonly target: 'W' | 'out' | 'result';
  readonly sign: 1 | -1;
  readonly effect: 'write' | 'check';
}

const DELTA: RankOp = { fn: 'delta', target: 'result', sign: 1, effect: 'write' };
const MERGE: RankOp = { fn: 'merge', target: 'W', sign: 1, effect: 'write' };
const UNMERGE: RankOp = { fn: 'unmerge', target: 'W', sign: -1, effect: 'write' };
const MERGE_INTO: RankOp = { fn: 'mergeInto', target: 'out', sign: 1, effect: 'write' };
/** checkMerge: a merge that only checks, under its caller's name. */
const checkOnly = (fn: string): RankOp => ({ fn, target: 'W', sign: 1, effect: 'check' });

/** The operands of one call. */
interface RankArgs {
  /** The output (W or out); absent for a 'result' target. */
  out?: unknown;
  /** What s·A·B is added to (W itself for merge). */
  w0?: unknown;
  a: unknown;
  b: unknown;
  /** s, already f32 (the descriptor's sign is applied here). */
  scale: number;
  /** See MergeOptions.safe. */
  safe?: boolean;
  /** The new Matrix's dtype for a 'result' target. */
  dtype?: DType;
}

/**
 * The one routine behind every public operation: out = [w0 +] s·A·B.
 * For a 'result' target the Matrix is allocated once the arguments have passed their checks.
 */
function rankUpdateOp(engine: Engine, op: RankOp, args: RankArgs): Matrix<DType> | undefined {
  const { heap, kernel } = engine;
  const { fn } = op;
  const safe = args.safe ?? false;
  const scale = op.sign * args.scale;
  const a = operand(heap, fn, 'A', args.a, ANY_DTYPE);
  const b = operand(heap, fn, 'B', args.b, ANY_DTYPE);
  const out = op.target === 'result' ? undefined : operand(heap, fn, op.target, args.out, ANY_DTYPE);
  const w0 = args.w0 === undefined ? undefined : args.w0 === args.out ? out : operand(heap, fn, 'W0', args.w0, ANY_DTYPE);
  checkFactors(fn, a, b, out);
  if (out && w0 && w0 !== out) {
    if (w0.rows !== out.rows || w0.cols !== out.cols) {
      throw new LoRAShapeError(`${fn}: W0 is ${shapeOf(w0)} but out is ${shapeOf(out)}; they must have the same shape`);
    }
    assertSameOrDisjoint(fn, out, w0);
  }
  if (out) assertDisjoint(fn, out, [a, b]);

  return withStaging(heap, fn, (staging) => {
    let result: Matrix<DType> | undefined;
    const ad = staging.input(a);
    const bd = staging.input(b);
    const w0d = w0 && w0 !== out ? staging.input(w0) : undefined;
    let outd = out ? staging.output(out, w0 === out) : undefined;
    if (!out) {
      result = staging.result(newMatrix(heap, fn, a.rows, b.cols, false, args.dtype ?? 'f32'));
      outd = describe(result, 'result');
    }
    staging.load();
    const target = outd!;
    const src = w0d ?? target;

    const rejected = out ? `the adapter was rejected and ${out.name} was not modified` : 'the adapter was rejected';
    const plan = planScale(engine, fn, ad, bd, scale, rejected);
    const update = { out: target, src, a: ad, b: bd, scaleA: plan.scaleA, scaleB: plan.scaleB };

    if (out) {
      const srcName = w0 === out ? out.name : 'W0';
      // safe: bound |W0 + s·A·B| below half the output type's range (NaN/Inf in W0 makes this NaN: the check runs)
      const needCheck = !(plan.bound < SAFE) || (safe && !(kernel.absMax(fn, src) + plan.bound < MAX_OF[target.dtype] / 2));
      if (needCheck && kernel.rankUpdate(fn, { ...update, epilogue: Epilogue.Check })) {
        const i = safe ? kernel.firstNonFinite(fn, src) : -1;
        const why =
          i >= 0
            ? `${srcName}[${Math.floor(i / src.cols)}, ${i % src.cols}] is not finite`
            : `${srcName} + s·A·B would overflow ${target.dtype} to ±Infinity${target.dtype === 'f16' ? ' (past 65504)' : ''}`;
        throw new LoRANonFiniteError(
          `${fn}: ${why}; ${safe ? 'with safe: true ' : ''}${out.name} was left untouched`,
        );
      }
      if (op.effect === 'check') return undefined;
      kernel.rankUpdate(fn, { ...update, epilogue: Epilogue.Add });
    } else {
      kernel.rankUpdate(fn, { ...update, epilogue: Epilogue.Store });
      if (!(plan.bound < SAFE)) {
        const i = kernel.firstNonFinite(fn, target);
        if (i >= 0) {
          throw new LoRANonFiniteError(`${fn}: s·A·B overflows f32 at [${Math.floor(i / target.cols)}, ${i % target.cols}]`);
        }
      }
    }
    staging.commit();
    return result;
  });
}

/** Δ = s·A·B as a new Matrix [dOut, dIn] of options.dtype (allocates; dispose it when done). */
export function delta(engine: Engine, a: AnyMatrixInput, b: AnyMatrixInput, opts?: DeltaOptions): Matrix<DType> {
  const { scale, dtype } = readOptions('delta', opts, false);
  return rankUpdateOp(engine, DELTA, { a, b, scale, dtype })!;
}

/** W ← W + s·A·B in place; returns W. */
export function merge<T extends AnyMatrixInput>(engine: Engine, w: T, a: AnyMatrixInput, b: AnyMatrixInput, opts?: MergeOptions): T {
  const { scale, safe } = readOptions('merge', opts, true);
  rankUpdateOp(engine, MERGE, { out: w, w0: w, a, b, scale, safe });
  return w;
}

/** W ← W − s·A·B in place (undoes merge with the same A, B, s); returns W. */
export function unmerge<T extends AnyMatrixInput>(engine: Engine, w: T, a: AnyMatrixInput, b: AnyMatrixInput, opts?: MergeOptions): T {
  const { scale, safe } = readOptions('unmerge', opts, true);
  rankUpdateOp(engine, UNMERGE, { out: w, w0: w, a, b, scale, safe });
  return w;
}

/** out ← W0 + s·A·B, leaving W0 untouched (out may be W0 itself); returns out. */
export function mergeInto<T extends AnyMatrixInput>(
  engine: Engine, out: T, w0: AnyMatrixInput, a: AnyMatrixInput, b: AnyMatrixInput, opts?: MergeOptions,
): T {
  const { scale, safe } = readOptions('mergeInto', opts, true);
  rankUpdateOp(engine, MERGE_INTO, { out, w0, a, b, scale, safe });
  return out;
}

/**
 * Everything merge() would check (shapes, dtypes, NaN/Inf in A and B, and with `safe` the finiteness
 * of every result in the output's type) without writing; with `w0`, for mergeInto(w, w0, …). Lets a caller that merges many modules check them all first, so
 * that a failure leaves every W untouched.
 */
export function checkMerge(
  engine: Engine, fn: string, w: AnyMatrixInput, a: AnyMatrixInput, b: AnyMatrixInput, scale: number, safe: boolean, w0: AnyMatrixInput = w,
): void {
  rankUpdateOp(engine, checkOnly(fn), { out: w, w0, a, b, scale: Math.fround(scale), safe });
}
