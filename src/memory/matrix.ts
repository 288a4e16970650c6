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
import type { Block, WasmHeap } from './heap.js';

/** `Symbol.dispose` where the engine has it (Node ≥ 20.4, Chromium ≥ 134), else the well-known fallback. */
export const disposeSymbol: typeof Symbol.dispose =
  (Symbol as { dispose?: typeof Symbol.dispose }).dispose ?? (Symbol.for('Symbol.dispose') as typeof Symbol.dispose);

/** Only lora-wasm creates matrices (lw.matrix, lw.delta, layers); `new Matrix()` from outside is refused. */
export const MATRIX_TOKEN: unique symbol = Symbol('lora-wasm.Matrix');

const backstop = new FinalizationRegistry<{ heap: WasmHeap; block: Block }>(({ heap, block }) => {
  if (heap.isLive(block)) heap.free(block);
});

/** Element types. f16 and bf16 join with half precision. */
export type DType = 'f32';

export class Matrix {
  /** Number of rows. */
  readonly rows: number;
  /** Number of columns. */
  readonly cols: number;
  /** Element type. */
  readonly dtype: DType = 'f32';
  /** @internal */
  readonly heap: WasmHeap;
  /** @internal the allocation; checked for liveness on every use */
  readonly block: Block;
  #view: Float32Array | undefined;
  #disposed = false;

  /** @internal use `lw.matrix(rows, cols, data?)` */
  constructor(token: typeof MATRIX_TOKEN, heap: WasmHeap, block: Block, rows: number, cols: number) {
    if (token !== MATRIX_TOKEN) throw new LoRATypeError('Matrix: create matrices with lw.matrix(rows, cols, data?)');
    this.heap = heap;
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
   * the matrix. The getter always returns a valid view, also after wasm memory
   * has grown; a view you stored in a variable is detached by any later
   * allocation, so read `m.data` again after allocating.
   */
  get data(): Float32Array {
    this.assertLive('data');
    this.#view = this.heap.view(this.block, this.rows * this.cols, this.#view);
    return this.#view;
  }

  /** rows · cols */
  get length(): number {
    return this.rows * this.cols;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** A copy of the data as a fresh Float32Array (not a view). */
  toArray(): Float32Array {
    return this.data.slice();
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
    return `Matrix [${this.rows}, ${this.cols}]`;
  }
}

/** A new Matrix over a fresh block (zeroed when asked). */
export function newMatrix(heap: WasmHeap, what: string, rows: number, cols: number, zeroed = false): Matrix {
  const bytes = rows * cols * 4;
  return new Matrix(MATRIX_TOKEN, heap, zeroed ? heap.allocZeroed(bytes, what) : heap.alloc(bytes, what), rows, cols);
}
