/**
 * LoRALinear: a frozen linear layer W (+ bias) with a trainable rank-r adapter.
 *
 *   W: [dOut, dIn] (PyTorch nn.Linear layout), bias: [dOut]
 *   A: [dOut, r] = PEFT lora_B.weight,  B: [r, dIn] = PEFT lora_A.weight,  s = alpha/r (or alpha/√r)
 *
 * forward, unmerged:  H = X·Bᵀ  [n, r]  (once)
 *                     Y = bias + X·Wᵀ            (gemm, W read in place)
 *                     Y += s·H·Aᵀ                (rank-r update: a second pass over Y, never ΔW)
 * forward, merged:    Y = bias + X·W'ᵀ with W' = W + s·A·B, kept beside W (W itself never changes)
 * backward, from G = ∂L/∂Y:
 *   GA = G·A  [n, r]
 *   ∂L/∂A = s·Gᵀ·H          ∂L/∂B = s·GAᵀ·X
 *   ∂L/∂X = G·W + s·GA·B    (only when inputGrad)
 * W and bias get no gradient; their bytes never change.
 *
 * While merged, the layer keeps a copy of the A and B it merged, and every
 * merged forward compares them with the live A and B (O(r·(dOut + dIn)),
 * one SIMD pass): when an optimizer step or a write to A.data changed them,
 * W' is merged again before it is used. W is the frozen base: it is not
 * compared (that would cost a pass over W per forward); to change W, unmerge
 * first.
 */
import { LoRAShapeError, LoRAStateError, LoRATypeError, describeValue } from '../errors.js';
import { describe } from '../kernel/descriptor.js';
import { Epilogue } from '../kernel/kernels.js';
import { Matrix } from '../memory/matrix.js';
import { mergeInto } from '../ops/merge.js';
import { type MatrixInput, type Operand, boolOption, checkDim, operand, seedOption, shapeOf, withStaging } from '../ops/operands.js';
import { loraScale } from '../ops/scale.js';
import { fillRandom } from '../random.js';
import type { Engine } from '../runtime/engine.js';
import { LayerBase, type Parameter, allocAll, copyInto, gradOperand, inputOperand, linearForward } from './layer.js';

export interface LoRALinearOptions {
  /** Frozen weight [dOut, dIn]. A Matrix is used in place (and stays yours: keep it alive); a plain object is copied. */
  W: MatrixInput;
  /** Frozen bias, [1, dOut] or [dOut, 1] (Float32Array data of length dOut). Copied. */
  bias?: MatrixInput;
  /** Rank r, 1 ≤ r ≤ min(dOut, dIn). */
  r: number;
  /** LoRA alpha; s = alpha/r (alpha/√r with rslora), finite in f32. Default: r (s = 1). */
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

type Acts = 'x' | 'h' | 'y';
type Grads = 'ga' | 'dx';

/** The last forward's activations that can be back-propagated (unmerged, succeeded). */
export class LoRALinear extends LayerBase<Record<Acts, Matrix>> {
  readonly dIn: number;
  readonly dOut: number;
  readonly r: number;
  readonly alpha: number;
  /** s = alpha/r, or alpha/√r with rslora. */
  readonly scale: number;
  /** Rank-stabilised scaling (alpha/√r). */
  readonly rslora: boolean;
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
  readonly #ownsW: boolean;
  readonly #acts = this.buffers<Acts>('forward');
  readonly #grads = this.buffers<Grads>('backward');
  /** W' = W + s·A·B and the A, B it was made from, while merged. */
  #merged: { w: Matrix; a: Matrix; b: Matrix } | undefined;

  /** @internal use lw.linear(options) */
  constructor(engine: Engine, opts: LoRALinearOptions) {
    super(engine);
    const fn = 'linear';
    if (typeof opts !== 'object' || opts === null) {
      throw new LoRATypeError(`${fn}: options must be an object like { W, r, alpha }, got ${describeValue(opts)}`);
    }
    const w = operand(engine.heap, fn, 'W', opts.W);
    checkDim(fn, 'r', opts.r);
    const r = opts.r;
    if (r > Math.min(w.rows, w.cols)) {
      throw new LoRAShapeError(`${fn}: r is ${r} but W is ${shapeOf(w)}; r must be at most min(dOut, dIn) = ${Math.min(w.rows, w.cols)}`);
    }
    const alpha = opts.alpha ?? r;
    this.rslora = boolOption(fn, 'rslora', opts.rslora, false);
    this.scale = loraScale({ alpha, r, rslora: this.rslora });
    const init = opts.init ?? 'kaiming';
    if (init !== 'kaiming' && init !== 'gaussian') {
      throw new LoRATypeError(`${fn}: init must be 'kaiming' or 'gaussian', got ${describeValue(init)}`);
    }
    const seed = seedOption().read(fn, 'seed', opts.seed ?? 0);
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
    this.inputGrad = boolOption(fn, 'inputGrad', opts.inputGrad, true);
    this.#ownsW = !(opts.W instanceof Matrix);

    // Allocate everything first (an allocation may grow memory), then copy from descriptors or JS data.
    const shapes: [number, number][] = [[this.dOut, r], [r, this.dIn], [this.dOut, r], [r, this.dIn]];
    if (this.#ownsW) shapes.push([this.dOut, this.dIn]);
    if (bias) shapes.push([1, this.dOut]);
    const made = allocAll(engine, fn, shapes);
    [this.A, this.B, this.gradA, this.gradB] = made as [Matrix, Matrix, Matrix, Matrix];
    let i = 4;
    this.W = this.#ownsW ? made[i++]! : (opts.W as Matrix);
    if (this.#ownsW) copyInto(engine, fn, this.W, { ...w, rows: this.dOut, cols: this.dIn });
    if (bias) {
      this.bias = made[i++]!;
      copyInto(engine, fn, this.bias, { ...bias, rows: 1, cols: this.dOut, desc: bias.desc && { ...bias.desc, rows: 1, cols: this.dOut, ld: this.dOut } });
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
    this.check('parameters');
    return [
      { name: 'A', value: this.A, grad: this.gradA },
      { name: 'B', value: this.B, grad: this.gradB },
    ];
  }

  /**
   * Y = X·Wᵀ + s·(X·Bᵀ)·Aᵀ (+ bias), X: [n, dIn] → layer-owned Y: [n, dOut]
   * (overwritten by the next forward of the same n). Uses W + s·A·B when merged.
   */
  forward(x: MatrixInput): Matrix {
    const fn = 'forward';
    this.#check(fn);
    const e = this.engine;
    const xs = inputOperand(e, fn, x, this.dIn, `the layer takes ${this.dIn} input features (W is [${this.dOut}, ${this.dIn}])`);
    const n = xs.rows;
    if (this.#merged) this.#refreshMerged(fn);
    const acts = this.#acts.get({ x: [n, this.dIn], h: [n, this.r], y: [n, this.dOut] });
    this.last = undefined; // from here on the buffers change: the previous forward can no longer be back-propagated
    copyInto(e, fn, acts.x, xs);
    const X = describe(acts.x, 'X');
    const Y = describe(acts.y, 'Y');
    const bias = this.bias && describe(this.bias, 'bias');
    if (this.#merged) {
      linearForward(e, fn, Y, X, describe(this.#merged.w, "W'"), bias); // Y = bias + X·W'ᵀ
      return acts.y;
    }
    const H = describe(acts.h, 'H');
    e.kernel.gemm(fn, H, X, describe(this.B, 'B'), { transY: true }); // H = X·Bᵀ
    linearForward(e, fn, Y, X, describe(this.W, 'W'), bias); // Y = bias + X·Wᵀ
    e.kernel.rankUpdate(fn, { out: Y, src: Y, a: H, b: describe(this.A, 'A'), transB: true, scaleA: this.scale, epilogue: Epilogue.Add }); // Y += s·H·Aᵀ
    this.last = acts;
    return acts.y;
  }

  /**
   * From G = ∂L/∂Y ([n, dOut], the n of the last forward): writes gradA and
   * gradB (overwriting them) and returns layer-owned ∂L/∂X [n, dIn] when
   * inputGrad is on, else undefined.
   */
  backward(g: MatrixInput): Matrix | undefined {
    const fn = 'backward';
    this.#check(fn);
    if (this.#merged) throw new LoRAStateError(`${fn}: the layer is merged; call unmerge() before training`);
    const acts = this.last;
    if (!acts) throw new LoRAStateError(`${fn}: call forward() before backward()`);
    const e = this.engine;
    const n = acts.x.rows;
    const gOp = gradOperand(e, fn, g, n, this.dOut);
    const grads = this.#grads.get({ ga: [n, this.r], dx: [n, this.dIn] });
    return withStaging(e.heap, fn, (staging) => {
      const G = staging.input(gOp);
      staging.load();
      const s = this.scale;
      const k = e.kernel;
      const GA = describe(grads.ga, 'GA');
      const X = describe(acts.x, 'X');
      k.gemm(fn, GA, G, describe(this.A, 'A')); // GA = G·A
      k.gemm(fn, describe(this.gradA, 'gradA'), G, describe(acts.h, 'H'), { transX: true, alpha: s }); // ∂A = s·Gᵀ·H
      k.gemm(fn, describe(this.gradB, 'gradB'), GA, X, { transX: true, alpha: s }); // ∂B = s·GAᵀ·X
      if (!this.inputGrad) return undefined;
      const DX = describe(grads.dx, 'dX');
      k.gemm(fn, DX, G, describe(this.W, 'W')); // ∂X = G·W
      k.rankUpdate(fn, { out: DX, src: DX, a: GA, b: describe(this.B, 'B'), scaleA: s, epilogue: Epilogue.Add }); // ∂X += s·GA·B
      return grads.dx;
    });
  }

  /**
   * Switches forward to W' = W + s·A·B, computed once into a buffer beside W
   * (W is not modified) by the same fused, NaN-checked merge as lw.mergeInto.
   */
  merge(): this {
    const fn = 'merge';
    this.#check(fn);
    if (this.#merged) return this;
    const [w, a, b] = allocAll(this.engine, fn, [[this.dOut, this.dIn], [this.dOut, this.r], [this.r, this.dIn]]) as [Matrix, Matrix, Matrix];
    try {
      this.#mergeInto(fn, w, a, b);
    } catch (err) {
      for (const m of [w, a, b]) m.dispose();
      throw err;
    }
    this.#merged = { w, a, b };
    this.last = undefined;
    return this;
  }

  /** Back to the on-the-fly path (exact: W was never modified). */
  unmerge(): this {
    this.check('unmerge');
    this.#dropMerged();
    return this;
  }

  /** Frees the adapter, gradients, merged weight and buffers (and W if the layer copied it). */
  override dispose(): void {
    super.dispose();
    this.#dropMerged();
  }

  protected owned(): (Matrix | undefined)[] {
    return [this.A, this.B, this.gradA, this.gradB, this.bias, this.#ownsW ? this.W : undefined];
  }

  #dropMerged(): void {
    if (this.#merged) for (const m of Object.values(this.#merged)) m.dispose();
    this.#merged = undefined;
  }

  /** W' ← W + s·A·B, and the snapshot of A and B it was made from. */
  #mergeInto(fn: string, w: Matrix, a: Matrix, b: Matrix): void {
    const k = this.engine.kernel;
    mergeInto(this.engine, w, this.W, this.A, this.B, { scale: this.scale });
    k.copy(fn, describe(a, "A'"), describe(this.A, 'A'));
    k.copy(fn, describe(b, "B'"), describe(this.B, 'B'));
  }

  /** Re-merges when A or B changed since W' was made. */
  #refreshMerged(fn: string): void {
    const m = this.#merged!;
    const k = this.engine.kernel;
    if (k.firstDifference(fn, describe(this.A, 'A'), describe(m.a, "A'")) >= 0 || k.firstDifference(fn, describe(this.B, 'B'), describe(m.b, "B'")) >= 0) {
      this.#mergeInto(fn, m.w, m.a, m.b);
    }
  }

  protected get what(): string {
    return `LoRALinear [${this.dOut}, ${this.dIn}]`;
  }

  /** Not disposed, and every matrix the layer reads or writes is alive and of this instance. */
  #check(fn: string): void {
    this.check(fn, {
      W: this.W, bias: this.bias, A: this.A, B: this.B, gradA: this.gradA, gradB: this.gradB,
      "W'": this.#merged?.w, "A'": this.#merged?.a, "B'": this.#merged?.b,
    });
  }
}
