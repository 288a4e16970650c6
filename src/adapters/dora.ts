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
import { LoRAFormatError, LoRAShapeError } from '../errors.js';
import type { Block } from '../memory/heap.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { convert } from '../ops/convert.js';
import { mergeInto } from '../ops/merge.js';
import type { AnyMatrixInput } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import type { AdapterModule } from './adapter.js';
import type { MergeStep } from './plan.js';

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
