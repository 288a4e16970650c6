/**
 * lw.matrix(rows, cols, data?, { dtype }): a new resident Matrix, zero-filled
 * or copied from data. Every element of a number[] is checked to be a number;
 * a view of another Matrix (`src.data`) is copied from its block after the
 * allocation, so memory growth on the way cannot detach it.
 *
 * For f16/bf16: a Uint16Array is taken as raw bit patterns; a Float32Array or
 * number[] as values, encoded by the kernel (round to nearest, ties to even).
 */
import { LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { describe } from '../kernel/descriptor.js';
import { DTYPES, type DType, type Matrix, newMatrix } from '../memory/matrix.js';
import type { Engine } from '../runtime/engine.js';
import { ANY_DTYPE, checkDim, isFloat32Array, operand, optionsObject, withStaging } from './operands.js';

export interface MatrixOptions<D extends DType = DType> {
  /** Element type: 'f32' (default), 'f16' or 'bf16'. */
  dtype?: D;
}

export function createMatrix(engine: Engine, rows: unknown, cols: unknown, data?: unknown, opts?: unknown): Matrix<DType> {
  const fn = 'matrix';
  checkDim(fn, 'rows', rows);
  checkDim(fn, 'cols', cols);
  const o = optionsObject<MatrixOptions>(fn, opts, "{ dtype: 'f16' }");
  const dtype = o.dtype ?? 'f32';
  if (!DTYPES.includes(dtype)) throw new LoRATypeError(`${fn}: options.dtype must be 'f32', 'f16' or 'bf16', got ${describeValue(o.dtype)}`);
  if (data === undefined) return newMatrix(engine.heap, fn, rows, cols, true, dtype);
  const bits = dtype !== 'f32' && data instanceof Uint16Array;
  if (!isFloat32Array(data) && !Array.isArray(data) && !bits) {
    const hint = ArrayBuffer.isView(data) ? '; convert with Float32Array.from(…)' : '';
    const want = dtype === 'f32' ? 'a Float32Array or number[]' : `a Uint16Array of ${dtype} bit patterns, or a Float32Array or number[] of values`;
    throw new LoRATypeError(`${fn}: data must be ${want}, got ${describeValue(data)}${hint}`);
  }
  const length = (data as ArrayLike<number>).length;
  if (length !== rows * cols) {
    throw new LoRAShapeError(`${fn}: data has length ${length} but the matrix is [${rows}, ${cols}]; it needs ${rows * cols}`);
  }
  if (Array.isArray(data)) {
    for (let i = 0; i < data.length; i++) {
      if (typeof data[i] !== 'number') {
        throw new LoRATypeError(`${fn}: data[${i}] is ${describeValue(data[i])}; every element must be a number`);
      }
    }
    if (dtype === 'f32') {
      const m = newMatrix(engine.heap, fn, rows, cols);
      m.data.set(data as number[]);
      return m;
    }
    data = Float32Array.from(data as number[]);
  }
  // Plain JS data, or a view of a live Matrix (refused if its owner is gone): copied, or encoded by the kernel.
  const src = operand(engine.heap, fn, 'data', bits ? { rows, cols, data, dtype } : { rows, cols, data }, ANY_DTYPE);
  if (src.dtype === dtype) {
    // no conversion: one allocation, then a copy (from the source block, which growth cannot detach)
    const m = newMatrix(engine.heap, fn, rows, cols, false, dtype);
    if (src.desc) engine.kernel.copy(fn, describe(m, 'matrix'), src.desc);
    else m.data.set(src.plain!);
    return m;
  }
  return withStaging(engine.heap, fn, (staging) => {
    const sd = staging.input(src);
    const m = staging.result(newMatrix(engine.heap, fn, rows, cols, false, dtype));
    staging.load();
    engine.kernel.convert(fn, describe(m, 'matrix'), sd);
    return m;
  });
}
