/**
 * LoRALinear: a frozen linear layer W (+ bias) with a trainable rank-r adapter.
 *
 *   W: [dOut, dIn] (PyTorch nn.Linear layout), bias: [dOut]
 *   A: [dOut, r] = PEFT lora_B.weight,  B: [r, dIn] = PEFT lora_A.weight,  s = alpha/r (or alpha/√r)
 *
 * forward, unmerged:  H = X·Bᵀ  [n, r]  (once)
 *                     Y = bias + X·Wᵀ            (gemm, W read in place)
 *                     Y += s·H·Aᵀ                (rankRUpdate: a second pass over Y, never ΔW)
 * forward, merged:    Y = bias + X·W'ᵀ with W' = W + s·A·B, kept beside W (W itself never changes)
 * backward, from G = ∂L/∂Y:
 *   GA = G·A  [n, r]
 *   ∂L/∂A = s·Gᵀ·H          ∂L/∂B = s·GAᵀ·X
 *   ∂L/∂X = G·W + s·GA·B    (only when inputGrad)
 * W and bias get no gradient; their bytes never change.
 */
import { LoRAShapeError, LoRAStateError, LoRATypeError } from './errors.js';
import { gemmPtr } from './gemm.js';
import { type Layer, type Parameter, ensureBuffer, gradOperand, linearForward, saveInput, zeros } from './layer.js';
import { Matrix } from './matrix.js';
import { type MatrixInput, type Operand, Staging, checkDim, describeValue, operand, shapeOf } from './operands.js';
import { addRankR } from './rank.js';
import { fillRandom } from './random.js';
import type { Engine } from './runtime.js';
import { loraScale } from './scale.js';

export interface LoRALinearOptions {
  /** Frozen weight [dOut, dIn]. A Matrix is used in place (and stays yours); a plain object is copied. */
  W: MatrixInput;
  /** Frozen bias, [1, dOut] or [dOut, 1] (Float32Array data of length dOut). */
  bias?: MatrixInput;
  /** Rank r ≥ 1. */
  r: number;
  /** LoRA alpha; s = alpha/r (alpha/√r with rslora). Default: r (s = 1). */
  alpha?: number;
  rslora?: boolean;
  /**
   * 'kaiming' (default, PEFT's): A = 0, B ~ U(−1/√dIn, 1/√dIn), so a fresh
   * adapter changes nothing. 'gaussian' (PEFT init_lora_weights="gaussian"):
   * A = 0, B ~ N(0, 1/r²).
   */
  init?: 'kaiming' | 'gaussian';
  /** Seed for B's initialisation. Default 0. */
  seed?: number;
  /** Compute ∂L/∂X in backward (needed unless this is the model's first layer). Default true. */
  inputGrad?: boolean;
}

export class LoRALinear implements Layer {
  readonly dIn: number;
  readonly dOut: number;
  readonly r: number;
  readonly alpha: number;
  /** s = alpha/r, or alpha/√r with rslora. */
  readonly scale: number;
  /** The frozen weight [dOut, dIn]. */
  readonly W: Matrix;
  /** The frozen bias [1, dOut], if any. */
  readonly bias: Matrix | undefined;
  /** Trainable [dOut, r] (PEFT lora_B.weight). */
  readonly A: Matrix;
  /** Trainable [r, dIn] (PEFT lora_A.weight). */
  readonly B: Matrix;
  readonly gradA: Matrix;
  readonly gradB: Matrix;
  inputGrad: boolean;
  readonly #engine: Engine;
  readonly #ownsW: boolean;
  #merged: Matrix | undefined;
  #x: Matrix | undefined;
  #h: Matrix | undefined;
  #y: Matrix | undefined;
  #ga: Matrix | undefined;
  #dx: Matrix | undefined;
  #forwardRows = 0;
  #disposed = false;

  /** @internal use lw.linear(options) */
  constructor(engine: Engine, opts: LoRALinearOptions) {
    const fn = 'linear';
    if (typeof opts !== 'object' || opts === null) {
      throw new LoRATypeError(`${fn}: options must be an object like { W, r, alpha }, got ${describeValue(opts)}`);
    }
    this.#engine = engine;
    const w = operand(engine.heap, fn, 'W', opts.W);
    checkDim(fn, 'r', opts.r);
    const r = opts.r;
    if (r > Math.min(w.rows, w.cols)) {
      throw new LoRAShapeError(`${fn}: r is ${r} but W is ${shapeOf(w)}; r must be at most min(dOut, dIn) = ${Math.min(w.rows, w.cols)}`);
    }
    const alpha = opts.alpha ?? r;
    this.scale = loraScale({ alpha, r, rslora: opts.rslora ?? false });
    const init = opts.init ?? 'kaiming';
    if (init !== 'kaiming' && init !== 'gaussian') {
      throw new LoRATypeError(`${fn}: init must be 'kaiming' or 'gaussian', got ${describeValue(init)}`);
    }
    const seed = opts.seed ?? 0;
    if (typeof seed !== 'number' || !Number.isFinite(seed)) throw new LoRATypeError(`${fn}: seed must be a number, got ${describeValue(seed)}`);
    let bias: Operand | undefined;
    if (opts.bias !== undefined) {
      bias = operand(engine.heap, fn, 'bias', opts.bias);
      if (bias.rows * bias.cols !== w.rows || (bias.rows !== 1 && bias.cols !== 1)) {
        throw new LoRAShapeError(`${fn}: bias is ${shapeOf(bias)} but W is ${shapeOf(w)}; bias must be [1, ${w.rows}]`);
      }
    }
    this.dOut = w.rows;
    this.dIn = w.cols;
    this.r = r;
    this.alpha = alpha;
    this.inputGrad = opts.inputGrad ?? true;

    const allocated: Matrix[] = [];
    try {
      if (opts.W instanceof Matrix) {
        this.W = opts.W;
        this.#ownsW = false;
      } else {
        this.W = zeros(engine, fn, this.dOut, this.dIn);
        allocated.push(this.W);
        this.W.data.set(w.plain ? w.plain.data : engine.heap.f32(w.ptr, this.dOut * this.dIn));
        this.#ownsW = true;
      }
      if (bias) {
        const b = zeros(engine, fn, 1, this.dOut);
        allocated.push(b);
        b.data.set(bias.plain ? bias.plain.data : engine.heap.f32(bias.ptr, this.dOut));
        this.bias = b;
      }
      this.A = zeros(engine, fn, this.dOut, r);
      allocated.push(this.A);
      this.B = zeros(engine, fn, r, this.dIn);
      allocated.push(this.B);
      this.gradA = zeros(engine, fn, this.dOut, r);
      allocated.push(this.gradA);
      this.gradB = zeros(engine, fn, r, this.dIn);
      allocated.push(this.gradB);
    } catch (e) {
      for (const m of allocated) m.dispose();
      throw e;
    }
    // PEFT: kaiming_uniform_(lora_A, a=√5) gives bound 1/√fan_in; gaussian: std 1/r.
    if (init === 'kaiming') fillRandom(this.B.data, seed, 'uniform', 1 / Math.sqrt(this.dIn));
    else fillRandom(this.B.data, seed, 'normal', 1 / r);
  }

  /** Whether forward uses the merged weight W + s·A·B. */
  get merged(): boolean {
    return this.#merged !== undefined;
  }

  get trainableParameters(): number {
    return this.r * (this.dOut + this.dIn);
  }

  get frozenParameters(): number {
    return this.dOut * this.dIn + (this.bias ? this.dOut : 0);
  }

  parameters(): Parameter[] {
    this.#assertLive('parameters');
    return [
      { name: 'A', value: this.A, grad: this.gradA },
      { name: 'B', value: this.B, grad: this.gradB },
    ];
  }

  /**
   * Y = X·Wᵀ + s·(X·Bᵀ)·Aᵀ (+ bias), X: [n, dIn] → layer-owned Y: [n, dOut]
   * (overwritten by the next forward). Uses W + s·A·B when merged.
   */
  forward(x: MatrixInput): Matrix {
    const fn = 'forward';
    this.#assertLive(fn);
    const e = this.#engine;
    const what = `the layer takes ${this.dIn} input features (W is [${this.dOut}, ${this.dIn}])`;
    this.#x = saveInput(e, fn, 'X', x, this.dIn, what, this.#x);
    const n = this.#x.rows;
    this.#y = ensureBuffer(e, fn, this.#y, n, this.dOut);
    const y = this.#y.ptr;
    if (this.#merged) {
      linearForward(e, fn, y, this.#x.ptr, this.#merged.ptr, this.bias, n, this.dOut, this.dIn); // Y = bias + X·W'ᵀ
      this.#forwardRows = 0; // a merged forward cannot be differentiated w.r.t. A and B
      return this.#y;
    }
    this.#h = ensureBuffer(e, fn, this.#h, n, this.r);
    gemmPtr(e, fn, this.#h.ptr, this.#x.ptr, this.B.ptr, n, this.r, this.dIn, false, true, 1, 0); // H = X·Bᵀ
    linearForward(e, fn, y, this.#x.ptr, this.W.ptr, this.bias, n, this.dOut, this.dIn); // Y = bias + X·Wᵀ
    addRankR(e, fn, y, y, this.#h.ptr, this.A.ptr, n, this.dOut, this.r, this.scale, true); // Y += s·H·Aᵀ
    this.#forwardRows = n;
    return this.#y;
  }

  /**
   * From G = ∂L/∂Y ([n, dOut], the n of the last forward): writes gradA and
   * gradB (overwriting them) and returns layer-owned ∂L/∂X [n, dIn] when
   * inputGrad is on, else undefined.
   */
  backward(g: MatrixInput): Matrix | undefined {
    const fn = 'backward';
    this.#assertLive(fn);
    if (this.#merged) throw new LoRAStateError(`${fn}: the layer is merged; call unmerge() before training`);
    if (this.#forwardRows === 0) throw new LoRAStateError(`${fn}: call forward() before backward()`);
    const e = this.#engine;
    const n = this.#forwardRows;
    const gOp = gradOperand(e, fn, g, n, this.dOut);
    const staging = new Staging(e.heap, fn);
    try {
      const gp = staging.input(gOp);
      const s = this.scale;
      this.#ga = ensureBuffer(e, fn, this.#ga, n, this.r);
      const ga = this.#ga.ptr;
      const x = this.#x!.ptr;
      gemmPtr(e, fn, ga, gp, this.A.ptr, n, this.r, this.dOut, false, false, 1, 0); // GA = G·A
      gemmPtr(e, fn, this.gradA.ptr, gp, this.#h!.ptr, this.dOut, this.r, n, true, false, s, 0); // ∂A = s·Gᵀ·H
      gemmPtr(e, fn, this.gradB.ptr, ga, x, this.r, this.dIn, n, true, false, s, 0); // ∂B = s·GAᵀ·X
      if (!this.inputGrad) return undefined;
      this.#dx = ensureBuffer(e, fn, this.#dx, n, this.dIn);
      gemmPtr(e, fn, this.#dx.ptr, gp, this.W.ptr, n, this.dIn, this.dOut, false, false, 1, 0); // ∂X = G·W
      addRankR(e, fn, this.#dx.ptr, this.#dx.ptr, ga, this.B.ptr, n, this.dIn, this.r, s, false); // ∂X += s·GA·B
      return this.#dx;
    } finally {
      staging.release();
    }
  }

  /** Switches forward to W' = W + s·A·B, computed once into a buffer beside W (W is not modified). */
  merge(): this {
    this.#assertLive('merge');
    if (this.#merged) return this;
    const e = this.#engine;
    const m = ensureBuffer(e, 'merge', undefined, this.dOut, this.dIn);
    // W' = W + s·A·B by the fused merge kernel: bit-identical to lw.mergeInto(W', W, A, B)
    addRankR(e, 'merge', m.ptr, this.W.ptr, this.A.ptr, this.B.ptr, this.dOut, this.dIn, this.r, this.scale, false);
    this.#merged = m;
    this.#forwardRows = 0;
    return this;
  }

  /** Back to the on-the-fly path (exact: W was never modified). */
  unmerge(): this {
    this.#assertLive('unmerge');
    this.#merged?.dispose();
    this.#merged = undefined;
    return this;
  }

  /** Frees the adapter, gradients and buffers (and W if the layer copied it). */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const m of [this.A, this.B, this.gradA, this.gradB, this.bias, this.#merged, this.#x, this.#h, this.#y, this.#ga, this.#dx]) m?.dispose();
    if (this.#ownsW) this.W.dispose();
  }

  #assertLive(fn: string): void {
    if (this.#disposed) throw new LoRAStateError(`${fn}: this LoRALinear [${this.dOut}, ${this.dIn}] was disposed`);
  }
}
