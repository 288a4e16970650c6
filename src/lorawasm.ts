/**
 * LoRAWasm: one loaded module with its own wasm memory. Get it from init().
 * Every method validates its arguments before wasm is touched.
 */
import { LoRAError, LoRAShapeError, LoRATypeError } from './errors.js';
import { MATRIX_TOKEN, Matrix } from './matrix.js';
import type { MemoryStats } from './memory.js';
import { type MatrixInput, checkDim, describeValue, isFloat32Array } from './operands.js';
import { type MergeOptions, type ScaleOptions, delta, merge, mergeInto, unmerge } from './rank.js';
import type { Build, Engine } from './runtime.js';
import { ReLU } from './activation.js';
import { Linear, type LinearOptions } from './dense.js';
import { type GemmOptions, gemm, matmul } from './gemm.js';
import type { Layer, Parameter } from './layer.js';
import { type CrossEntropyResult, mseLoss, softmaxCrossEntropy } from './loss.js';
import { LoRALinear, type LoRALinearOptions } from './lora.js';
import { Sequential } from './model.js';
import { AdamW, type AdamWOptions, SGD, type SGDOptions } from './optim.js';

export class LoRAWasm {
  /** The wasm flavour running: 'relaxed' (f32x4.relaxed_madd) or 'baseline' (mul + add). */
  readonly build: Build;
  readonly #engine: Engine;

  /** @internal use init() */
  constructor(engine: Engine) {
    this.#engine = engine;
    this.build = engine.build;
  }

  /** The wasm memory every Matrix of this instance lives in. */
  get memory(): WebAssembly.Memory {
    return this.#engine.heap.memory;
  }

  /** Heap figures, for leak checks: memory size, live bytes and blocks. */
  memoryStats(): MemoryStats {
    return this.#engine.heap.stats();
  }

  /**
   * Allocates a [rows, cols] row-major f32 Matrix in wasm memory, zero-filled
   * or copied from `data` (a Float32Array or number[] of rows·cols values).
   * Free it with dispose().
   */
  matrix(rows: number, cols: number, data?: Float32Array | readonly number[]): Matrix {
    checkDim('matrix', 'rows', rows);
    checkDim('matrix', 'cols', cols);
    if (data !== undefined) {
      if (!isFloat32Array(data) && !Array.isArray(data)) {
        const hint = ArrayBuffer.isView(data) ? '; convert with Float32Array.from(…)' : '';
        throw new LoRATypeError(`matrix: data must be a Float32Array or number[], got ${describeValue(data)}${hint}`);
      }
      if (data.length !== rows * cols) {
        throw new LoRAShapeError(
          `matrix: data has length ${data.length} but the matrix is [${rows}, ${cols}]; it needs ${rows * cols}`,
        );
      }
    }
    const heap = this.#engine.heap;
    const bytes = rows * cols * 4;
    const m = new Matrix(MATRIX_TOKEN, heap, data === undefined ? heap.allocZeroed(bytes, 'matrix') : heap.alloc(bytes, 'matrix'), rows, cols);
    if (data !== undefined) m.data.set(data);
    return m;
  }

  /** Δ = s·A·B. A: [dOut, r], B: [r, dIn]. Allocates and returns a new Matrix [dOut, dIn]. */
  delta(a: MatrixInput, b: MatrixInput, opts?: ScaleOptions): Matrix {
    return this.#guard('delta', () => delta(this.#engine, a, b, opts));
  }

  /** W ← W + s·A·B in place, one fused pass over W. W: [dOut, dIn]. Returns W. */
  merge<T extends MatrixInput>(w: T, a: MatrixInput, b: MatrixInput, opts?: MergeOptions): T {
    return this.#guard('merge', () => merge(this.#engine, w, a, b, opts));
  }

  /** W ← W − s·A·B in place: undoes merge() with the same A, B and scale. Returns W. */
  unmerge<T extends MatrixInput>(w: T, a: MatrixInput, b: MatrixInput, opts?: MergeOptions): T {
    return this.#guard('unmerge', () => unmerge(this.#engine, w, a, b, opts));
  }

  /**
   * out ← W0 + s·A·B, W0 untouched. Bit-identical to merging a fresh copy of
   * W0, so adapters can be hot-swapped from a frozen W0 with zero drift.
   * out may be W0 itself (then it is merge()). Returns out.
   */
  mergeInto<T extends MatrixInput>(out: T, w0: MatrixInput, a: MatrixInput, b: MatrixInput, opts?: MergeOptions): T {
    return this.#guard('mergeInto', () => mergeInto(this.#engine, out, w0, a, b, opts));
  }

  /**
   * C ← alpha·op(X)·op(Y) + beta·C (op = transpose when transX/transY). nn.Linear's
   * y = x·Wᵀ is gemm(Y, X, W, { transY: true }) with W stored [dOut, dIn]. Returns C.
   */
  gemm<T extends MatrixInput>(c: T, x: MatrixInput, y: MatrixInput, opts?: GemmOptions): T {
    return this.#guard('gemm', () => gemm(this.#engine, c, x, y, opts));
  }

  /** alpha·op(X)·op(Y) as a new Matrix (allocates). */
  matmul(x: MatrixInput, y: MatrixInput, opts?: Omit<GemmOptions, 'beta'>): Matrix {
    return this.#guard('matmul', () => matmul(this.#engine, x, y, opts));
  }

  /** A LoRA layer over a frozen W [dOut, dIn]: trainable A [dOut, r] (zeros) and B [r, dIn]. */
  linear(opts: LoRALinearOptions): LoRALinear {
    return this.#guard('linear', () => new LoRALinear(this.#engine, opts));
  }

  /** A fully trainable nn.Linear (for pretraining a base model). */
  dense(opts: LinearOptions): Linear {
    return this.#guard('dense', () => new Linear(this.#engine, opts));
  }

  /** A ReLU layer. */
  relu(): ReLU {
    return new ReLU(this.#engine);
  }

  /** Layers applied in order, with fit()/predict(); takes ownership of the layers (dispose() frees them). */
  sequential(layers: Layer[]): Sequential {
    return new Sequential(this.#engine, layers);
  }

  /** SGD with momentum over params (e.g. model.parameters()). */
  sgd(params: Parameter[], opts?: SGDOptions): SGD {
    return this.#guard('sgd', () => new SGD(this.#engine, params, opts));
  }

  /** AdamW with bias correction and decoupled weight decay over params. */
  adamw(params: Parameter[], opts?: AdamWOptions): AdamW {
    return this.#guard('adamw', () => new AdamW(this.#engine, params, opts));
  }

  /** mean((pred − target)²); writes 2·(pred − target)/count into grad when given. */
  mseLoss(pred: MatrixInput, target: MatrixInput, grad?: MatrixInput): number {
    return this.#guard('mseLoss', () => mseLoss(this.#engine, pred, target, grad));
  }

  /** Stable softmax cross-entropy with integer labels; writes (softmax − onehot)/n into grad when given. */
  softmaxCrossEntropy(logits: MatrixInput, labels: Int32Array | readonly number[], grad?: MatrixInput): CrossEntropyResult {
    return this.#guard('softmaxCrossEntropy', () => softmaxCrossEntropy(this.#engine, logits, labels, grad));
  }

  /** Turns a wasm trap (a bug: checks should have caught it) into a LoRAError, never a RuntimeError. */
  #guard<T>(fn: string, body: () => T): T {
    try {
      return body();
    } catch (e) {
      if (e instanceof WebAssembly.RuntimeError) {
        throw new LoRAError(`${fn}: internal error, the wasm kernel trapped (${e.message}); please report this`, {
          cause: e,
        });
      }
      throw e;
    }
  }
}
