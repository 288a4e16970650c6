/**
 * What an adapter does to a model, decided once. Every rule lives here; the executors only carry a
 * plan out: apply-resident.ts on resident matrices (lw.mergeAdapter), apply-files.ts on streamed
 * safetensors (lw.mergeAdapterFiles, the CLI), and, later, GGUF.
 *
 *   module        target = the base tensor it changes (PEFT: `<prefix><module>.weight`; kohya: its
 *                 underscored name with '.' for '_'), W ← W + m·s·A·B with m the multiplier
 *   lora_bias     `<target without weight>bias` ← bias + m·s·lora_B.bias
 *   replacement   the base tensor `<prefix><name>` takes the adapter's values (modules_to_save,
 *                 trained biases)
 *
 * Refused, before anything is written:
 *   - a module, bias or replacement whose base tensor is missing, ambiguous, of another shape, or not
 *     of a float type lora-wasm computes with (F32, F16, BF16);
 *   - two writes to one base tensor (two modules, e.g. kohya `lora_te_x` and `lora_unet_x` on a base
 *     with one `x`; a module and a replacement; a bias and a replacement): which one wins, or whether
 *     the deltas should add, is not defined by any format, so nothing is guessed;
 *   - a scale m·s that is not finite in f32, or that rounds to 0 while m and s are not 0;
 *   - DoRA (dora.ts) modules that cannot be merged as PEFT merges them: a multiplier other than 1
 *     (W′ = m/‖V‖ ⊙ V is not linear in the adapter), −1 (unmerging needs the norms of the unmerged
 *     W, which the merged W does not give back), DoRA on an embedding or a convolution, and a
 *     magnitude whose length is not the target's number of norms.
 */
import { LoRAFormatError, LoRARangeError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { DTYPES, type DType } from '../memory/dtype.js';
import { boolOption, f32Option, optionsObject, rejectUnknownKeys } from '../ops/operands.js';
import type { Adapter, AdapterFormat, AdapterModule, Replacement } from './adapter.js';

/** What the planner needs to know of one base tensor. */
export interface BaseTensor {
  /** As a matrix: [n] → [1, n], [a, b, …] → [a, b·…]. */
  readonly shape: readonly [number, number];
  /** The float type lora-wasm computes with, or undefined (I64, U8, …). */
  readonly dtype: DType | undefined;
  /** The type as the file names it, for messages ('F32', 'I64', 'f16'). */
  readonly typeName: string;
  /** Where it lives, for messages: a file, or 'base'. */
  readonly where: string;
  /** The types this base can compute on, for messages (default 'an F32, F16 or BF16 tensor'). */
  readonly computable?: string;
}

/** The options every executor reads, read in one place. */
export interface ApplyOptions {
  /** Multiplies every module's scale (kohya's --multiplier; −1 unmerges). Default 1. */
  multiplier?: number;
  /** A prefix the base model's tensor names carry and the adapter's do not, e.g. 'model.'. Default ''. */
  prefix?: string;
  /**
   * Every tensor written is finite in the type actually written, or nothing is written (the call throws
   * LoRANonFiniteError naming the tensor). Default false.
   */
  safe?: boolean;
}

export interface ReadApplyOptions {
  multiplier: number;
  prefix: string;
  safe: boolean;
}

/** Reads the shared options; `more` are the executor's own keys (any other key is a LoRATypeError). */
export function readApplyOptions(fn: string, opts: unknown, example: string, more: readonly string[]): ReadApplyOptions {
  const o = optionsObject<ApplyOptions>(fn, opts, example);
  rejectUnknownKeys(fn, o, ['multiplier', 'prefix', 'safe', ...more]);
  const prefix = o.prefix ?? '';
  if (typeof prefix !== 'string') throw new LoRATypeError(`${fn}: options.prefix must be a string, got ${describeValue(prefix)}`);
  const multiplier = f32Option(fn, 'options.multiplier', o.multiplier, 1);
  if (multiplier === 0 && o.multiplier !== 0) {
    throw new LoRARangeError(`${fn}: options.multiplier ${o.multiplier} rounds to 0 in f32; pass 0 itself if no change is meant`);
  }
  return { multiplier, prefix, safe: boolOption(fn, 'options.safe', o.safe, false) };
}

/** The output dtype option of the file executors: 'keep' or a float type. */
export function readOutputDtype(fn: string, v: unknown): 'keep' | DType {
  if (v === undefined) return 'keep';
  if (v !== 'keep' && !DTYPES.includes(v as DType)) {
    throw new LoRATypeError(`${fn}: options.dtype must be 'keep', 'f32', 'f16' or 'bf16', got ${describeValue(v)}`);
  }
  return v as 'keep' | DType;
}

export interface MergeStep {
  readonly target: string;
  /**
   * The order the base stores the target's rows in, when it is not the adapter's: W_base[i] = W[rows[i]]
   * (llama.cpp's converter permutes q/k rows), so ΔW's rows — A's rows, and a lora_bias — follow it.
   */
  readonly rows?: Int32Array;
  readonly module: AdapterModule;
  /** fround(multiplier · module.scale). */
  readonly scale: number;
  /** The base bias tensor a lora_bias changes. */
  readonly bias?: string;
}

export interface ReplaceStep {
  readonly target: string;
  readonly replacement: Replacement;
}

export interface AdapterPlan {
  readonly merges: readonly MergeStep[];
  readonly replacements: readonly ReplaceStep[];
  /** Every base tensor the plan writes, and what writes it. */
  readonly writes: ReadonlyMap<string, { merge?: MergeStep; biasOf?: MergeStep; replace?: ReplaceStep }>;
}

/**
 * How an adapter's names find base tensors when the base names them otherwise (GGUF): the tensor a
 * module changes (and its row order there), and the tensor an adapter tensor name (a replacement)
 * stands for. Both throw a LoRAShapeError naming the module and close base names when there is none.
 */
export interface Naming {
  module(module: AdapterModule): { target: string; rows?: Int32Array };
  tensor(name: string): string;
}

/**
 * Plans `adapter` on a base model whose tensor names are `names`; `lookup(name)` describes one of them
 * (called only for tensors the plan touches). `naming` maps adapter names to base names (default:
 * PEFT `<prefix><module>.weight`, kohya underscores). Throws before returning if any rule is broken.
 */
export function planAdapter(
  fn: string, names: ReadonlySet<string>, lookup: (name: string) => BaseTensor, adapter: Adapter, opts: ReadApplyOptions, naming?: Naming,
): AdapterPlan {
  const writes = new Map<string, { merge?: MergeStep; biasOf?: MergeStep; replace?: ReplaceStep }>();
  const claim = (name: string, what: string, entry: { merge?: MergeStep; biasOf?: MergeStep; replace?: ReplaceStep }): void => {
    const had = writes.get(name);
    if (had) {
      throw new LoRAShapeError(`${fn}: ${describeWrite(had)} and ${what} both write "${name}"; refusing to guess whether one wins or both add`);
    }
    writes.set(name, entry);
  };
  const float = (name: string, t: BaseTensor, what: string): DType => {
    if (!t.dtype) throw new LoRAFormatError(`${t.where}: "${name}" is ${t.typeName}; ${what} needs ${t.computable ?? 'an F32, F16 or BF16 tensor'}`);
    return t.dtype;
  };

  const merges: MergeStep[] = adapter.modules.map((module) => {
    const { target, rows } = naming ? naming.module(module) : { target: targetOf(fn, module, adapter.format, names, opts.prefix), rows: undefined };
    const t = lookup(target);
    float(target, t, `module "${module.name}"`);
    checkTargetShape(fn, module, target, t.shape);
    if (module.magnitude) checkDora(fn, module, target, t.shape, opts.multiplier);
    const scale = Math.fround(opts.multiplier * module.scale);
    if (!Number.isFinite(scale) || (scale === 0 && opts.multiplier !== 0 && module.scale !== 0)) {
      throw new LoRARangeError(`${fn}: module "${module.name}": multiplier ${opts.multiplier} × scale ${module.scale} is ${scale} in f32`);
    }
    let bias: string | undefined;
    if (module.biasDelta) {
      bias = target.replace(/weight$/, 'bias');
      if (bias === target || !names.has(bias)) {
        throw new LoRAShapeError(`${fn}: module "${module.name}" has a lora_B.bias but the base model has no tensor "${bias === target ? `${target}.bias` : bias}"`);
      }
      const b = lookup(bias);
      float(bias, b, `module "${module.name}"'s lora_B.bias`);
      if (b.shape[0] * b.shape[1] !== module.biasDelta.cols) {
        throw new LoRAShapeError(`${fn}: "${bias}" has ${b.shape[0] * b.shape[1]} values but module "${module.name}"'s lora_B.bias has ${module.biasDelta.cols}`);
      }
    }
    const step: MergeStep = { target, module, scale, bias, ...(rows ? { rows } : {}) };
    claim(target, `module "${module.name}"`, { merge: step });
    if (bias) claim(bias, `module "${module.name}"'s lora_B.bias`, { biasOf: step });
    return step;
  });

  const replacements: ReplaceStep[] = adapter.replacements.map((replacement) => {
    const target = naming ? naming.tensor(replacement.name) : opts.prefix + replacement.name;
    if (!names.has(target)) throw new LoRAShapeError(`${fn}: the adapter replaces "${target}" but the base model has no such tensor${closeNames(target, names)}`);
    const t = lookup(target);
    float(target, t, 'a replacement');
    const [rows, cols] = [replacement.tensor.rows, replacement.tensor.cols];
    if (t.shape[0] !== rows || t.shape[1] !== cols) {
      throw new LoRAShapeError(`${fn}: "${target}" is [${t.shape}] in the base but the adapter replaces it with [${replacement.shape}]`);
    }
    const step: ReplaceStep = { target, replacement };
    claim(target, 'a saved tensor (modules_to_save)', { replace: step });
    return step;
  });
  return { merges, replacements, writes };
}

function describeWrite(w: { merge?: MergeStep; biasOf?: MergeStep; replace?: ReplaceStep }): string {
  if (w.merge) return `module "${w.merge.module.name}"`;
  if (w.biasOf) return `module "${w.biasOf.module.name}"'s lora_B.bias`;
  return 'a saved tensor (modules_to_save)';
}

/** The base tensor a module changes, found among `names` (PEFT: `<prefix><module>.weight`; kohya: by its underscored name). */
export function targetOf(fn: string, module: AdapterModule, format: AdapterFormat, names: ReadonlySet<string>, prefix = ''): string {
  if (format !== 'kohya') {
    const want = `${prefix}${module.name}.weight`;
    if (names.has(want)) return want;
    throw new LoRAShapeError(`${fn}: the base model has no tensor "${want}" for module "${module.name}"${closeNames(want, names)}`);
  }
  const bare = module.name.replace(/^lora_(unet|te\d?)_/, '');
  const hits = [...names].filter((n) => n.endsWith('.weight') && n.startsWith(prefix) && n.slice(prefix.length, -'.weight'.length).replaceAll('.', '_') === bare);
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) throw new LoRAShapeError(`${fn}: kohya module "${module.name}" matches several base tensors: ${hits.join(', ')}`);
  throw new LoRAShapeError(`${fn}: no base tensor matches kohya module "${module.name}" (looked for "${prefix}${bare.replaceAll('_', '.')}.weight" with '.' for '_')${closeNames(bare, names)}`);
}

/** ", close names: …" from the names sharing the most trailing components with `want`. */
function closeNames(want: string, names: ReadonlySet<string>): string {
  const tail = (s: string) => s.split(/[._]/).reverse();
  const w = tail(want);
  const score = (n: string): number => {
    const t = tail(n);
    let k = 0;
    while (k < w.length && k < t.length && w[k] === t[k]) k++;
    return k;
  };
  const best = [...names].map((n) => [n, score(n)] as const).filter(([, s]) => s >= 2).sort((a, b) => b[1] - a[1]).slice(0, 3);
  return best.length ? `; close names: ${best.map(([n]) => `"${n}"`).join(', ')} (pass { prefix } if the base model's names carry one)` : '';
}

/** The DoRA rules (see the header). */
function checkDora(fn: string, module: AdapterModule, target: string, shape: readonly [number, number], multiplier: number): void {
  const where = `${fn}: module "${module.name}" is DoRA (it has a magnitude vector)`;
  if (module.kind !== 'linear') {
    throw new LoRAFormatError(`${where} on ${module.kind === 'embedding' ? 'an embedding' : 'a convolution'}; lora-wasm merges DoRA on linear layers only`);
  }
  if (multiplier === -1) {
    throw new LoRARangeError(`${where}: unmerging it (multiplier -1) needs the row norms of the weight before the merge, which the merged weight does not give back; merge into a copy (into) and keep the original`);
  }
  if (multiplier !== 1) {
    throw new LoRARangeError(`${where}: its merge W′ = m/‖W + s·A·B‖ ⊙ (W + s·A·B) is not linear in the adapter, so multiplier ${multiplier} has no meaning for it; only 1 is allowed`);
  }
  const n = module.magnitudeAxis === 'cols' ? shape[1] : shape[0];
  const m = module.magnitude!.rows * module.magnitude!.cols;
  if (m !== n) {
    throw new LoRAShapeError(`${fn}: module "${module.name}" is DoRA with a magnitude vector of ${m} values but "${target}" [${shape[0]}, ${shape[1]}] has ${n} ${module.magnitudeAxis === 'cols' ? 'columns' : 'rows'} to normalize`);
  }
}

export function checkTargetShape(fn: string, module: AdapterModule, target: string, shape: readonly [number, number]): void {
  if (module.A.rows !== shape[0] || module.B.cols !== shape[1]) {
    const layout = module.fanInFanOut ? ' (fan_in_fan_out: W stored [in, out])' : '';
    throw new LoRAShapeError(
      `${fn}: module "${module.name}" changes a [${module.A.rows}, ${module.B.cols}] weight${layout} but "${target}" is [${shape[0]}, ${shape[1]}]`,
    );
  }
}
