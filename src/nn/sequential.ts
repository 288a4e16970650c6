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
 */
import { LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { type Matrix, newMatrix } from '../memory/matrix.js';
import { checkLabels, mseLoss, softmaxCrossEntropy } from '../ops/loss.js';
import { type MatrixInput, countOption, operand, rejectNonFiniteArray, shapeOf } from '../ops/operands.js';
import { seededRandom } from '../random.js';
import type { Engine } from '../runtime/engine.js';
import { ActivationCache, type Layer, type Parameter, activationDroppers, layerEngines } from './layer.js';
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
      const owner = layerEngines.get(l!);
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
    const e = this.#engine;
    if (typeof opts !== 'object' || opts === null || typeof (opts as { optimizer?: { step?: unknown } }).optimizer?.step !== 'function') {
      throw new LoRATypeError(`${fn}: options must include an optimizer (lw.adamw(...) or lw.sgd(...))`);
    }
    if (opts.loss !== 'mse' && opts.loss !== 'cross-entropy') {
      throw new LoRATypeError(`${fn}: options.loss must be 'mse' or 'cross-entropy', got ${describeValue(opts.loss)}`);
    }
    if (opts.onProgress !== undefined && typeof opts.onProgress !== 'function') {
      throw new LoRATypeError(`${fn}: options.onProgress must be a function, got ${describeValue(opts.onProgress)}`);
    }
    const seed = opts.seed ?? 0;
    if (typeof seed !== 'number' || !Number.isFinite(seed)) throw new LoRATypeError(`${fn}: options.seed must be a finite number, got ${describeValue(seed)}`);
    const epochs = countOption(fn, 'options.epochs', opts.epochs, 1);
    const xs = operand(e.heap, fn, 'X', x);
    const N = xs.rows;
    const batchSize = Math.min(countOption(fn, 'options.batchSize', opts.batchSize, 32), N);
    const inCols = xs.cols;
    // JS copies of the data, so batches can be gathered whatever happens to wasm memory meanwhile.
    const xData = Float32Array.from(xs.plain ?? e.heap.view(xs.desc!.block, N * inCols, undefined, xs.desc!.offset));
    rejectNonFiniteArray(fn, 'X', xData, inCols, 'training data must be finite; nothing was trained');
    let labels: Int32Array | undefined;
    let tData: Float32Array | undefined;
    let outCols = 0;
    if (opts.loss === 'cross-entropy') {
      if (!(targets instanceof Int32Array) && !Array.isArray(targets)) {
        throw new LoRATypeError(`${fn}: cross-entropy targets must be integer labels (Int32Array or number[]), got ${describeValue(targets)}`);
      }
      checkLabels(fn, targets, N, Infinity);
      labels = Int32Array.from(targets as ArrayLike<number>);
    } else {
      const t = operand(e.heap, fn, 'targets', targets);
      if (t.rows !== N) throw new LoRAShapeError(`${fn}: X is ${shapeOf(xs)} but targets is ${shapeOf(t)}; one target row per input row`);
      outCols = t.cols;
      tData = Float32Array.from(t.plain ?? e.heap.view(t.desc!.block, N * outCols, undefined, t.desc!.offset));
      rejectNonFiniteArray(fn, 'targets', tData, outCols, 'training targets must be finite; nothing was trained');
    }

    const order = Int32Array.from({ length: N }, (_, i) => i);
    const next = seededRandom(seed);
    const stepsPerEpoch = Math.ceil(N / batchSize);
    const totalSteps = stepsPerEpoch * epochs;
    const epochLoss: number[] = [];
    const start = performance.now();
    let step = 0;
    let seen = 0;
    const lab = labels && new Int32Array(batchSize);
    try {
      for (let epoch = 1; epoch <= epochs; epoch++) {
        for (let i = N - 1; i > 0; i--) {
          const j = Math.floor(next() * (i + 1));
          const tmp = order[i]!;
          order[i] = order[j]!;
          order[j] = tmp;
        }
        let sum = 0;
        for (let b0 = 0; b0 < N; b0 += batchSize) {
          const rows = Math.min(batchSize, N - b0);
          const buf = this.#batch.get({ x: [rows, inCols], t: [rows, labels ? 1 : outCols] });
          const bx = buf.x.data;
          for (let r = 0; r < rows; r++) bx.set(xData.subarray(order[b0 + r]! * inCols, (order[b0 + r]! + 1) * inCols), r * inCols);
          const y = this.forward(buf.x);
          const grad = this.#grads.get({ g: [y.rows, y.cols] }).g;
          let loss: number;
          if (labels) {
            // every label must name one of the model's outputs; checked on the first batch, before the first update
            if (step === 0) checkLabels(fn, labels, N, y.cols);
            const batchLabels = rows === batchSize ? lab! : lab!.subarray(0, rows);
            for (let r = 0; r < rows; r++) batchLabels[r] = labels[order[b0 + r]!]!;
            loss = softmaxCrossEntropy(e, y, batchLabels, grad).loss;
          } else {
            if (y.cols !== outCols) throw new LoRAShapeError(`${fn}: the model outputs ${y.cols} columns but targets have ${outCols}`);
            const bt = buf.t.data;
            for (let r = 0; r < rows; r++) bt.set(tData!.subarray(order[b0 + r]! * outCols, (order[b0 + r]! + 1) * outCols), r * outCols);
            loss = mseLoss(e, y, buf.t, grad);
          }
          this.backward(grad);
          opts.optimizer.step();
          sum += loss;
          step++;
          seen += rows;
          opts.onProgress?.({ epoch, step, totalSteps, loss, samplesPerSecond: seen / ((performance.now() - start) / 1000) });
        }
        epochLoss.push(sum / stepsPerEpoch);
      }
    } catch (err) {
      this.#dropBuffers();
      throw err;
    }
    return { epochLoss, steps: step, seconds: (performance.now() - start) / 1000 };
  }

  /** Frees the batch buffers and every layer's activations. */
  #dropBuffers(): void {
    this.#batch.clear();
    this.#grads.clear();
    for (const l of this.layers) activationDroppers.get(l)?.();
  }

  /** Frees every layer and the training buffers. */
  dispose(): void {
    this.#dropBuffers();
    for (const l of this.layers) l.dispose();
  }
}
