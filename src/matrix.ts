/**
 * Matrix: a row-major f32 [rows, cols] block resident in wasm memory.
 *
 * Lifetime is explicit: dispose() (or `using m = lw.matrix(...)`) frees it.
 * A FinalizationRegistry frees forgotten matrices eventually, as a leak
 * backstop only; it is not a substitute for dispose().
 */
import { LoRADisposedError, LoRATypeError } from './errors.js';
import type { WasmHeap } from './memory.js';

/** `Symbol.dispose` where the engine has it (Node ≥ 20.4, Chromium ≥ 134), else the well-known fallback. */
export const disposeSymbol: typeof Symbol.dispose =
  (Symbol as { dispose?: typeof Symbol.dispose }).dispose ?? (Symbol.for('Symbol.dispose') as typeof Symbol.dispose);

/** Only lora-wasm creates matrices (lw.matrix, lw.delta); `new Matrix()` from outside is refused. */
export const MATRIX_TOKEN: unique symbol = Symbol('lora-wasm.Matrix');

const backstop = new FinalizationRegistry<{ heap: WasmHeap; ptr: number }>(({ heap, ptr }) => heap.free(ptr));

export class Matrix {
  /** Number of rows. */
  readonly rows: number;
  /** Number of columns. */
  readonly cols: number;
  /** @internal byte pointer into wasm memory */
  readonly ptr: number;
  /** @internal */
  readonly heap: WasmHeap;
  #view: Float32Array | undefined;
  #disposed = false;

  /** @internal use `lw.matrix(rows, cols, data?)` */
  constructor(token: typeof MATRIX_TOKEN, heap: WasmHeap, ptr: number, rows: number, cols: number) {
    if (token !== MATRIX_TOKEN) throw new LoRATypeError('Matrix: create matrices with lw.matrix(rows, cols, data?)');
    this.heap = heap;
    this.ptr = ptr;
    this.rows = rows;
    this.cols = cols;
    backstop.register(this, { heap, ptr }, this);
  }

  /**
   * Live row-major view of the matrix in wasm memory: writes go straight to
   * the matrix. The getter always returns a valid view, also after wasm memory
   * has grown; a view you stored in a variable is detached by any later
   * allocation, so read `m.data` again after allocating.
   */
  get data(): Float32Array {
    this.assertLive('data');
    this.#view = this.heap.f32(this.ptr, this.rows * this.cols, this.#view);
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
    this.heap.free(this.ptr);
  }

  [disposeSymbol](): void {
    this.dispose();
  }

  /** @internal */
  assertLive(what: string): void {
    if (this.#disposed) {
      throw new LoRADisposedError(`${what}: Matrix [${this.rows}, ${this.cols}] was disposed and cannot be used`);
    }
  }

  get [Symbol.toStringTag](): string {
    return `Matrix [${this.rows}, ${this.cols}]`;
  }
}
