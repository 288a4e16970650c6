/**
 * Whole tensor files to and from resident matrices: lw.loadTensors reads a safetensors file (every
 * F32/F16/BF16 tensor, or the ones named) into matrices, keeping each tensor's dtype and shape
 * ([n] becomes [1, n]; [a, b, …] becomes [a, b·…]); tensors of other dtypes (I64 position ids, …)
 * are listed in `skipped`, never dropped unsaid, and naming one is an error. lw.saveTensors writes a
 * set back.
 */
import { LoRATypeError, describeValue } from '../errors.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { DTYPE_OF_ST, ST_OF_DTYPE, type SafetensorsReader, as2d, encodeSafetensors, tensorData } from './safetensors.js';

export interface TensorSet {
  /** Matrices keyed by tensor name. */
  readonly tensors: Record<string, Matrix<DType>>;
  /** Each tensor's shape in the file. */
  readonly shapes: Record<string, number[]>;
  readonly metadata: Record<string, string>;
  /** Tensors not loaded because lora-wasm does not compute with their dtype, as `name (dtype)`. */
  readonly skipped?: string[];
}


export async function loadTensors(
  reader: SafetensorsReader, make: (rows: number, cols: number, data: Float32Array | Uint16Array, dtype: DType) => Matrix<DType>, names?: readonly string[],
): Promise<TensorSet> {
  const tensors: Record<string, Matrix<DType>> = {};
  const shapes: Record<string, number[]> = {};
  const skipped: string[] = [];
  try {
    for (const info of reader.tensors) {
      if (names && !names.includes(info.name)) continue;
      if (!names && !DTYPE_OF_ST[info.dtype]) {
        skipped.push(`${info.name} (${info.dtype})`);
        continue;
      }
      const data = tensorData(reader.file, await reader.read(info.name));
      const [rows, cols] = as2d(info.shape);
      tensors[info.name] = make(rows, cols, data, DTYPE_OF_ST[info.dtype]!);
      shapes[info.name] = [...info.shape];
    }
  } catch (e) {
    for (const m of Object.values(tensors)) m.dispose();
    throw e;
  }
  return { tensors, shapes, metadata: { ...reader.metadata }, skipped };
}

export function saveTensors(set: TensorSet): Uint8Array {
  if (typeof set !== 'object' || set === null || typeof set.tensors !== 'object') throw new LoRATypeError(`saveTensors: expected { tensors, shapes, metadata }, got ${describeValue(set)}`);
  return encodeSafetensors(Object.entries(set.tensors).map(([name, m]) => {
    const data = m.toArray();
    return { name, dtype: ST_OF_DTYPE[m.dtype], shape: set.shapes?.[name] ?? [m.rows, m.cols], data };
  }), set.metadata);
}
