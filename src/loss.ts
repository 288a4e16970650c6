/**
 * Losses with gradients (assembly/loss.ts). Each returns the loss and, when
 * `grad` is given, writes ∂L/∂pred into it (same shape as pred).
 */
import { LoRAShapeError, LoRATypeError } from './errors.js';
import { type MatrixInput, Staging, assertDisjoint, describeValue, operand, shapeOf } from './operands.js';
import type { Engine } from './runtime.js';

/** L = mean((pred − target)²) over all elements; grad = 2·(pred − target)/count. */
export function mseLoss(engine: Engine, pred: MatrixInput, target: MatrixInput, grad?: MatrixInput): number {
  const fn = 'mseLoss';
  const p = operand(engine.heap, fn, 'pred', pred);
  const t = operand(engine.heap, fn, 'target', target);
  if (p.rows !== t.rows || p.cols !== t.cols) {
    throw new LoRAShapeError(`${fn}: pred is ${shapeOf(p)} but target is ${shapeOf(t)}; they must match`);
  }
  const g = grad === undefined ? undefined : operand(engine.heap, fn, 'grad', grad);
  if (g && (g.rows !== p.rows || g.cols !== p.cols)) {
    throw new LoRAShapeError(`${fn}: grad is ${shapeOf(g)} but pred is ${shapeOf(p)}; they must match`);
  }
  if (g) assertDisjoint(fn, g, [t]);
  const staging = new Staging(engine.heap, fn);
  try {
    staging.input(p);
    staging.input(t);
    if (g) staging.output(g, false);
    const loss = engine.kernels.mseLoss(p.ptr, t.ptr, g ? g.ptr : 0, p.rows * p.cols);
    staging.commit();
    return loss;
  } finally {
    staging.release();
  }
}

export interface CrossEntropyResult {
  /** Mean over rows of −log softmax(logits)[label]. */
  loss: number;
  /** Rows whose largest logit is the label. */
  correct: number;
}

/**
 * Softmax cross-entropy with integer class labels, numerically stable (each
 * row's max is subtracted before exp). logits: [n, classes]; labels: n
 * integers in [0, classes). grad = (softmax − one-hot)/n.
 */
export function softmaxCrossEntropy(
  engine: Engine, logits: MatrixInput, labels: Int32Array | readonly number[], grad?: MatrixInput,
): CrossEntropyResult {
  const fn = 'softmaxCrossEntropy';
  const z = operand(engine.heap, fn, 'logits', logits);
  if (!(labels instanceof Int32Array) && !Array.isArray(labels)) {
    throw new LoRATypeError(`${fn}: labels must be an Int32Array or number[], got ${describeValue(labels)}`);
  }
  if (labels.length !== z.rows) {
    throw new LoRAShapeError(`${fn}: logits is ${shapeOf(z)} but labels has length ${labels.length}; one label per row`);
  }
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i]!;
    if (!Number.isInteger(y) || y < 0 || y >= z.cols) {
      throw new LoRAShapeError(`${fn}: labels[${i}] is ${y}; labels must be integers in [0, ${z.cols})`);
    }
  }
  const g = grad === undefined ? undefined : operand(engine.heap, fn, 'grad', grad);
  if (g && (g.rows !== z.rows || g.cols !== z.cols)) {
    throw new LoRAShapeError(`${fn}: grad is ${shapeOf(g)} but logits is ${shapeOf(z)}; they must match`);
  }
  const staging = new Staging(engine.heap, fn);
  try {
    staging.input(z);
    if (g) staging.output(g, false);
    const lab = staging.alloc(labels.length * 4 + 4);
    engine.heap.i32(lab, labels.length).set(labels);
    const correctPtr = lab + labels.length * 4;
    const loss = engine.kernels.softmaxCrossEntropy(z.ptr, lab, g ? g.ptr : 0, z.rows, z.cols, correctPtr);
    const correct = engine.heap.i32(correctPtr, 1)[0]!;
    staging.commit();
    return { loss, correct };
  } finally {
    staging.release();
  }
}
