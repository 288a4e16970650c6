/**
 * Carries an adapter plan (plan.ts) out on resident matrices keyed by the base file's names
 * (lw.mergeAdapter):
 *   merge steps    W ← W + m·s·A·B       (the fused merge, any dtype of W, rounding once)
 *   DoRA steps     W ← m/‖V‖ ⊙ V, V = W + s·A·B (dora.ts: V in f32, scaled, rounded once into W's type)
 *   lora_bias      bias ← bias + m·s·lora_B.bias (a rank-1 update through the same kernel)
 *   replacements   the base tensor's values are replaced (modules_to_save, trained biases)
 * Every step is checked before the first write (NaN/Inf in the factors; with `safe`, every result in
 * the type it is written in): a call that throws leaves every base tensor as it was. With `into`,
 * results go to separate matrices (out ← W0 + s·A·B) and the base is not touched: exact, repeatable
 * adapter swaps. `into` may not share memory with any base tensor, nor its matrices with each other.
 */
import { LoRAError, LoRANonFiniteError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { describe } from '../kernel/descriptor.js';
import { type DType, Matrix } from '../memory/matrix.js';
import { convert } from '../ops/convert.js';
import { checkMerge, merge, mergeInto } from '../ops/merge.js';
import { type AnyMatrixInput, type Operand, assertDisjoint, operand } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { checkAdapter } from './adapter.js';
import { doraMerge } from './dora.js';
import { createMatrix } from '../ops/create.js';
import { type AdapterPlan, type ApplyOptions, type BaseTensor, type MergeStep, planAdapter, readApplyOptions } from './plan.js';

export interface MergeAdapterOptions extends ApplyOptions {
  /** Write W0 + s·A·B into these matrices (same names and shapes as the base) instead of the base. */
  into?: Record<string, Matrix<DType>>;
}

export interface MergeAdapterReport {
  /** Base tensors changed by a module, in order. */
  merged: string[];
  /** Base tensors replaced by a tensor of the adapter. */
  replaced: string[];
}

/** The smallest magnitude that rounds to ±Infinity in each type (round to nearest, ties to even). */
export const OVERFLOW_AT: Readonly<Record<DType, number>> = { f32: 2 ** 128 - 2 ** 103, f16: 65520, bf16: 2 ** 128 - 2 ** 119 };

const fn = 'mergeAdapter';

export function mergeAdapter(engine: Engine, base: Record<string, Matrix<DType>>, adapterIn: unknown, opts?: MergeAdapterOptions): MergeAdapterReport {
  const adapter = checkAdapter(adapterIn, fn);
  if (typeof base !== 'object' || base === null || Array.isArray(base)) {
    throw new LoRATypeError(`${fn}: base must be an object of Matrices keyed by tensor name, got ${describeValue(base)}`);
  }
  const options = readApplyOptions(fn, opts, '{ multiplier, prefix, safe, into }', ['into']);
  const into = opts?.into;
  if (into !== undefined && (typeof into !== 'object' || into === null || Array.isArray(into))) {
    throw new LoRATypeError(`${fn}: options.into must be an object of Matrices keyed by tensor name, got ${describeValue(into)}`);
  }
  const at = (set: Record<string, unknown>, name: string, what: string): Matrix<DType> => {
    const m = Object.hasOwn(set, name) ? set[name] : undefined;
    if (!(m instanceof Matrix)) throw new LoRATypeError(`${fn}: ${what}["${name}"] must be a Matrix, got ${describeValue(m)}`);
    return m;
  };
  const lookup = (name: string): BaseTensor => {
    const m = at(base, name, 'base');
    return { shape: [m.rows, m.cols], dtype: m.dtype, typeName: m.dtype, where: 'base' };
  };
  const plan = planAdapter(fn, new Set(Object.keys(base)), lookup, adapter, options);
  if (into) for (const name of Object.keys(into)) if (!Object.hasOwn(base, name)) throw new LoRATypeError(`${fn}: options.into["${name}"] names no base tensor; into is keyed by the base's names`);

  // where each write goes, checked: same shape, and no output sharing memory with the base or another output
  const dst = new Map<string, Matrix<DType>>();
  for (const name of plan.writes.keys()) {
    const w = base[name]!;
    if (!into) {
      dst.set(name, w);
      continue;
    }
    const out = at(into, name, 'options.into');
    if (out.rows !== w.rows || out.cols !== w.cols) throw new LoRAShapeError(`${fn}: options.into["${name}"] is [${out.rows}, ${out.cols}] but the base tensor is [${w.rows}, ${w.cols}]`);
    dst.set(name, out);
  }
  if (into) checkOutputsDisjoint(engine, base, dst);

  checkSteps(engine, plan, base, dst, options.safe);

  const ones = new Float32Array([1]);
  for (const step of plan.merges) {
    const { target, module, scale, bias } = step;
    if (module.magnitude) doraMerge(engine, fn, dst.get(target)!, base[target]!, step, module.A, 0, module.A.rows);
    else if (into) mergeInto(engine, dst.get(target)!, base[target]!, module.A, module.B, { scale });
    else merge(engine, base[target]!, module.A, module.B, { scale });
    if (bias && module.biasDelta) {
      const b = base[bias]!;
      mergeInto(engine, flat(dst.get(bias)!), flat(b), { rows: 1, cols: 1, data: ones }, module.biasDelta, { scale });
    }
  }
  for (const { target, replacement } of plan.replacements) {
    convert(engine, dst.get(target)!, replacement.tensor);
  }
  return { merged: plan.merges.map((s) => s.target), replaced: plan.replacements.map((r) => r.target) };
}

/** Every check merge() would make, for every step, before any write; errors name the module and tensor. */
function checkSteps(engine: Engine, plan: AdapterPlan, base: Record<string, Matrix<DType>>, dst: Map<string, Matrix<DType>>, safe: boolean): void {
  const ones = new Float32Array([1]);
  for (const step of plan.merges) {
    const { target, module, scale, bias } = step;
    inContext(`module "${module.name}" on "${target}"`, () => {
      checkMerge(engine, fn, dst.get(target)!, module.A, module.B, scale, safe && !module.magnitude, base[target]!);
      if (safe && module.magnitude) checkDora(engine, step, base[target]!, dst.get(target)!.dtype);
      if (bias && module.biasDelta) checkMerge(engine, fn, flat(dst.get(bias)!), { rows: 1, cols: 1, data: ones }, module.biasDelta, scale, safe, flat(base[bias]!));
    });
  }
  for (const { target, replacement } of plan.replacements) {
    const out = dst.get(target)!;
    const max = engine.kernel.absMax(fn, describe(replacement.tensor, 'replacement'));
    if (!Number.isFinite(max) || (safe && !(max < OVERFLOW_AT[out.dtype]))) {
      throw new LoRANonFiniteError(
        `${fn}: the adapter's tensor for "${target}" ${Number.isFinite(max) ? `reaches ${max}, which overflows ${out.dtype} to ±Infinity` : 'holds NaN or ±Infinity'}; nothing was written`,
      );
    }
  }
}

/** With `safe`: W′ of a DoRA step, computed into a temporary f32 matrix, is finite and within `dtype`'s range. */
function checkDora(engine: Engine, step: MergeStep, W: Matrix<DType>, dtype: DType): void {
  const tmp = createMatrix(engine, W.rows, W.cols);
  try {
    doraMerge(engine, fn, tmp, W, step, step.module.A, 0, W.rows);
    const max = engine.kernel.absMax(fn, describe(tmp, 'W′'));
    if (!(max < OVERFLOW_AT[dtype])) {
      throw new LoRANonFiniteError(`${fn}: the DoRA result ${Number.isFinite(max) ? `reaches ${max}, which overflows ${dtype} to ±Infinity` : 'holds NaN or ±Infinity (a zero norm?)'}; with safe: true nothing was written`);
    }
  } finally {
    tmp.dispose();
  }
}

/** Runs `work`, re-throwing a LoRAError of the same class with `context` in its message. */
function inContext(context: string, work: () => void): void {
  try {
    work();
  } catch (e) {
    if (!(e instanceof LoRAError)) throw e;
    const Cls = (e as Error).constructor as new (message: string) => Error;
    const msg = (e as Error).message.replace(/^mergeAdapter: /, '');
    throw new Cls(`${fn}: ${context}: ${msg}`);
  }
}

/** Throws LoRATypeError if an output shares memory with any base tensor or another output. */
function checkOutputsDisjoint(engine: Engine, base: Record<string, Matrix<DType>>, dst: Map<string, Matrix<DType>>): void {
  const inputs: Operand[] = [];
  for (const name of Object.keys(base)) {
    const m = base[name];
    if (m instanceof Matrix && !m.disposed) inputs.push(operand(engine.heap, fn, `base["${name}"]`, m, [m.dtype]));
  }
  const outputs: Operand[] = [];
  for (const [name, m] of dst) {
    const out = operand(engine.heap, fn, `options.into["${name}"]`, m, [m.dtype]);
    assertDisjoint(fn, out, [...inputs, ...outputs]);
    outputs.push(out);
  }
}

/** A Matrix's own data as a [1, n] operand (no copy). */
function flat(m: Matrix<DType>): AnyMatrixInput {
  if (m.rows === 1) return m;
  const shape = { rows: 1, cols: m.rows * m.cols };
  return m.dtype === 'f32' ? { ...shape, data: m.data as Float32Array } : { ...shape, data: m.data as Uint16Array, dtype: m.dtype };
}
