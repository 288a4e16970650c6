/**
 * What every layer shares: the Layer contract, trainable Parameters, and
 * layer-owned buffers.
 *
 * Layers own their outputs and gradients: `forward` returns a Matrix that
 * the layer overwrites on its next forward at that batch size (copy it with
 * toArray() to keep it), and `backward` likewise. Buffers are kept for the
 * last two batch sizes (a full batch and a partial last one), so after the
 * first step at each size a training loop allocates nothing.
 *
 * Every forward/backward checks, before it writes anything, that each matrix
 * it will touch is alive and belongs to its instance; a call that throws
 * leaves the layer as it was (its last forward can still be back-propagated).
 *
 * The built-in layers share LayerBase: the instance they belong to, the
 * disposed flag (LoRADisposedError after dispose()), the buffer caches and the
 * last forward, so Sequential can check and clean up any of them.
 */
import { LoRADisposedError, LoRAShapeError } from '../errors.js';
import { type MatrixDesc, describe } from '../kernel/descriptor.js';
import { type Matrix, newMatrix } from '../memory/matrix.js';
import type { Engine } from '../runtime/engine.js';
import { type Operand, checkMatrix, operand, shapeOf } from '../ops/operands.js';

/** A trainable tensor and its gradient (same shape), as optimizers see it. */
export interface Parameter {
  readonly name: string;
  readonly value: Matrix;
  readonly grad: Matrix;
}

export interface Layer {
  /** Y = layer(X) for X: [n, dIn]; returns a layer-owned Matrix [n, dOut]. */
  forward(x: Matrix | { rows: number; cols: number; data: Float32Array }): Matrix;
  /** From G = ∂L/∂Y: fills the parameters' grads; returns ∂L/∂X when `inputGrad`, else undefined. */
  backward(g: Matrix | { rows: number; cols: number; data: Float32Array }): Matrix | undefined;
  parameters(): Parameter[];
  /** Whether backward() computes ∂L/∂X (not needed for a model's first layer). */
  inputGrad: boolean;
  readonly trainableParameters: number;
  readonly frozenParameters: number;
  dispose(): void;
}

/**
 * Per-batch-size buffers: `get(shapes)` returns the named matrices of those
 * shapes, allocating all of them or none (a failure frees what it made and
 * leaves the cache as it was). At most two sets are kept (a full batch and a
 * partial last one); a third evicts the least recently used.
 */
export class ActivationCache<K extends string> {
  readonly #engine: Engine;
  readonly #fn: string;
  #entries: { key: string; m: Record<K, Matrix> }[] = [];

  constructor(engine: Engine, fn: string) {
    this.#engine = engine;
    this.#fn = fn;
  }

  get(shapes: Record<K, [number, number]>): Record<K, Matrix> {
    const key = Object.values<[number, number]>(shapes).join(';');
    const hit = this.#entries.findIndex((e) => e.key === key);
    if (hit >= 0) {
      const e = this.#entries[hit]!;
      if (hit !== this.#entries.length - 1) this.#entries.push(...this.#entries.splice(hit, 1));
      return e.m;
    }
    const made: Matrix[] = [];
    const m = {} as Record<K, Matrix>;
    try {
      for (const key of Object.keys(shapes) as K[]) {
        const [rows, cols] = shapes[key];
        m[key] = newMatrix(this.#engine.heap, this.#fn, rows, cols);
        made.push(m[key]);
      }
    } catch (e) {
      for (const x of made) x.dispose();
      throw e;
    }
    this.#entries.push({ key, m });
    if (this.#entries.length > 2) for (const x of Object.values<Matrix>(this.#entries.shift()!.m)) x.dispose();
    return m;
  }

  /** Frees every buffer. */
  clear(): void {
    for (const e of this.#entries) for (const x of Object.values<Matrix>(e.m)) x.dispose();
    this.#entries = [];
  }
}

/**
 * The internal base of the built-in layers. `Last` is what the last forward
 * left for backward (undefined when there is nothing to back-propagate).
 */
export abstract class LayerBase<Last = unknown> implements Layer {
  abstract inputGrad: boolean;
  abstract readonly trainableParameters: number;
  abstract readonly frozenParameters: number;
  abstract forward(x: Matrix | { rows: number; cols: number; data: Float32Array }): Matrix;
  abstract backward(g: Matrix | { rows: number; cols: number; data: Float32Array }): Matrix | undefined;
  abstract parameters(): Parameter[];
  /** What the last forward left for backward. */
  protected last: Last | undefined;
  readonly #engine: Engine;
  readonly #caches: ActivationCache<string>[] = [];
  #disposed = false;

  constructor(engine: Engine) {
    this.#engine = engine;
  }

  /** The instance a built-in layer belongs to, or undefined for any other layer (Sequential refuses another instance's layers). */
  static engineOf(layer: unknown): Engine | undefined {
    return layer instanceof LayerBase ? layer.#engine : undefined;
  }

  /** Frees a built-in layer's activations (Sequential.fit, after a failed run); other layers are left alone. */
  static dropActivations(layer: unknown): void {
    if (layer instanceof LayerBase) layer.dropActivations();
  }

  protected get engine(): Engine {
    return this.#engine;
  }

  /** The layer for messages, e.g. 'LoRALinear [4, 8]'. */
  protected abstract get what(): string;

  /** The matrices the layer owns, freed by dispose(). */
  protected abstract owned(): (Matrix | undefined)[];

  /** A per-batch-size buffer set (named `fn` in messages), freed with the activations. */
  protected buffers<K extends string>(fn: string): ActivationCache<K> {
    const cache = new ActivationCache<K>(this.#engine, fn);
    this.#caches.push(cache as unknown as ActivationCache<string>);
    return cache;
  }

  /** Throws LoRADisposedError once disposed, and unless every named matrix is alive and of this instance. */
  protected check(fn: string, named: Record<string, Matrix | undefined> = {}): void {
    if (this.#disposed) throw new LoRADisposedError(`${fn}: this ${this.what} was disposed`);
    for (const [name, m] of Object.entries(named)) if (m) checkMatrix(this.#engine.heap, fn, name, m);
  }

  /** Frees every activation buffer and forgets the last forward. */
  protected dropActivations(): void {
    for (const c of this.#caches) c.clear();
    this.last = undefined;
  }

  /** Frees the buffers and the matrices the layer owns. Idempotent; any later use throws LoRADisposedError. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.dropActivations();
    for (const m of this.owned()) m?.dispose();
  }
}

/** A new zero-filled Matrix owned by the caller. */
export function zeros(engine: Engine, fn: string, rows: number, cols: number): Matrix {
  return newMatrix(engine.heap, fn, rows, cols, true);
}

/** Allocates every shape or none. */
export function allocAll(engine: Engine, fn: string, shapes: readonly (readonly [number, number])[]): Matrix[] {
  const made: Matrix[] = [];
  try {
    for (const [rows, cols] of shapes) made.push(zeros(engine, fn, rows, cols));
  } catch (e) {
    for (const m of made) m.dispose();
    throw e;
  }
  return made;
}

/** Validates X: [n, cols] (any n ≥ 1) as the input of a layer. */
export function inputOperand(engine: Engine, fn: string, x: unknown, cols: number, what: string): Operand {
  const op = operand(engine.heap, fn, 'X', x);
  if (op.cols !== cols) throw new LoRAShapeError(`${fn}: X is ${shapeOf(op)} but ${what}; X must have ${cols} columns`);
  return op;
}

/** Copies a validated operand into a layer-owned buffer of its shape (no allocation). */
export function copyInto(engine: Engine, fn: string, into: Matrix, op: Operand): void {
  if (op.desc) engine.kernel.copy(fn, describe(into, 'X'), op.desc);
  else engine.heap.view(into.block, op.rows * op.cols).set(op.plain!);
}

/** Validates G = ∂L/∂Y against the [rows, cols] output of the last forward; it must be resident or is staged by the caller. */
export function gradOperand(engine: Engine, fn: string, g: unknown, rows: number, cols: number): Operand {
  const op = operand(engine.heap, fn, 'G', g);
  if (op.rows !== rows || op.cols !== cols) {
    throw new LoRAShapeError(`${fn}: G is ${shapeOf(op)} but the last forward produced Y [${rows}, ${cols}]; G must match it`);
  }
  return op;
}

/** y = bias + x·wᵀ (nn.Linear) for x: [n, dIn], w: [dOut, dIn] read in place, bias: [1, dOut] or none. */
export function linearForward(engine: Engine, fn: string, y: MatrixDesc, x: MatrixDesc, w: MatrixDesc, bias: MatrixDesc | undefined): void {
  if (bias) engine.kernel.broadcastRows(fn, y, bias);
  engine.kernel.gemm(fn, y, x, w, { transY: true, beta: bias ? 1 : 0 });
}
