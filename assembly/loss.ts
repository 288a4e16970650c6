// Losses with their gradients, over row-major [n, c] predictions.

import { exp64, log64 } from './math';

/**
 * Mean squared error over all n·c elements, in f64:
 *   L = Σ (p − t)² / (n·c),   grad = 2·(p − t) / (n·c)   (grad written when grad != 0)
 */
export function mseLoss(pred: usize, target: usize, grad: usize, count: i32): f64 {
  let sum: f64 = 0;
  const k: f64 = 2.0 / <f64>count;
  for (let i = 0; i < count; i++) {
    const o = <usize>i << 2;
    const d = <f64>load<f32>(pred + o) - <f64>load<f32>(target + o); // exact in f64
    sum += d * d;
    if (grad) store<f32>(grad + o, <f32>(k * d));
  }
  return sum / <f64>count;
}

/**
 * Softmax cross-entropy with integer labels (i32 per row), averaged over rows,
 * numerically stable (the row max is subtracted before exp):
 *   L = mean_i [ log Σ_j exp(z_ij − max_i) − (z_i,y_i − max_i) ]
 *   grad_ij = (softmax(z_i)_j − [j == y_i]) / n              (written when grad != 0)
 * Returns the loss; writes the number of rows whose argmax equals the label to *correct.
 */
export function softmaxCrossEntropy(logits: usize, labels: usize, grad: usize, n: i32, c: i32, correct: usize): f64 {
  let total: f64 = 0;
  let hits = 0;
  const invN: f64 = 1.0 / <f64>n;
  for (let i = 0; i < n; i++) {
    const row = logits + (<usize>i * <usize>c << 2);
    const y = load<i32>(labels + (<usize>i << 2));
    let mx = load<f32>(row);
    let arg = 0;
    for (let j = 1; j < c; j++) {
      const z = load<f32>(row + (<usize>j << 2));
      if (z > mx) {
        mx = z;
        arg = j;
      }
    }
    if (arg == y) hits++;
    let sum: f64 = 0;
    for (let j = 0; j < c; j++) sum += exp64(<f64>(load<f32>(row + (<usize>j << 2)) - mx));
    const logSum = log64(sum);
    total += logSum - <f64>(load<f32>(row + (<usize>y << 2)) - mx);
    if (grad) {
      const grow = grad + (<usize>i * <usize>c << 2);
      for (let j = 0; j < c; j++) {
        const p = exp64(<f64>(load<f32>(row + (<usize>j << 2)) - mx) - logSum);
        store<f32>(grow + (<usize>j << 2), <f32>((p - (j == y ? 1.0 : 0.0)) * invN));
      }
    }
  }
  if (correct) store<i32>(correct, hits);
  return total * invN;
}
