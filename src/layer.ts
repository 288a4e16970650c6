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
import { gemmPtr } from './gemm.js';
import { MATRIX_TOKEN, Matrix } from './matrix.js';
import { type Operand, operand, shapeOf } from './operands.js';
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

/** y = bias + x·wᵀ (nn.Linear) for x: [n, dIn], w: [dOut, dIn] read in place, bias: [1, dOut] or none. */
export function linearForward(
  engine: Engine, fn: string, y: number, x: number, w: number, bias: Matrix | undefined, n: number, dOut: number, dIn: number,
): void {
  if (bias) engine.kernels.broadcastRows(y, bias.ptr, n, dOut);
  gemmPtr(engine, fn, y, x, w, n, dOut, dIn, false, true, 1, bias ? 1 : 0);
}

/** Validates G = ∂L/∂Y against the [rows, cols] output of the last forward. */
export function gradOperand(engine: Engine, fn: string, g: unknown, rows: number, cols: number): Operand {
  const op = operand(engine.heap, fn, 'G', g);
  if (op.rows !== rows || op.cols !== cols) {
    throw new LoRAShapeError(`${fn}: G is ${shapeOf(op)} but the last forward produced Y [${rows}, ${cols}]; G must match it`);
  }
  return op;
}
