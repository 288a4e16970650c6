/**
 * Losses with gradients (assembly/loss.ts). Each returns the loss and, when
 * `grad` is given, writes ∂L/∂pred into it (same shape as pred).
 */
import { LoRARangeError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import type { Engine } from '../runtime/engine.js';
import { type MatrixInput, assertDisjoint, operand, shapeOf, withStaging } from './operands.js';

/** L = mean((pred − target)²) over all elements; grad = 2·(pred − target)/count. grad may not overlap pred or target. */
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
  if (g) assertDisjoint(fn, g, [p, t]);
  return withStaging(engine.heap, fn, (staging) => {
    const pd = staging.input(p);
    const td = staging.input(t);
    const gd = g ? staging.output(g, false) : undefined;
    staging.load();
    const loss = engine.kernel.mseLoss(fn, pd, td, gd);
    staging.commit();
    return loss;
  });
}

export interface CrossEntropyResult {
  /** Mean over rows of −log softmax(logits)[label]. */
  loss: number;
  /** Rows whose largest logit is the label. */
  correct: number;
}

/**
 * Checks integer class labels: an Int32Array or number[] of `n` integers in
 * [0, classes) (classes = Infinity when not known yet). Holes, undefined,
 * fractions, negatives and values past 2³¹ − 1 are refused, never wrapped.
 */
export function checkLabels(fn: string, labels: unknown, n: number, classes: number): Int32Array | readonly number[] {
  if (!(labels instanceof Int32Array) && !Array.isArray(labels)) {
    throw new LoRATypeError(`${fn}: labels must be an Int32Array or number[], got ${describeValue(labels)}`);
  }
  if (labels.length !== n) {
    throw new LoRAShapeError(`${fn}: there are ${labels.length} labels for ${n} rows; one label per row`);
  }
  const top = Math.min(classes, 2 ** 31);
  for (let i = 0; i < labels.length; i++) {
    const y: unknown = labels[i];
    if (typeof y !== 'number' || !Number.isInteger(y) || y < 0 || y >= top) {
      const range = Number.isFinite(classes) ? `[0, ${classes})` : '[0, 2³¹)';
      throw new LoRARangeError(`${fn}: labels[${i}] is ${describeValue(y)}; labels must be integers in ${range}`);
    }
  }
  return labels;
}

/**
 * Softmax cross-entropy with integer class labels, numerically stable (each
 * row's max is subtracted before exp). logits: [n, classes]; labels: n
 * integers in [0, classes). grad = (softmax − one-hot)/n; it may not overlap logits.
 */
export function softmaxCrossEntropy(
  engine: Engine, logits: MatrixInput, labels: Int32Array | readonly number[], grad?: MatrixInput,
): CrossEntropyResult {
  const fn = 'softmaxCrossEntropy';
  const z = operand(engine.heap, fn, 'logits', logits);
  checkLabels(fn, labels, z.rows, z.cols);
  const g = grad === undefined ? undefined : operand(engine.heap, fn, 'grad', grad);
  if (g && (g.rows !== z.rows || g.cols !== z.cols)) {
    throw new LoRAShapeError(`${fn}: grad is ${shapeOf(g)} but logits is ${shapeOf(z)}; they must match`);
  }
  if (g) assertDisjoint(fn, g, [z]);
  return withStaging(engine.heap, fn, (staging) => {
    const zd = staging.input(z);
    const gd = g ? staging.output(g, false) : undefined;
    staging.load();
    const result = engine.kernel.softmaxCrossEntropy(fn, zd, labels, gd);
    staging.commit();
    return result;
  });
}
