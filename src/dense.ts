/**
 * Linear: a fully trainable nn.Linear, y = x·Wᵀ + b, for pretraining the base
 * model that LoRA later adapts (see lw.linear for the frozen-W LoRA layer).
 *
 *   W: [dOut, dIn], b: [1, dOut]
 *   ∂L/∂W = Gᵀ·X    ∂L/∂b = Σ_rows G    ∂L/∂X = G·W
 */
import { LoRAStateError, LoRATypeError } from './errors.js';
import { gemmPtr } from './gemm.js';
import { type Layer, type Parameter, ensureBuffer, gradOperand, linearForward, saveInput, zeros } from './layer.js';
import { fillRandom } from './random.js';
import type { Matrix } from './matrix.js';
import { type MatrixInput, Staging, checkDim, describeValue } from './operands.js';
import type { Engine } from './runtime.js';

export interface LinearOptions {
  inFeatures: number;
  outFeatures: number;
  /** Seed for PyTorch's default init: W, b ~ U(−1/√dIn, 1/√dIn). Default 0. */
  seed?: number;
  /** Compute ∂L/∂X in backward. Default true. */
  inputGrad?: boolean;
}

export class Linear implements Layer {
  readonly dIn: number;
  readonly dOut: number;
  /** Trainable weight [dOut, dIn]. */
  readonly W: Matrix;
  /** Trainable bias [1, dOut]. */
  readonly bias: Matrix;
  readonly gradW: Matrix;
  readonly gradBias: Matrix;
  inputGrad: boolean;
  readonly #engine: Engine;
  #x: Matrix | undefined;
  #y: Matrix | undefined;
  #dx: Matrix | undefined;
  #disposed = false;

  /** @internal use lw.dense(options) */
  constructor(engine: Engine, opts: LinearOptions) {
    const fn = 'dense';
    if (typeof opts !== 'object' || opts === null) {
      throw new LoRATypeError(`${fn}: options must be an object like { inFeatures, outFeatures }, got ${describeValue(opts)}`);
    }
    checkDim(fn, 'inFeatures', opts.inFeatures);
    checkDim(fn, 'outFeatures', opts.outFeatures);
    this.#engine = engine;
    this.dIn = opts.inFeatures;
    this.dOut = opts.outFeatures;
    this.inputGrad = opts.inputGrad ?? true;
    const made: Matrix[] = [];
    try {
      for (const [rows, cols] of [[this.dOut, this.dIn], [1, this.dOut], [this.dOut, this.dIn], [1, this.dOut]] as const) {
        made.push(zeros(engine, fn, rows, cols));
      }
    } catch (e) {
      for (const m of made) m.dispose();
      throw e;
    }
    [this.W, this.bias, this.gradW, this.gradBias] = made as [Matrix, Matrix, Matrix, Matrix];
    const seed = opts.seed ?? 0;
    const bound = 1 / Math.sqrt(this.dIn);
    fillRandom(this.W.data, seed, 'uniform', bound);
    fillRandom(this.bias.data, seed + 1, 'uniform', bound);
  }

  get trainableParameters(): number {
    return this.dOut * this.dIn + this.dOut;
  }

  get frozenParameters(): number {
    return 0;
  }

  parameters(): Parameter[] {
    return [
      { name: 'W', value: this.W, grad: this.gradW },
      { name: 'bias', value: this.bias, grad: this.gradBias },
    ];
  }

  forward(x: MatrixInput): Matrix {
    const fn = 'forward';
    this.#assertLive(fn);
    const e = this.#engine;
    this.#x = saveInput(e, fn, 'X', x, this.dIn, `the layer takes ${this.dIn} input features`, this.#x);
    const n = this.#x.rows;
    this.#y = ensureBuffer(e, fn, this.#y, n, this.dOut);
    linearForward(e, fn, this.#y.ptr, this.#x.ptr, this.W.ptr, this.bias, n, this.dOut, this.dIn);
    return this.#y;
  }

  backward(g: MatrixInput): Matrix | undefined {
    const fn = 'backward';
    this.#assertLive(fn);
    if (!this.#x) throw new LoRAStateError(`${fn}: call forward() before backward()`);
    const e = this.#engine;
    const n = this.#x.rows;
    const gOp = gradOperand(e, fn, g, n, this.dOut);
    const staging = new Staging(e.heap, fn);
    try {
      const gp = staging.input(gOp);
      gemmPtr(e, fn, this.gradW.ptr, gp, this.#x.ptr, this.dOut, this.dIn, n, true, false, 1, 0); // ∂W = Gᵀ·X
      e.kernels.columnSums(this.gradBias.ptr, gp, n, this.dOut); // ∂b = Σ_rows G
      if (!this.inputGrad) return undefined;
      this.#dx = ensureBuffer(e, fn, this.#dx, n, this.dIn);
      gemmPtr(e, fn, this.#dx.ptr, gp, this.W.ptr, n, this.dIn, this.dOut, false, false, 1, 0); // ∂X = G·W
      return this.#dx;
    } finally {
      staging.release();
    }
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const m of [this.W, this.bias, this.gradW, this.gradBias, this.#x, this.#y, this.#dx]) m?.dispose();
  }

  #assertLive(fn: string): void {
    if (this.#disposed) throw new LoRAStateError(`${fn}: this Linear [${this.dOut}, ${this.dIn}] was disposed`);
  }
}
