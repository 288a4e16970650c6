/**
 * Matrix: a row-major f32 [rows, cols] block resident in wasm memory.
 *
 * Lifetime is explicit: dispose() (or `using m = lw.matrix(...)`) frees it.
 * A FinalizationRegistry frees forgotten matrices eventually, as a leak
 * backstop only; it is not a substitute for dispose(). A view taken from
 * `m.data` does not keep the matrix alive: once the matrix is disposed or
 * collected, passing that view back in is refused (LoRADisposedError).
 */
import { LoRADisposedError, LoRATypeError } from '../errors.js';
import { type DataOf, type DType, type HalfDType, ITEM_BYTES } from './dtype.js';
import { decodeHalf } from './half.js';
import type { Block, WasmHeap } from './heap.js';

/** `Symbol.dispose` where the engine has it (Node ≥ 20.4, Chromium ≥ 134), else the well-known fallback. */
export const disposeSymbol: typeof Symbol.dispose =
  (Symbol as { dispose?: typeof Symbol.dispose }).dispose ?? (Symbol.for('Symbol.dispose') as typeof Symbol.dispose);

/** Only lora-wasm creates matrices (lw.matrix, lw.delta, layers); `new Matrix()` from outside is refused. */
export const MATRIX_TOKEN: unique symbol = Symbol('lora-wasm.Matrix');

const backstop = new FinalizationRegistry<{ heap: WasmHeap; block: Block }>(({ heap, block }) => {
  if (heap.isLive(block)) heap.free(block);
});

export type { DataOf, DType, HalfDType } from './dtype.js';
export { DTYPES } from './dtype.js';

export class Matrix<D extends DType = 'f32'> {
  /** Number of rows. */
  readonly rows: number;
  /** Number of columns. */
  readonly cols: number;
  /** Element type. */
  readonly dtype: D;
  /** @internal */
  readonly heap: WasmHeap;
  /** @internal the allocation; checked for liveness on every use */
  readonly block: Block;
  #view: DataOf<D> | undefined;
  #disposed = false;

  /** @internal use `lw.matrix(rows, cols, data?)` */
  constructor(token: typeof MATRIX_TOKEN, heap: WasmHeap, block: Block, rows: number, cols: number, dtype: D = 'f32' as D) {
    if (token !== MATRIX_TOKEN) throw new LoRATypeError('Matrix: create matrices with lw.matrix(rows, cols, data?)');
    this.heap = heap;
    this.dtype = dtype;
    this.block = block;
    this.rows = rows;
    this.cols = cols;
    backstop.register(this, { heap, block }, this);
  }

  /** @internal byte pointer into wasm memory */
  get ptr(): number {
    return this.block.ptr;
  }

  /**
   * Live row-major view of the matrix in wasm memory: writes go straight to
   * the matrix. A Float32Array for f32; for f16 and bf16 the raw Uint16Array
   * of bit patterns (Node 20 has no Float16Array; `toFloat32()` decodes). The
   * getter always returns a valid view, also after wasm memory has grown; a
   * view you stored in a variable is detached by any later allocation, so read
   * `m.data` again after allocating.
   */
  get data(): DataOf<D> {
    this.assertLive('data');
    const n = this.rows * this.cols;
    this.#view = (this.dtype === 'f32'
      ? this.heap.view(this.block, n, this.#view as Float32Array | undefined)
      : this.heap.viewU16(this.block, n, this.#view as Uint16Array | undefined)) as DataOf<D>;
    return this.#view;
  }

  /** rows · cols */
  get length(): number {
    return this.rows * this.cols;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** A copy of the data (not a view): a Float32Array, or for half types a Uint16Array of bit patterns. */
  toArray(): DataOf<D> {
    return this.data.slice() as DataOf<D>;
  }

  /** The values as a fresh Float32Array, decoded exactly from f16/bf16 (a copy for f32). */
  toFloat32(): Float32Array {
    return this.dtype === 'f32' ? (this.data as Float32Array).slice() : decodeHalf(this.data as Uint16Array, this.dtype as HalfDType);
  }

  /** Frees the wasm memory. Idempotent; any later use throws LoRADisposedError. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#view = undefined;
    backstop.unregister(this);
    if (this.heap.isLive(this.block)) this.heap.free(this.block);
  }

  [disposeSymbol](): void {
    this.dispose();
  }

  /** @internal */
  assertLive(what: string): void {
    if (this.#disposed || !this.heap.isLive(this.block)) {
      throw new LoRADisposedError(`${what}: Matrix [${this.rows}, ${this.cols}] was disposed and cannot be used`);
    }
  }

  get [Symbol.toStringTag](): string {
    return `Matrix [${this.rows}, ${this.cols}]${this.dtype === 'f32' ? '' : ` ${this.dtype}`}`;
  }
}

/** A new Matrix over a fresh block (zeroed when asked). */
export function newMatrix<D extends DType = 'f32'>(heap: WasmHeap, what: string, rows: number, cols: number, zeroed = false, dtype: D = 'f32' as D): Matrix<D> {
  const bytes = rows * cols * ITEM_BYTES[dtype];
  return new Matrix<D>(MATRIX_TOKEN, heap, zeroed ? heap.allocZeroed(bytes, what) : heap.alloc(bytes, what), rows, cols, dtype);
}
