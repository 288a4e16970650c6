/**
 * Matrix descriptors: what the kernel layer works on.
 *
 *   { heap, block, offset, rows, cols, ld, dtype, name }
 *   element [i, j] lives at block.ptr + offset + (i·ld + j)·itemsize
 *
 * A descriptor names an allocation (block) rather than a bare pointer, so the
 * kernel layer can check on every call that the bytes still belong to their
 * owner: a disposed, collected or foreign matrix is refused before any kernel
 * runs. Descriptors are made per call and never stored.
 */
import type { Block, WasmHeap } from '../memory/heap.js';
import { ITEM_BYTES } from '../memory/dtype.js';
import type { DType, Matrix } from '../memory/matrix.js';

export interface MatrixDesc {
  readonly heap: WasmHeap;
  readonly block: Block;
  /** Byte offset of element [0, 0] inside the block. */
  readonly offset: number;
  readonly rows: number;
  readonly cols: number;
  /** Row stride in elements (≥ cols). */
  readonly ld: number;
  readonly dtype: DType;
  /** The argument's name in error messages, e.g. 'W', 'A', 'gradA'. */
  readonly name: string;
}


/** The descriptor of a whole Matrix. Liveness is checked where it is used, not here. */
export function describe(m: Matrix<DType>, name: string): MatrixDesc {
  return { heap: m.heap, block: m.block, offset: 0, rows: m.rows, cols: m.cols, ld: m.cols, dtype: m.dtype, name };
}

/** A descriptor over a block the caller just allocated (temporaries, staging). */
export function describeBlock(heap: WasmHeap, block: Block, rows: number, cols: number, name: string, dtype: DType = 'f32'): MatrixDesc {
  return { heap, block, offset: 0, rows, cols, ld: cols, dtype, name };
}

export const shapeOf = (x: { rows: number; cols: number }): string => `[${x.rows}, ${x.cols}]`;

/** Rows [r0, r1) of a whole Matrix (row-major, so still contiguous). */
export function describeRows(m: Matrix<DType>, r0: number, r1: number, name: string): MatrixDesc {
  return { heap: m.heap, block: m.block, offset: r0 * m.cols * ITEM_BYTES[m.dtype], rows: r1 - r0, cols: m.cols, ld: m.cols, dtype: m.dtype, name };
}
