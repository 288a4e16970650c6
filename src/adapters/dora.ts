/**
 * DoRA (weight-decomposed low-rank adaptation): the merge of a module that carries a magnitude vector.
 *
 *   V  = W + s·A·B                      (the LoRA merge, W as the base stores it)
 *   W′ = (m / (‖V‖ + eps)) ⊙ V          one norm per row of W in PEFT's [out, in] orientation
 *
 * PEFT (huggingface/peft @ 5d602fdb):
 *   - tuners/lora/dora.py, DoraLinearLayer.get_weight_norm: `weight = transpose(weight, self.fan_in_fan_out);
 *     weight = weight + scaling * lora_weight; weight_norm = torch.linalg.norm(weight, dim=1)`, i.e. the norm
 *     of each output row of W in [out, in] (a Conv1D's W, stored [in, out], is transposed first);
 *   - tuners/lora/variants.py, DoraLinearVariant.merge_safe: `dora_factor = magnitude / weight_norm;
 *     dora_factor = transpose(dora_factor.view(-1, 1), module.fan_in_fan_out); new_weight = dora_factor *
 *     (orig_weight + delta_weight)`: with fan_in_fan_out the factor scales the COLUMNS of W as stored.
 *     eps is 0. `unmerge` divides by a weight norm cached at merge time: a merged W does not give it back.
 *   - tuners/lora/model.py, LoraModel._get_adapter_state_dict: the magnitude is saved as
 *     `<module>.lora_magnitude_vector` (the `.weight` of the DoraLinearLayer is removed on save).
 * LyCORIS (KohakuBlueleaf/LyCORIS @ f49d30d6), lycoris/modules/locon.py, LoConModule:
 *   - `dora_scale` is [out, 1] (wd_on_out, the default: a norm per output row) or [1, in] (a norm per
 *     input column), so the axis is read from its shape;
 *   - apply_weight_decompose: `weight_norm = weight.reshape(weight.shape[0], -1).norm(dim=1) + torch.finfo(weight.dtype).eps`
 *     with weight in dora_scale's dtype, f32 (the parameter is made `.float()` and from_weights copies into it):
 *     eps = 2⁻²³; `scale = dora_scale / weight_norm; return weight * scale` for multiplier 1.
 *
 * Here, in our stored layout ('rows': one norm per row of W as stored; 'cols': one per column):
 *   V is computed in f32 (the LoRA merge, rounding once), Σ V² in float64 (every f32 square is exact in
 *   f64), fᵢ = f32(mᵢ / (√Σ + eps)) in float64, and V·fᵢ rounded to f32, then encoded once into W's type.
 * A band of whole rows carries complete row norms; column norms need every row first (columnFactors).
 */
import { LoRAFormatError, LoRANonFiniteError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { describe } from '../kernel/descriptor.js';
import type { Block } from '../memory/heap.js';
import { type DType, Matrix } from '../memory/matrix.js';
import { convert } from '../ops/convert.js';
import { createMatrix } from '../ops/create.js';
import { mergeInto } from '../ops/merge.js';
import { type AnyMatrixInput, intOption, numberOption, readOptions, seedOption, stringOption } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { Adapter, type AdapterModule, checkAdapter } from './adapter.js';
import { type ModuleReport, type TruncateResult, extractAdapter } from './extract.js';
import { type BaseTensor, type MergeStep, planAdapter } from './plan.js';

/** torch.finfo(torch.float32).eps, which LyCORIS adds to every norm. */
export const LYCORIS_EPS = 2 ** -23;

export type DoraAxis = 'rows' | 'cols';

/** True when the module is a DoRA module (it carries a magnitude vector). */
export const isDora = (m: AdapterModule): boolean => m.magnitude !== undefined;

/** The number of norms a module's magnitude must hold for a W of `shape` as stored. */
export const normCount = (m: AdapterModule, shape: readonly [number, number]): number => (m.magnitudeAxis === 'cols' ? shape[1] : shape[0]);

/**
 * Σ v² in float64: per row of the [rows, cols] f32 band `v` (axis 'rows': acc[i] = …) or added to
 * each column (axis 'cols': acc[j] += …, so bands accumulate).
 */
export function sumSquares(v: Float32Array, rows: number, cols: number, axis: DoraAxis, acc: Float64Array): void {
  if (axis === 'rows') {
    for (let i = 0; i < rows; i++) {
      let s = 0;
      for (let j = i * cols, e = j + cols; j < e; j++) s += v[j]! * v[j]!;
      acc[i] = s;
    }
  } else {
    for (let i = 0; i < rows; i++) for (let j = 0, o = i * cols; j < cols; j++) acc[j]! += v[o + j]! * v[o + j]!;
  }
}

/** fᵢ = f32(mᵢ / (√ssᵢ + eps)), in float64 before the one rounding. `m(i)` gives magnitude i. */
export function factors(m: (i: number) => number, ss: Float64Array, eps: number): Float32Array {
  const f = new Float32Array(ss.length);
  for (let i = 0; i < ss.length; i++) f[i] = m(i) / (Math.sqrt(ss[i]!) + eps);
  return f;
}

/** v ← v·f along `axis` (rows: v[i, j]·f[i]; cols: v[i, j]·f[j]), each product rounded to f32. */
export function scaleBy(v: Float32Array, rows: number, cols: number, axis: DoraAxis, f: Float32Array): void {
  for (let i = 0; i < rows; i++) {
    const o = i * cols;
    if (axis === 'rows') {
      const fi = f[i]!;
      for (let j = 0; j < cols; j++) v[o + j]! *= fi;
    } else for (let j = 0; j < cols; j++) v[o + j]! *= f[j]!;
  }
}

/** The module's magnitude in f32, in the base's row order (MergeStep.rows: W_base[i] = W[rows[i]]) for the row axis. */
function magnitudeOf(step: MergeStep): (i: number) => number {
  const m = step.module.magnitude!.toFloat32();
  const rows = step.module.magnitudeAxis !== 'cols' ? step.rows : undefined;
  return rows ? (i) => m[rows[i]!]! : (i) => m[i]!;
}

/** An f32 work area of n values in wasm memory; the caller frees it. */
function work(engine: Engine, n: number, fn: string): Block {
  return engine.heap.alloc(Math.max(4, n * 4), `${fn} (DoRA work area)`);
}

/**
 * A getter of an f32 operand's current view: a Matrix's own getter, else a view rebuilt from the block
 * the heap made it on (a view kept across an allocation may be detached), else the plain array.
 */
function liveView(engine: Engine, x: AnyMatrixInput): () => Float32Array {
  if (typeof (x as { dispose?: unknown }).dispose === 'function') return () => (x as { data: Float32Array }).data; // a Matrix
  const data = (x as { data: Float32Array }).data;
  const owner = engine.heap.ownerOf(data);
  if (!owner) return () => data; // JS memory: mergeInto copies the result back into it
  const [at, n] = [data.byteOffset - owner.ptr, data.length];
  return () => engine.heap.view(owner, n, undefined, at);
}

const dtypeOf = (x: AnyMatrixInput): DType => (x as { dtype?: DType }).dtype ?? 'f32';

/**
 * res ← W′ for rows [r0, r0 + rows) of a DoRA module's tensor (W and res hold those rows; res may be
 * W): V = W + s·A·B in f32 (in res when res is f32, else in a work area), the factors, V·f, then one
 * encode into res's type. `A` is the band of A (in the base's row order). Column factors come from
 * `cols` (columnFactors over the whole tensor), or, when the band is the whole tensor, are computed here.
 */
export function doraMerge(
  engine: Engine, fn: string, res: AnyMatrixInput, W: AnyMatrixInput, step: MergeStep, A: AnyMatrixInput, r0: number,
  totalRows: number, cols?: Float32Array,
): void {
  const { rows, cols: n } = W as { rows: number; cols: number };
  const axis: DoraAxis = step.module.magnitudeAxis ?? 'rows';
  const direct = dtypeOf(res) === 'f32';
  if (direct) liveView(engine, res); // before any allocation may move memory
  const block = direct ? undefined : work(engine, rows * n, fn);
  try {
    const V: AnyMatrixInput = direct ? res : { rows, cols: n, data: engine.heap.view(block!, rows * n) };
    mergeInto(engine, V, W, A, step.module.B, { scale: step.scale });
    const v = direct ? liveView(engine, res) : () => engine.heap.view(block!, rows * n);
    let f = cols;
    if (axis === 'rows') {
      const ss = new Float64Array(rows);
      sumSquares(v(), rows, n, 'rows', ss);
      const m = magnitudeOf(step);
      f = factors((i) => m(r0 + i), ss, step.module.magnitudeEps ?? 0);
    } else if (!f) {
      if (r0 !== 0 || rows !== totalRows) {
        throw new LoRAShapeError(
          `${fn}: module "${step.module.name}" is DoRA with norms over W's stored columns (fan_in_fan_out, or a [1, in] dora_scale), which need every row of "${step.target}" at once; the file merge computes it in bands of rows, so this tensor is too large for it here: merge it with lw.mergeAdapter`,
        );
      }
      const ss = new Float64Array(n);
      sumSquares(v(), rows, n, 'cols', ss);
      f = factors(magnitudeOf(step), ss, step.module.magnitudeEps ?? 0);
    }
    scaleBy(v(), rows, n, axis, f!);
    if (!direct) convert(engine, res, V);
  } finally {
    if (block) engine.heap.free(block);
  }
}

/**
 * The column factors of a DoRA module whose norms run over columns (fan_in_fan_out, LyCORIS [1, in]),
 * from W's bands in order: `next(i)` gives band i as an operand (or undefined after the last) and its A rows.
 */
export async function columnFactors(
  engine: Engine, fn: string, step: MergeStep, cols: number,
  bands: AsyncIterable<{ W: AnyMatrixInput; A: AnyMatrixInput }>,
): Promise<Float32Array> {
  const ss = new Float64Array(cols);
  for await (const { W, A } of bands) {
    const rows = (W as { rows: number }).rows;
    const block = work(engine, rows * cols, fn);
    try {
      mergeInto(engine, { rows, cols, data: engine.heap.view(block, rows * cols) }, W, A, step.module.B, { scale: step.scale });
      sumSquares(engine.heap.view(block, rows * cols), rows, cols, 'cols', ss);
    } finally {
      engine.heap.free(block);
    }
  }
  return factors(magnitudeOf(step), ss, step.module.magnitudeEps ?? 0);
}

/** The DoRA rows scaling of an f32 band already merged (GGUF's float64 merge into its work area). */
export function doraScaleRows(v: Float32Array, rows: number, cols: number, step: MergeStep, r0: number): void {
  const ss = new Float64Array(rows);
  sumSquares(v, rows, cols, 'rows', ss);
  const m = magnitudeOf(step);
  scaleBy(v, rows, cols, 'rows', factors((i) => m(r0 + i), ss, step.module.magnitudeEps ?? 0));
}

/** Loader check: a magnitude vector of `n` finite values for a module that changes `n` norms. */
export function checkMagnitude(file: string, name: string, magnitude: Matrix<DType>, n: number, what: string): void {
  if (magnitude.rows * magnitude.cols !== n) {
    throw new LoRAFormatError(`${file}: module "${name}": its DoRA ${what} has ${magnitude.rows * magnitude.cols} values but the module changes ${n} ${n === 1 ? 'norm' : 'norms'}`);
  }
  const m = magnitude.toFloat32();
  for (let i = 0; i < m.length; i++) if (!Number.isFinite(m[i]!)) throw new LoRAFormatError(`${file}: module "${name}": its DoRA ${what} holds ${m[i]} at ${i}`);
}

export interface DoraToLoraOptions {
  /** Keep this many singular values of W′ − W per DoRA module (a rank above min(out, in) keeps it whole)… */
  rank?: number;
  /** …or the fewest that keep this fraction of ‖W′ − W‖²_F, in (0, 1]. */
  energy?: number;
  /** A prefix the base's tensor names carry and the adapter's do not, e.g. 'model.'. Default ''. */
  prefix?: string;
  /** The randomized SVD's seed (default 0), extra sketch columns and power iterations (extractAdapter's). */
  seed?: number;
  oversample?: number;
  powerIters?: number;
}

const TO_LORA = 'doraToLora';

/** A copy of a factor in its own dtype (the result owns its matrices). */
const copyOf = (engine: Engine, x: Matrix<DType>): Matrix<DType> => createMatrix(engine, x.rows, x.cols, x.data, { dtype: x.dtype });

/**
 * DoRA → plain LoRA, for runtimes without DoRA: per DoRA module, W′ = (m/‖V‖) ⊙ V (doraMerge: V = W + s·A·B
 * in f32, W′ kept in f32, not rounded to W's type) and ΔW = W′ − W by extractAdapter's randomized SVD, at
 * `rank` (at most min(out, in)) or the fewest singular values keeping `energy` of ‖ΔW‖²_F. The new module
 * has scale 1, alpha = r, and W's layout (fan_in_fan_out kept). Modules without a magnitude, lora_bias
 * deltas and modules_to_save tensors are copied as they are (same dtype, alpha and scale).
 * `base` holds W for every DoRA module (keyed by the base's names: prefix + module + '.weight'); other
 * base tensors are not needed. Allocates the result; the caller disposes it.
 * Returns the adapter (PEFT format) and, per DoRA module, the rank and fraction of ‖W′ − W‖²_F kept.
 */
export function doraToLora(engine: Engine, adapterIn: unknown, base: Record<string, Matrix<DType>>, optsIn: unknown): TruncateResult {
  const fn = TO_LORA;
  const adapter = checkAdapter(adapterIn, fn);
  if (typeof base !== 'object' || base === null || Array.isArray(base)) {
    throw new LoRATypeError(`${fn}: base must be an object of Matrices keyed by tensor name, got ${describeValue(base)}`);
  }
  const o = readOptions(fn, optsIn, {
    rank: intOption({ min: 1 }),
    energy: numberOption({ min: 0, minOpen: true, max: 1, what: 'a fraction' }),
    prefix: { read: (f: string, name: string, v: unknown): string => (typeof v === 'string' ? v : stringOption().read(f, name, v)) }, // '' is no prefix
    seed: seedOption(),
    oversample: intOption({ min: 0 }),
    powerIters: intOption({ min: 0 }),
  }, '{ rank: 16 } or { energy: 0.99 }');
  if ((o.rank === undefined) === (o.energy === undefined)) {
    throw new LoRATypeError(`${fn}: give exactly one of options.rank (a positive integer) and options.energy (a fraction in (0, 1])`);
  }
  if (adapter.format !== 'peft') throw new LoRATypeError(`${fn}: the result is a PEFT adapter; a ${adapter.format} adapter has no PEFT module names (convert it first)`);
  const dora = adapter.modules.filter(isDora);
  if (dora.length === 0) throw new LoRATypeError(`${fn}: the adapter has no DoRA module (no lora_magnitude_vector): it is plain LoRA already`);
  // the planner's checks (a target per module, shapes, the magnitude's length) and its steps, for the DoRA modules only
  const doraOnly = new Adapter('peft', dora, [], adapter.config as Record<string, unknown>);
  const lookup = (name: string): BaseTensor => {
    const m = Object.hasOwn(base, name) ? base[name] : undefined;
    if (!(m instanceof Matrix)) throw new LoRATypeError(`${fn}: base["${name}"] must be a Matrix, got ${describeValue(m)}`);
    return { shape: [m.rows, m.cols], dtype: m.dtype, typeName: m.dtype, where: 'base' };
  };
  const plan = planAdapter(fn, new Set(Object.keys(base)), lookup, doraOnly, { multiplier: 1, prefix: o.prefix ?? '', safe: false });
  const steps = new Map(plan.merges.map((s) => [s.module, s]));

  const modules: AdapterModule[] = [];
  const reports: ModuleReport[] = [];
  const made: Matrix<DType>[] = [];
  try {
    for (const m of adapter.modules) {
      const step = steps.get(m);
      if (!step) {
        const A = copyOf(engine, m.A);
        made.push(A);
        const B = copyOf(engine, m.B);
        made.push(B);
        const biasDelta = m.biasDelta && copyOf(engine, m.biasDelta);
        if (biasDelta) made.push(biasDelta);
        modules.push({ name: m.name, kind: m.kind, r: m.r, alpha: m.alpha, scale: m.scale, fanInFanOut: m.fanInFanOut, A, B, ...(biasDelta ? { biasDelta } : {}) });
        continue;
      }
      const one = doraModuleToLora(engine, step, base[step.target]!, o);
      made.push(one.module.A, one.module.B);
      const biasDelta = m.biasDelta && copyOf(engine, m.biasDelta);
      if (biasDelta) made.push(biasDelta);
      modules.push({ ...one.module, ...(biasDelta ? { biasDelta } : {}) });
      reports.push(one.report);
    }
    const replacements = adapter.replacements.map((r) => {
      const tensor = copyOf(engine, r.tensor);
      made.push(tensor);
      return { name: r.name, shape: r.shape, tensor };
    });
    const config: Record<string, unknown> = { ...adapter.config, use_dora: false };
    return { adapter: new Adapter('peft', modules, replacements, config), modules: reports };
  } catch (e) {
    for (const x of made) x.dispose();
    throw e;
  }
}

/** One DoRA module → a plain LoRA module: W′ in an f32 temporary, then extractAdapter(W′, W). */
function doraModuleToLora(
  engine: Engine, step: MergeStep, W: Matrix<DType>, o: DoraToLoraOptions,
): { module: AdapterModule; report: ModuleReport } {
  const fn = TO_LORA;
  const m = step.module;
  const Wp = createMatrix(engine, W.rows, W.cols);
  try {
    doraMerge(engine, fn, Wp, W, step, m.A, 0, W.rows);
    const max = engine.kernel.absMax(fn, describe(Wp, 'W′'));
    if (!Number.isFinite(max)) {
      throw new LoRANonFiniteError(`${fn}: module "${m.name}" on "${step.target}": the DoRA weight W′ holds NaN or ±Infinity (a zero norm ‖W + s·A·B‖, or an overflow), so there is no finite LoRA to extract`);
    }
    const full = Math.min(W.rows, W.cols);
    const choice = o.rank !== undefined ? { rank: Math.min(o.rank, full) } : { energy: o.energy! };
    const r = extractAdapter(engine, Wp, W, { ...choice, name: m.name, seed: o.seed, oversample: o.oversample, powerIters: o.powerIters });
    const x = r.adapter.modules[0]!;
    return { module: { name: m.name, kind: m.kind, r: x.r, alpha: x.alpha, scale: x.scale, fanInFanOut: m.fanInFanOut, A: x.A, B: x.B }, report: r.modules[0]! };
  } finally {
    Wp.dispose();
  }
}
