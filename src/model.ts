/**
 * Sequential: layers applied in order, with a deterministic training loop.
 *
 * fit() shuffles with seededRandom(seed) each epoch, runs forward, the loss,
 * backward (last layer to first) and the optimizer step per minibatch, and
 * reports progress. Given the same seed, data and initial weights, every
 * run produces the same losses bit for bit.
 */
import { LoRAShapeError, LoRATypeError } from './errors.js';
import { type Layer, type Parameter, ensureBuffer } from './layer.js';
import { softmaxCrossEntropy, mseLoss } from './loss.js';
import { LoRALinear } from './lora.js';
import { MATRIX_TOKEN, Matrix } from './matrix.js';
import { type MatrixInput, checkDim, describeValue, operand, shapeOf } from './operands.js';
import { seededRandom } from './random.js';
import type { Engine } from './runtime.js';

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
  epochs?: number;
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

export class Sequential {
  readonly layers: readonly Layer[];
  readonly #engine: Engine;
  #batchX: Matrix | undefined;
  #batchY: Matrix | undefined;
  #grad: Matrix | undefined;

  /** @internal use lw.sequential(layers) */
  constructor(engine: Engine, layers: unknown) {
    if (!Array.isArray(layers) || layers.length === 0 || !layers.every((l) => l && typeof l.forward === 'function' && typeof l.backward === 'function')) {
      throw new LoRATypeError(`sequential: layers must be a non-empty array of layers, got ${describeValue(layers)}`);
    }
    this.#engine = engine;
    this.layers = layers;
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
    const out = new Matrix(MATRIX_TOKEN, this.#engine.heap, this.#engine.heap.alloc(y.length * 4, 'predict'), y.rows, y.cols);
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
   * N integer labels for 'cross-entropy'.
   */
  fit(x: MatrixInput, targets: MatrixInput | Int32Array | readonly number[], opts: FitOptions): FitResult {
    const fn = 'fit';
    const e = this.#engine;
    if (typeof opts !== 'object' || opts === null || !opts.optimizer || typeof opts.optimizer.step !== 'function') {
      throw new LoRATypeError(`${fn}: options must include an optimizer (lw.adamw(...) or lw.sgd(...))`);
    }
    if (opts.loss !== 'mse' && opts.loss !== 'cross-entropy') {
      throw new LoRATypeError(`${fn}: options.loss must be 'mse' or 'cross-entropy', got ${describeValue(opts.loss)}`);
    }
    const epochs = opts.epochs ?? 1;
    checkDim(fn, 'options.epochs', epochs);
    const xs = operand(e.heap, fn, 'X', x);
    const batchSize = Math.min(opts.batchSize ?? 32, xs.rows);
    checkDim(fn, 'options.batchSize', batchSize);
    const seed = opts.seed ?? 0;
    const N = xs.rows;
    const inCols = xs.cols;
    let labels: Int32Array | undefined;
    let tData: Float32Array | undefined;
    let outCols = 0;
    if (opts.loss === 'cross-entropy') {
      if (!(targets instanceof Int32Array) && !Array.isArray(targets)) {
        throw new LoRATypeError(`${fn}: cross-entropy targets must be integer labels (Int32Array or number[]), got ${describeValue(targets)}`);
      }
      if (targets.length !== N) throw new LoRAShapeError(`${fn}: X is ${shapeOf(xs)} but there are ${targets.length} labels; one per row`);
      labels = Int32Array.from(targets as ArrayLike<number>);
      const bad = (targets as ArrayLike<number>)[Array.from(targets as ArrayLike<number>).findIndex((v) => !Number.isInteger(v) || v < 0)];
      if (bad !== undefined) throw new LoRAShapeError(`${fn}: labels must be non-negative integers, got ${bad}`);
    } else {
      const t = operand(e.heap, fn, 'targets', targets);
      if (t.rows !== N) throw new LoRAShapeError(`${fn}: X is ${shapeOf(xs)} but targets is ${shapeOf(t)}; one target row per input row`);
      outCols = t.cols;
      tData = Float32Array.from(t.plain ? t.plain.data : e.heap.f32(t.ptr, N * outCols));
    }
    // A JS copy of the inputs, so batches can be gathered whatever happens to wasm memory meanwhile.
    const xData = Float32Array.from(xs.plain ? xs.plain.data : e.heap.f32(xs.ptr, N * inCols));

    const order = Int32Array.from({ length: N }, (_, i) => i);
    const next = seededRandom(seed);
    const stepsPerEpoch = Math.ceil(N / batchSize);
    const totalSteps = stepsPerEpoch * epochs;
    const epochLoss: number[] = [];
    const start = performance.now();
    let step = 0;
    let seen = 0;
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
        this.#batchX = ensureBuffer(e, fn, this.#batchX, rows, inCols);
        const bx = this.#batchX.data;
        for (let r = 0; r < rows; r++) bx.set(xData.subarray(order[b0 + r]! * inCols, (order[b0 + r]! + 1) * inCols), r * inCols);
        const y = this.forward(this.#batchX);
        this.#grad = ensureBuffer(e, fn, this.#grad, y.rows, y.cols);
        let loss: number;
        if (labels) {
          // every label must name one of the model's outputs; checked before the first update
          if (step === 0) {
            const top = labels.reduce((m, v) => Math.max(m, v), 0);
            if (top >= y.cols) throw new LoRAShapeError(`${fn}: a label is ${top} but the model outputs ${y.cols} classes`);
          }
          const lab = new Int32Array(rows);
          for (let r = 0; r < rows; r++) lab[r] = labels[order[b0 + r]!]!;
          loss = softmaxCrossEntropy(e, y, lab, this.#grad).loss;
        } else {
          if (y.cols !== outCols) throw new LoRAShapeError(`${fn}: the model outputs ${y.cols} columns but targets have ${outCols}`);
          this.#batchY = ensureBuffer(e, fn, this.#batchY, rows, outCols);
          const by = this.#batchY.data;
          for (let r = 0; r < rows; r++) by.set(tData!.subarray(order[b0 + r]! * outCols, (order[b0 + r]! + 1) * outCols), r * outCols);
          loss = mseLoss(e, y, this.#batchY, this.#grad);
        }
        this.backward(this.#grad);
        opts.optimizer.step();
        sum += loss;
        step++;
        seen += rows;
        opts.onProgress?.({ epoch, step, totalSteps, loss, samplesPerSecond: seen / ((performance.now() - start) / 1000) });
      }
      epochLoss.push(sum / stepsPerEpoch);
    }
    return { epochLoss, steps: step, seconds: (performance.now() - start) / 1000 };
  }

  /** Frees every layer and the training buffers. */
  dispose(): void {
    for (const l of this.layers) l.dispose();
    this.#batchX?.dispose();
    this.#batchY?.dispose();
    this.#grad?.dispose();
  }
}
