/**
 * lw.matrix(rows, cols, data?): a new resident Matrix, zero-filled or copied
 * from data. Every element of a number[] is checked to be a number; a view of
 * another Matrix (`src.data`) is copied from its block after the allocation,
 * so memory growth on the way cannot detach it.
 */
import { LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { describe } from '../kernel/descriptor.js';
import { type Matrix, newMatrix } from '../memory/matrix.js';
import type { Engine } from '../runtime/engine.js';
import { checkDim, isFloat32Array, operand } from './operands.js';

export function createMatrix(engine: Engine, rows: unknown, cols: unknown, data?: unknown): Matrix {
  const fn = 'matrix';
  checkDim(fn, 'rows', rows);
  checkDim(fn, 'cols', cols);
  if (data === undefined) return newMatrix(engine.heap, fn, rows, cols, true);
  if (!isFloat32Array(data) && !Array.isArray(data)) {
    const hint = ArrayBuffer.isView(data) ? '; convert with Float32Array.from(…)' : '';
    throw new LoRATypeError(`${fn}: data must be a Float32Array or number[], got ${describeValue(data)}${hint}`);
  }
  if (data.length !== rows * cols) {
    throw new LoRAShapeError(`${fn}: data has length ${data.length} but the matrix is [${rows}, ${cols}]; it needs ${rows * cols}`);
  }
  if (Array.isArray(data)) {
    for (let i = 0; i < data.length; i++) {
      if (typeof data[i] !== 'number') {
        throw new LoRATypeError(`${fn}: data[${i}] is ${describeValue(data[i])}; every element must be a number`);
      }
    }
    const m = newMatrix(engine.heap, fn, rows, cols);
    m.data.set(data as number[]);
    return m;
  }
  // A Float32Array: plain JS data, or a view of a live Matrix (refused if its owner is gone).
  const src = operand(engine.heap, fn, 'data', { rows, cols, data });
  const m = newMatrix(engine.heap, fn, rows, cols);
  if (src.desc) engine.kernel.copy(fn, describe(m, 'matrix'), src.desc);
  else m.data.set(src.plain!);
  return m;
}
