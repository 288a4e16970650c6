/**
 * Sequential: layers applied in order, with a deterministic training loop.
 *
 * fit() validates everything first (options, every input and target value,
 * every label, and the labels against the model's outputs on the first
 * batch) before the first update. It shuffles with seededRandom(seed) each
 * epoch, runs forward, the loss, backward (last layer to first) and the
 * optimizer step per minibatch, and reports progress. Given the same seed,
 * data and initial weights, every run produces the same losses bit for bit.
 * If a run fails (out of memory, a callback that throws), the batch buffers
 * are freed, so a retry with a smaller batch starts as a fresh model would.
 *
 * The steps, in order: checkFitOptions → trainingData (JS copies, checked) →
 * per epoch shuffle → per minibatch gatherRows, forward, loss (with its
 * gradient), backward, optimizer step, progress.
 */
import { LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { type Matrix, newMatrix } from '../memory/matrix.js';
import { checkLabels, mseLoss, softmaxCrossEntropy } from '../ops/loss.js';
import { type MatrixInput, countOption, operand, rejectNonFiniteArray, seedOption, shapeOf } from '../ops/operands.js';
import { seededRandom } from '../random.js';
import type { Engine } from '../runtime/engine.js';
import { ActivationCache, type Layer, LayerBase, type Parameter } from './layer.js';
import { LoRALinear } from './lora-linear.js';

export interface FitProgress {
  epoch: number;
  /** Steps so far, over all epochs (1-based). */
  step: number;
  totalSteps: number;
  /** This minibatch's loss. */
  loss: number;
  samplesPerSecond: number;
}

export interface FitOptions {
  /** 'mse' with targets [N, outputs], or 'cross-entropy' with N integer labels. */
  loss: 'mse' | 'cross-entropy';
  optimizer: { step(): void };
  /** Default 1. */
  epochs?: number;
  /** Default 32 (at most N); the last batch of an epoch may be smaller. */
  batchSize?: number;
  /** Shuffling seed. Default 0. */
  seed?: number;
  onProgress?: (p: FitProgress) => void;
}

export interface FitResult {
  /** Mean minibatch loss per epoch. */
  epochLoss: number[];
  steps: number;
  seconds: number;
}

const LAYER_METHODS = ['forward', 'backward', 'parameters', 'dispose'] as const;

/** FitOptions, checked, with their defaults. */
interface FitPlan {
  loss: 'mse' | 'cross-entropy';
  optimizer: { step(): void };
  epochs: number;
  /** As asked (trainingData caps it at N). */
  batchSize: number;
  seed: number;
  onProgress: ((p: FitProgress) => void) | undefined;
}

/** The training set as JS copies, so batches can be gathered whatever happens to wasm memory meanwhile. */
interface TrainingData {
  n: number;
  batchSize: number;
  inCols: number;
  x: Float32Array;
  /** 'mse': targets [n, outCols]. */
  outCols: number;
  targets: Float32Array | undefined;
  /** 'cross-entropy': n labels, and a buffer for one batch of them. */
  labels: Int32Array | undefined;
  batchLabels: Int32Array | undefined;
}

function checkFitOptions(fn: string, opts: FitOptions): FitPlan {
  if (typeof opts !== 'object' || opts === null || typeof (opts as { optimizer?: { step?: unknown } }).optimizer?.step !== 'function') {
    throw new LoRATypeError(`${fn}: options must include an optimizer (lw.adamw(...) or lw.sgd(...))`);
  }
  if (opts.loss !== 'mse' && opts.loss !== 'cross-entropy') {
    throw new LoRATypeError(`${fn}: options.loss must be 'mse' or 'cross-entropy', got ${describeValue(opts.loss)}`);
  }
  if (opts.onProgress !== undefined && typeof opts.onProgress !== 'function') {
    throw new LoRATypeError(`${fn}: options.onProgress must be a function, got ${describeValue(opts.onProgress)}`);
  }
  const seed = seedOption().read(fn, 'options.seed', opts.seed ?? 0);
  return {
    loss: opts.loss,
    optimizer: opts.optimizer,
    epochs: countOption(fn, 'options.epochs', opts.epochs, 1),
    batchSize: countOption(fn, 'options.batchSize', opts.batchSize, 32),
    seed,
    onProgress: opts.onProgress,
  };
}

/** Copies and checks X and the targets (finite values, integer labels; labels against the model's outputs: see #lossAndGrad). */
function trainingData(engine: Engine, fn: string, x: unknown, targets: unknown, plan: FitPlan): TrainingData {
  const xs = operand(engine.heap, fn, 'X', x);
  const n = xs.rows;
  const inCols = xs.cols;
  const batchSize = Math.min(plan.batchSize, n);
  const xData = Float32Array.from(xs.plain ?? engine.heap.view(xs.desc!.block, n * inCols, undefined, xs.desc!.offset));
  rejectNonFiniteArray(fn, 'X', xData, inCols, 'training data must be finite; nothing was trained');
  const data: TrainingData = { n, batchSize, inCols, x: xData, outCols: 0, targets: undefined, labels: undefined, batchLabels: undefined };
  if (plan.loss === 'cross-entropy') {
    if (!(targets instanceof Int32Array) && !Array.isArray(targets)) {
      throw new LoRATypeError(`${fn}: cross-entropy targets must be integer labels (Int32Array or number[]), got ${describeValue(targets)}`);
    }
    checkLabels(fn, targets, n, Infinity);
    data.labels = Int32Array.from(targets as ArrayLike<number>);
    data.batchLabels = new Int32Array(batchSize);
  } else {
    const t = operand(engine.heap, fn, 'targets', targets);
    if (t.rows !== n) throw new LoRAShapeError(`${fn}: X is ${shapeOf(xs)} but targets is ${shapeOf(t)}; one target row per input row`);
    data.outCols = t.cols;
    data.targets = Float32Array.from(t.plain ?? engine.heap.view(t.desc!.block, n * t.cols, undefined, t.desc!.offset));
    rejectNonFiniteArray(fn, 'targets', data.targets, t.cols, 'training targets must be finite; nothing was trained');
  }
  return data;
}

/** Fisher–Yates shuffle of `order` in place, drawing from `next`. */
function shuffle(order: Int32Array, next: () => number): void {
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    const tmp = order[i]!;
    order[i] = order[j]!;
    order[j] = tmp;
  }
}

/** into[r] ← rows[batch[r]] for rows of `cols` values. */
function gatherRows(into: Float32Array, rows: Float32Array, batch: Int32Array, cols: number): void {
  for (let r = 0; r < batch.length; r++) into.set(rows.subarray(batch[r]! * cols, (batch[r]! + 1) * cols), r * cols);
}

/** Reports progress after each step, with the throughput since `start`. */
function progressReporter(onProgress: FitPlan['onProgress'], totalSteps: number, start: number): (epoch: number, step: number, rows: number, loss: number) => void {
  let seen = 0;
  return (epoch, step, rows, loss) => {
    seen += rows;
    onProgress?.({ epoch, step, totalSteps, loss, samplesPerSecond: seen / ((performance.now() - start) / 1000) });
  };
}

export class Sequential {
  readonly layers: readonly Layer[];
  readonly #engine: Engine;
  /** The gathered minibatch: inputs X and (mse) targets T. */
  readonly #batch: ActivationCache<'x' | 't'>;
  /** ∂L/∂output of the minibatch. */
  readonly #grads: ActivationCache<'g'>;

  /** @internal use lw.sequential(layers) */
  constructor(engine: Engine, layers: unknown) {
    const fn = 'sequential';
    if (!Array.isArray(layers) || layers.length === 0) {
      throw new LoRATypeError(`${fn}: layers must be a non-empty array of layers, got ${describeValue(layers)}`);
    }
    layers.forEach((l: Record<string, unknown> | null, i) => {
      const missing = LAYER_METHODS.find((m) => typeof l?.[m] !== 'function');
      if (missing) throw new LoRATypeError(`${fn}: layers[${i}] is not a layer (no ${missing}()), got ${describeValue(l)}`);
      const owner = LayerBase.engineOf(l);
      if (owner !== undefined && owner !== engine) throw new LoRATypeError(`${fn}: layers[${i}] belongs to another lora-wasm instance`);
    });
    this.#engine = engine;
    this.layers = layers;
    this.#batch = new ActivationCache(engine, 'fit');
    this.#grads = new ActivationCache(engine, 'fit');
    layers[0].inputGrad = false; // nothing upstream needs ∂L/∂X
  }

  /** Runs every layer; returns the last layer's (layer-owned) output. */
  forward(x: MatrixInput): Matrix {
    let h: MatrixInput = x;
    for (const layer of this.layers) h = layer.forward(h);
    return h as Matrix;
  }

  /** Back-propagates G = ∂L/∂output through every layer, filling the parameters' grads. */
  backward(g: MatrixInput): void {
    let d: MatrixInput | undefined = g;
    for (let i = this.layers.length - 1; i >= 0 && d; i--) d = this.layers[i]!.backward(d);
  }

  /** forward(x) copied into a new Matrix (allocates; dispose it). */
  predict(x: MatrixInput): Matrix {
    const y = this.forward(x);
    const out = newMatrix(this.#engine.heap, 'predict', y.rows, y.cols);
    out.data.set(y.data); // y.data re-derives its view after the allocation
    return out;
  }

  parameters(): Parameter[] {
    return this.layers.flatMap((l) => l.parameters());
  }

  get trainableParameters(): number {
    return this.layers.reduce((s, l) => s + l.trainableParameters, 0);
  }

  get frozenParameters(): number {
    return this.layers.reduce((s, l) => s + l.frozenParameters, 0);
  }

  /** Switches every LoRA layer to its merged weight. */
  merge(): this {
    for (const l of this.layers) if (l instanceof LoRALinear) l.merge();
    return this;
  }

  /** Back to on-the-fly LoRA in every layer. */
  unmerge(): this {
    for (const l of this.layers) if (l instanceof LoRALinear) l.unmerge();
    return this;
  }

  /**
   * Minibatch training. x: [N, inputs]; targets: [N, outputs] for 'mse', or
   * N integer labels for 'cross-entropy'. Everything is validated before the
   * first update.
   */
  fit(x: MatrixInput, targets: MatrixInput | Int32Array | readonly number[], opts: FitOptions): FitResult {
    const fn = 'fit';
    const plan = checkFitOptions(fn, opts);
    const data = trainingData(this.#engine, fn, x, targets, plan);
    try {
      return this.#train(fn, data, plan);
    } catch (err) {
      this.#dropBuffers();
      throw err;
    }
  }

  /** The epochs: shuffle, then one step per minibatch. */
  #train(fn: string, data: TrainingData, plan: FitPlan): FitResult {
    const order = Int32Array.from({ length: data.n }, (_, i) => i);
    const next = seededRandom(plan.seed);
    const stepsPerEpoch = Math.ceil(data.n / data.batchSize);
    const start = performance.now();
    const progress = progressReporter(plan.onProgress, stepsPerEpoch * plan.epochs, start);
    const epochLoss: number[] = [];
    let step = 0;
    for (let epoch = 1; epoch <= plan.epochs; epoch++) {
      shuffle(order, next);
      let sum = 0;
      for (let b0 = 0; b0 < data.n; b0 += data.batchSize) {
        const batch = order.subarray(b0, Math.min(b0 + data.batchSize, data.n));
        const loss = this.#step(fn, data, batch, step === 0, plan.optimizer);
        sum += loss;
        step++;
        progress(epoch, step, batch.length, loss);
      }
      epochLoss.push(sum / stepsPerEpoch);
    }
    return { epochLoss, steps: step, seconds: (performance.now() - start) / 1000 };
  }

  /** One minibatch (the rows `batch` of the data): forward, loss, backward, optimizer step; returns the loss. */
  #step(fn: string, data: TrainingData, batch: Int32Array, first: boolean, optimizer: FitPlan['optimizer']): number {
    const rows = batch.length;
    const buf = this.#batch.get({ x: [rows, data.inCols], t: [rows, data.labels ? 1 : data.outCols] });
    gatherRows(buf.x.data, data.x, batch, data.inCols);
    const y = this.forward(buf.x);
    const grad = this.#grads.get({ g: [y.rows, y.cols] }).g;
    const loss = this.#lossAndGrad(fn, data, batch, first, y, buf.t, grad);
    this.backward(grad);
    optimizer.step();
    return loss;
  }

  /** The minibatch's loss, writing ∂L/∂Y into grad. */
  #lossAndGrad(fn: string, data: TrainingData, batch: Int32Array, first: boolean, y: Matrix, t: Matrix, grad: Matrix): number {
    const e = this.#engine;
    const rows = batch.length;
    if (data.labels) {
      // every label must name one of the model's outputs; checked on the first batch, before the first update
      if (first) checkLabels(fn, data.labels, data.n, y.cols);
      const batchLabels = rows === data.batchSize ? data.batchLabels! : data.batchLabels!.subarray(0, rows);
      for (let r = 0; r < rows; r++) batchLabels[r] = data.labels[batch[r]!]!;
      return softmaxCrossEntropy(e, y, batchLabels, grad).loss;
    }
    if (y.cols !== data.outCols) throw new LoRAShapeError(`${fn}: the model outputs ${y.cols} columns but targets have ${data.outCols}`);
    gatherRows(t.data, data.targets!, batch, data.outCols);
    return mseLoss(e, y, t, grad);
  }

  /** Frees the batch buffers and every layer's activations. */
  #dropBuffers(): void {
    this.#batch.clear();
    this.#grads.clear();
    for (const l of this.layers) LayerBase.dropActivations(l);
  }

  /** Frees every layer and the training buffers. */
  dispose(): void {
    this.#dropBuffers();
    for (const l of this.layers) l.dispose();
  }
}
