/**
 * Linear: a fully trainable nn.Linear, y = x·Wᵀ + b, for pretraining the base
 * model that LoRA later adapts (see lw.linear for the frozen-W LoRA layer).
 *
 *   W: [dOut, dIn], b: [1, dOut]
 *   ∂L/∂W = Gᵀ·X    ∂L/∂b = Σ_rows G    ∂L/∂X = G·W
 */
import { LoRAStateError, LoRATypeError, describeValue } from '../errors.js';
import { describe } from '../kernel/descriptor.js';
import type { Matrix } from '../memory/matrix.js';
import { type MatrixInput, boolOption, checkDim, seedOption, withStaging } from '../ops/operands.js';
import { fillRandom } from '../random.js';
import type { Engine } from '../runtime/engine.js';
import { LayerBase, type Parameter, allocAll, copyInto, gradOperand, inputOperand, linearForward } from './layer.js';

interface LinearCommonOptions {
  /** Seed for PyTorch's default init: W, b ~ U(−1/√dIn, 1/√dIn). Default 0. */
  seed?: number;
  /** Compute ∂L/∂X in backward. Default true. */
  inputGrad?: boolean;
}

/**
 * The layer's shape: `{ dIn, dOut }` (W is [dOut, dIn]), or under PyTorch's names
 * `{ inFeatures, outFeatures }`, which are accepted as aliases.
 */
export type LinearOptions = LinearCommonOptions & ({ dIn: number; dOut: number } | { inFeatures: number; outFeatures: number });

/** A dimension given under its name or its alias (not both, unless equal); messages name the key the caller used. */
function dimOption(fn: string, o: Record<string, unknown>, name: 'dIn' | 'dOut', alias: 'inFeatures' | 'outFeatures'): number {
  if (o[name] !== undefined && o[alias] !== undefined && o[name] !== o[alias]) {
    throw new LoRATypeError(`${fn}: ${name} is ${describeValue(o[name])} but ${alias} (its alias) is ${describeValue(o[alias])}; give one`);
  }
  const key = o[name] === undefined && o[alias] !== undefined ? alias : name;
  const v = o[key];
  checkDim(fn, key, v);
  return v;
}

/** The last forward's input X (kept for ∂W) and output Y. */
export class Linear extends LayerBase<{ x: Matrix; y: Matrix }> {
  readonly dIn: number;
  readonly dOut: number;
  /** Trainable weight [dOut, dIn]. */
  readonly W: Matrix;
  /** Trainable bias [1, dOut]. */
  readonly bias: Matrix;
  readonly gradW: Matrix;
  readonly gradBias: Matrix;
  inputGrad: boolean;
  readonly #acts = this.buffers<'x' | 'y'>('forward');
  readonly #grads = this.buffers<'dx'>('backward');

  /** @internal use lw.dense(options) */
  constructor(engine: Engine, opts: LinearOptions) {
    super(engine);
    const fn = 'dense';
    if (typeof opts !== 'object' || opts === null) {
      throw new LoRATypeError(`${fn}: options must be an object like { dIn, dOut }, got ${describeValue(opts)}`);
    }
    const o = opts as unknown as Record<string, unknown>;
    const dIn = dimOption(fn, o, 'dIn', 'inFeatures');
    const dOut = dimOption(fn, o, 'dOut', 'outFeatures');
    const seed = seedOption().read(fn, 'seed', opts.seed ?? 0);
    this.dIn = dIn;
    this.dOut = dOut;
    this.inputGrad = boolOption(fn, 'inputGrad', opts.inputGrad, true);
    const made = allocAll(engine, fn, [[this.dOut, this.dIn], [1, this.dOut], [this.dOut, this.dIn], [1, this.dOut]]);
    [this.W, this.bias, this.gradW, this.gradBias] = made as [Matrix, Matrix, Matrix, Matrix];
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
    this.check('parameters');
    return [
      { name: 'W', value: this.W, grad: this.gradW },
      { name: 'bias', value: this.bias, grad: this.gradBias },
    ];
  }

  forward(x: MatrixInput): Matrix {
    const fn = 'forward';
    this.#check(fn);
    const e = this.engine;
    const xs = inputOperand(e, fn, x, this.dIn, `the layer takes ${this.dIn} input features`);
    const n = xs.rows;
    const acts = this.#acts.get({ x: [n, this.dIn], y: [n, this.dOut] });
    this.last = undefined;
    copyInto(e, fn, acts.x, xs);
    linearForward(e, fn, describe(acts.y, 'Y'), describe(acts.x, 'X'), describe(this.W, 'W'), describe(this.bias, 'bias'));
    this.last = acts;
    return acts.y;
  }

  backward(g: MatrixInput): Matrix | undefined {
    const fn = 'backward';
    this.#check(fn);
    const acts = this.last;
    if (!acts) throw new LoRAStateError(`${fn}: call forward() before backward()`);
    const e = this.engine;
    const n = acts.x.rows;
    const gOp = gradOperand(e, fn, g, n, this.dOut);
    const grads = this.#grads.get({ dx: [n, this.dIn] });
    return withStaging(e.heap, fn, (staging) => {
      const G = staging.input(gOp);
      staging.load();
      const k = e.kernel;
      k.gemm(fn, describe(this.gradW, 'gradW'), G, describe(acts.x, 'X'), { transX: true }); // ∂W = Gᵀ·X
      k.columnSums(fn, describe(this.gradBias, 'gradBias'), G); // ∂b = Σ_rows G
      if (!this.inputGrad) return undefined;
      k.gemm(fn, describe(grads.dx, 'dX'), G, describe(this.W, 'W')); // ∂X = G·W
      return grads.dx;
    });
  }

  protected get what(): string {
    return `Linear [${this.dOut}, ${this.dIn}]`;
  }

  protected owned(): Matrix[] {
    return [this.W, this.bias, this.gradW, this.gradBias];
  }

  /** Not disposed, and every matrix the layer reads or writes is alive and of this instance. */
  #check(fn: string): void {
    this.check(fn, { W: this.W, bias: this.bias, gradW: this.gradW, gradBias: this.gradBias });
  }
}
