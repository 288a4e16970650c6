/**
 * What every layer shares: the Layer contract, trainable Parameters, and
 * layer-owned buffers.
 *
 * Layers own their outputs and gradients: `forward` returns a Matrix that
 * the layer overwrites on its next forward (copy it with toArray() to keep
 * it), and `backward` likewise. Buffers are reused while the batch size
 * stays the same, so a training loop allocates nothing per step.
 */
import { LoRAShapeError } from './errors.js';
import { MATRIX_TOKEN, Matrix } from './matrix.js';
import { operand, shapeOf } from './operands.js';
import type { Engine } from './runtime.js';

/** A trainable tensor and its gradient (same shape), as optimizers see it. */
export interface Parameter {
  readonly name: string;
  readonly value: Matrix;
  readonly grad: Matrix;
}

export interface Layer {
  /** Y = layer(X) for X: [n, inFeatures]; returns a layer-owned Matrix [n, outFeatures]. */
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

/** `m` if it is live and [rows, cols], else a fresh (uninitialised) buffer; the old one is freed. */
export function ensureBuffer(engine: Engine, fn: string, m: Matrix | undefined, rows: number, cols: number): Matrix {
  if (m && !m.disposed && m.rows === rows && m.cols === cols) return m;
  m?.dispose();
  return new Matrix(MATRIX_TOKEN, engine.heap, engine.heap.alloc(rows * cols * 4, fn), rows, cols);
}

/** A new zero-filled Matrix owned by the caller. */
export function zeros(engine: Engine, fn: string, rows: number, cols: number): Matrix {
  return new Matrix(MATRIX_TOKEN, engine.heap, engine.heap.allocZeroed(rows * cols * 4, fn), rows, cols);
}

/**
 * Validates `x` as [n, cols] (any n ≥ 1) and copies it into the layer-owned
 * buffer `into`, so the layer can use it later (backward) whatever the caller
 * does with x meanwhile. Returns the buffer.
 */
export function saveInput(
  engine: Engine, fn: string, name: string, x: unknown, cols: number, what: string, into: Matrix | undefined,
): Matrix {
  const op = operand(engine.heap, fn, name, x);
  if (op.cols !== cols) {
    throw new LoRAShapeError(`${fn}: ${name} is ${shapeOf(op)} but ${what}; ${name} must have ${cols} columns`);
  }
  const plain = op.resident ? undefined : op.plain!.data;
  const buf = ensureBuffer(engine, fn, into, op.rows, cols);
  buf.data.set(plain ?? engine.heap.f32(op.ptr, op.rows * cols)); // read after ensureBuffer: it may grow memory
  return buf;
}
