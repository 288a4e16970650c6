/**
 * Applying an Adapter to a base model's tensors (resident matrices keyed by the base file's names):
 *   modules       W ← W + multiplier·s·A·B       (the fused merge, any dtype of W, rounding once)
 *   lora_bias     bias ← bias + multiplier·s·lora_B.bias
 *   replacements  the base tensor's values are replaced (modules_to_save, trained biases)
 * Every target, shape and dtype, and with `safe` every result, is checked before the first write:
 * a call that throws leaves every base tensor as it was. With `into`, results go to separate
 * matrices (out ← W0 + s·A·B) and the base is not touched: exact, repeatable adapter swaps.
 */
import { LoRARangeError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { type DType, Matrix } from '../memory/matrix.js';
import { convert } from '../ops/convert.js';
import { checkMerge, merge, mergeInto } from '../ops/merge.js';
import { type AnyMatrixInput, boolOption, f32Option, optionsObject } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { type Adapter, type AdapterModule, checkAdapter } from './adapter.js';
import { checkTargetShape, targetOf } from './plan.js';

export interface MergeAdapterOptions {
  /** Multiplies every module's scale (kohya's --multiplier; −1 unmerges). Default 1. */
  multiplier?: number;
  /** A prefix the base model's tensor names carry and the adapter's do not, e.g. 'model.'. Default ''. */
  prefix?: string;
  /** Refuse (with nothing written) if any merged weight would be NaN/±Inf in its dtype. Default false. */
  safe?: boolean;
  /** Write W0 + s·A·B into these matrices (same names and shapes as the base) instead of the base. */
  into?: Record<string, Matrix<DType>>;
}

export interface MergeAdapterReport {
  /** Base tensors changed by a module, in order. */
  merged: string[];
  /** Base tensors replaced by a tensor of the adapter. */
  replaced: string[];
}

interface Step {
  module: AdapterModule;
  target: string;
  bias?: string;
}

export function mergeAdapter(
  engine: Engine, base: Record<string, Matrix<DType>>, adapterIn: unknown, opts?: MergeAdapterOptions,
): MergeAdapterReport {
  const fn = 'mergeAdapter';
  const adapter: Adapter = checkAdapter(adapterIn, fn);
  if (typeof base !== 'object' || base === null) throw new LoRATypeError(`${fn}: base must be an object of Matrices keyed by tensor name, got ${describeValue(base)}`);
  const o = optionsObject<MergeAdapterOptions>(fn, opts, '{ multiplier, prefix, safe, into }');
  const multiplier = f32Option(fn, 'options.multiplier', o.multiplier, 1);
  const safe = boolOption(fn, 'options.safe', o.safe, false);
  const prefix = o.prefix ?? '';
  if (typeof prefix !== 'string') throw new LoRATypeError(`${fn}: options.prefix must be a string, got ${describeValue(prefix)}`);
  const into = o.into;
  const names = new Set(Object.keys(base));
  const matrixAt = (set: Record<string, Matrix<DType>>, name: string, what: string): Matrix<DType> => {
    const m = set[name];
    if (!(m instanceof Matrix)) throw new LoRATypeError(`${fn}: ${what}["${name}"] must be a Matrix, got ${describeValue(m)}`);
    return m;
  };

  // 1. plan and check everything
  const steps: Step[] = adapter.modules.map((module) => {
    const target = targetOf(module, adapter.format, names, prefix);
    const w = matrixAt(base, target, 'base');
    checkTargetShape(module, target, [w.rows, w.cols]);
    if (into) {
      const out = matrixAt(into, target, 'into');
      if (out.rows !== w.rows || out.cols !== w.cols) throw new LoRAShapeError(`${fn}: into["${target}"] is [${out.rows}, ${out.cols}] but the base tensor is [${w.rows}, ${w.cols}]`);
    }
    let bias: string | undefined;
    if (module.biasDelta) {
      bias = target.replace(/weight$/, 'bias');
      const b = matrixAt(base, bias, 'base');
      if (b.rows * b.cols !== module.biasDelta.cols) throw new LoRAShapeError(`${fn}: "${bias}" has ${b.rows * b.cols} values but module "${module.name}"'s lora_B.bias has ${module.biasDelta.cols}`);
    }
    checkMerge(engine, fn, w, module.A, module.B, multiplier * module.scale, safe);
    return { module, target, bias };
  });
  const touched = new Set(steps.map((s) => s.target));
  for (const rep of adapter.replacements) {
    const name = prefix + rep.name;
    const w = matrixAt(base, name, 'base');
    if (w.rows * w.cols !== rep.tensor.rows * rep.tensor.cols) {
      throw new LoRAShapeError(`${fn}: "${name}" is [${w.rows}, ${w.cols}] but the adapter replaces it with a tensor of shape ${JSON.stringify(rep.shape)}`);
    }
    if (touched.has(name)) throw new LoRARangeError(`${fn}: "${name}" is both changed by a module and replaced by a saved tensor`);
    if (into) matrixAt(into, name, 'into');
  }

  // 2. write
  const ones = new Float32Array([1]);
  for (const { module, target, bias } of steps) {
    const s = multiplier * module.scale;
    if (into) mergeInto(engine, into[target]!, base[target]!, module.A, module.B, { scale: s });
    else merge(engine, base[target]!, module.A, module.B, { scale: s });
    if (bias && module.biasDelta) {
      // bias [1, out] += s·1·lora_B.bias: a rank-1 update through the same kernel
      const b = base[bias]!;
      const flat = { rows: 1, cols: b.rows * b.cols };
      const dst = into ? into[bias]! : b;
      mergeInto(engine, reshape(dst, flat), reshape(b, flat), { rows: 1, cols: 1, data: ones }, module.biasDelta, { scale: s });
    }
  }
  for (const rep of adapter.replacements) {
    const name = prefix + rep.name;
    const dst = into ? into[name]! : base[name]!;
    convert(engine, reshape(dst, { rows: rep.tensor.rows, cols: rep.tensor.cols }), rep.tensor);
  }
  return { merged: steps.map((s) => s.target), replaced: adapter.replacements.map((r) => prefix + r.name) };
}

/** A Matrix's own data as a plain operand of another shape with as many elements (no copy). */
function reshape(m: Matrix<DType>, shape: { rows: number; cols: number }): AnyMatrixInput {
  if (m.rows === shape.rows && m.cols === shape.cols) return m;
  return m.dtype === 'f32' ? { ...shape, data: m.data as Float32Array } : { ...shape, data: m.data as Uint16Array, dtype: m.dtype };
}
