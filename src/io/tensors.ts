/**
 * Whole tensor files to and from resident matrices: lw.loadTensors reads a safetensors file (every
 * F32/F16/BF16 tensor, or the ones named) into matrices, keeping each tensor's dtype and shape
 * ([n] becomes [1, n]; [a, b, …] becomes [a, b·…]); tensors of other dtypes (I64 position ids, …)
 * are listed in `skipped`, never dropped unsaid, and naming one is an error. Zero-size tensors
 * (a 0 in the shape) hold no values and no matrix can hold them: they are listed in `empty` with
 * their dtype and shape. lw.saveTensors writes a set back, `empty` included: a loaded file saves back
 * byte for byte (but for its non-float tensors).
 *
 * Every record keyed by tensor name has a null prototype, so a tensor named `__proto__` or
 * `constructor` is an entry like any other.
 */
import { LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { DTYPE_OF_ST, ST_OF_DTYPE, type SafetensorsReader, as2d, encodeSafetensors, isEmptyShape, numelOf, quoteName, tensorData } from './safetensors.js';

/** A zero-size tensor: its dtype and shape are all there is to it. */
export interface EmptyTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
}

export interface TensorSet {
  /** Matrices keyed by tensor name. */
  readonly tensors: Record<string, Matrix<DType>>;
  /** Each tensor's shape in the file. */
  readonly shapes: Record<string, number[]>;
  readonly metadata: Record<string, string>;
  /** Tensors not loaded because lora-wasm does not compute with their dtype, as `name (dtype)`. */
  readonly skipped?: string[];
  /** Zero-size F32/F16/BF16 tensors (shape [0], [0, 4], …), keyed by name: no matrix holds them, saveTensors writes them. */
  readonly empty?: Record<string, EmptyTensor>;
}

const record = <V>(): Record<string, V> => Object.create(null) as Record<string, V>;
const isObject = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null;

export async function loadTensors(
  reader: SafetensorsReader, make: (rows: number, cols: number, data: Float32Array | Uint16Array, dtype: DType) => Matrix<DType>, names?: readonly string[],
): Promise<TensorSet> {
  let wanted: Set<string> | undefined;
  if (names !== undefined) {
    if (!Array.isArray(names) || !names.every((n) => typeof n === 'string')) throw new LoRATypeError(`loadTensors: options.names must be a list of tensor names, got ${describeValue(names)}`);
    wanted = new Set(names);
    for (const n of wanted) if (!reader.get(n)) await reader.read(n); // names the file and the tensor it lacks
  }
  const tensors = record<Matrix<DType>>();
  const shapes = record<number[]>();
  const empty = record<EmptyTensor>();
  const skipped: string[] = [];
  try {
    for (const info of reader.tensors) {
      if (wanted && !wanted.has(info.name)) continue;
      const dtype = DTYPE_OF_ST[info.dtype];
      if (!dtype && !wanted) {
        skipped.push(`${info.name} (${info.dtype})`);
        continue;
      }
      if (!dtype) tensorData(reader.file, { info, bytes: new Uint8Array(0) }); // named, and not a dtype lora-wasm reads: says so
      if (isEmptyShape(info.shape)) {
        empty[info.name] = { dtype: dtype!, shape: [...info.shape] };
        continue;
      }
      const data = tensorData(reader.file, await reader.read(info.name));
      const [rows, cols] = as2d(info.shape);
      tensors[info.name] = make(rows, cols, data, dtype!);
      shapes[info.name] = [...info.shape];
    }
  } catch (e) {
    for (const m of Object.values(tensors)) m.dispose();
    throw e;
  }
  return { tensors, shapes, metadata: Object.assign(record<string>(), reader.metadata), skipped, empty };
}

export function saveTensors(set: TensorSet): Uint8Array {
  const fn = 'saveTensors';
  if (!isObject(set) || !isObject(set.tensors)) throw new LoRATypeError(`${fn}: expected { tensors, shapes, metadata }, got ${describeValue(set)}`);
  for (const key of ['shapes', 'metadata', 'empty'] as const) {
    if (set[key] != null && !isObject(set[key])) throw new LoRATypeError(`${fn}: set.${key} must be an object keyed by name, got ${describeValue(set[key])}`);
  }
  // own entries only: in a plain {}, shapes["constructor"] would be Object
  const own = <V>(r: Readonly<Record<string, V>> | undefined, k: string): V | undefined => (r != null && Object.hasOwn(r, k) ? r[k] : undefined);
  const out: { name: string; dtype: string; shape: readonly number[]; data: ArrayBufferView }[] = [];
  for (const [name, m] of Object.entries(set.tensors)) {
    const st = isObject(m) && typeof m.toArray === 'function' ? ST_OF_DTYPE[m.dtype as DType] : undefined;
    if (st === undefined) throw new LoRATypeError(`${fn}: tensors[${quoteName(name)}] must be a Matrix, got ${describeValue(m)}`);
    const shape = own(set.shapes, name) ?? [m.rows, m.cols];
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0) || numelOf(shape) !== m.rows * m.cols) {
      throw new LoRAShapeError(`${fn}: shapes[${quoteName(name)}] is ${JSON.stringify(shape)} but the matrix is [${m.rows}, ${m.cols}]; the shape must hold ${m.rows * m.cols} elements`);
    }
    out.push({ name, dtype: st, shape, data: m.toArray() });
  }
  for (const [name, e] of Object.entries(set.empty ?? {})) {
    const st = isObject(e) ? ST_OF_DTYPE[e.dtype as DType] : undefined;
    if (st === undefined) throw new LoRATypeError(`${fn}: empty[${quoteName(name)}] must be { dtype: 'f32' | 'f16' | 'bf16', shape }, got ${describeValue(e)}`);
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0) || !isEmptyShape(e.shape)) {
      throw new LoRAShapeError(`${fn}: empty[${quoteName(name)}].shape must be a shape with a 0 in it, got ${JSON.stringify(e.shape)}`);
    }
    out.push({ name, dtype: st, shape: e.shape, data: new Uint8Array(0) });
  }
  return encodeSafetensors(out, set.metadata);
}
