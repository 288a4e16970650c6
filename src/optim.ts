/**
 * Optimizers: update each Parameter's value in place from its grad
 * (assembly/optim.ts). State buffers live in wasm memory until dispose().
 */
import { LoRAStateError, LoRATypeError } from './errors.js';
import type { Kernels } from './kernels.js';
import { type Parameter, zeros } from './layer.js';
import { Matrix } from './matrix.js';
import { describeValue } from './operands.js';
import type { Engine } from './runtime.js';

export interface SGDOptions {
  /** Learning rate. Default 0.01. */
  lr?: number;
  /** Momentum μ. Default 0. */
  momentum?: number;
  /** L2 penalty added to the gradient (coupled, as torch.optim.SGD). Default 0. */
  weightDecay?: number;
  nesterov?: boolean;
}

export interface AdamWOptions {
  /** Learning rate. Default 1e-3. */
  lr?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay. Default 0.01 (torch.optim.AdamW's default). */
  weightDecay?: number;
}

function num(fn: string, name: string, v: unknown, dflt: number, lo: number, hi: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !(v >= lo && v <= hi)) {
    throw new LoRATypeError(`${fn}: options.${name} must be a number in [${lo}, ${hi}], got ${describeValue(v)}`);
  }
  return v;
}

function checkParams(fn: string, params: unknown): Parameter[] {
  if (!Array.isArray(params) || params.length === 0) {
    throw new LoRATypeError(`${fn}: params must be a non-empty array of { value, grad } (e.g. model.parameters()), got ${describeValue(params)}`);
  }
  params.forEach((p, i) => {
    const ok = p && p.value instanceof Matrix && p.grad instanceof Matrix && p.value.rows === p.grad.rows && p.value.cols === p.grad.cols;
    if (!ok) throw new LoRATypeError(`${fn}: params[${i}] must be { value: Matrix, grad: Matrix } of one shape`);
  });
  return params as Parameter[];
}

abstract class Optimizer {
  readonly params: readonly Parameter[];
  protected readonly engine: Engine;
  protected readonly state: Matrix[][];
  #disposed = false;
  /** Steps taken. */
  t = 0;

  constructor(engine: Engine, fn: string, params: unknown, buffersPerParam: number) {
    this.engine = engine;
    this.params = checkParams(fn, params);
    this.state = this.params.map((p) => Array.from({ length: buffersPerParam }, () => zeros(engine, fn, p.value.rows, p.value.cols)));
  }

  /** Applies one update to every parameter from its current grad. */
  step(): void {
    if (this.#disposed) throw new LoRAStateError('step: this optimizer was disposed');
    this.t++;
    const k = this.engine.kernels;
    this.params.forEach((p, i) => {
      p.value.assertLive('step');
      this.update(k, p, this.state[i]!);
    });
  }

  protected abstract update(k: Kernels, p: Parameter, state: Matrix[]): void;

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const s of this.state) for (const m of s) m.dispose();
  }
}

/** torch.optim.SGD: v = μ·v + (g + wd·p); p -= lr·v (or lr·(g' + μ·v) with nesterov). */
export class SGD extends Optimizer {
  lr: number;
  readonly momentum: number;
  readonly weightDecay: number;
  readonly nesterov: boolean;

  /** @internal use lw.sgd(params, options) */
  constructor(engine: Engine, params: unknown, opts: SGDOptions = {}) {
    super(engine, 'sgd', params, 1);
    this.lr = num('sgd', 'lr', opts.lr, 0.01, 0, Infinity);
    this.momentum = num('sgd', 'momentum', opts.momentum, 0, 0, 1);
    this.weightDecay = num('sgd', 'weightDecay', opts.weightDecay, 0, 0, Infinity);
    this.nesterov = opts.nesterov ?? false;
  }

  protected update(k: Kernels, p: Parameter, [v]: Matrix[]): void {
    k.sgdStep(p.value.ptr, p.grad.ptr, v!.ptr, p.value.length, this.lr, this.momentum, this.weightDecay, this.nesterov ? 1 : 0);
  }
}

/** torch.optim.AdamW: Adam with bias correction and decoupled weight decay. */
export class AdamW extends Optimizer {
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;

  /** @internal use lw.adamw(params, options) */
  constructor(engine: Engine, params: unknown, opts: AdamWOptions = {}) {
    super(engine, 'adamw', params, 2);
    this.lr = num('adamw', 'lr', opts.lr, 1e-3, 0, Infinity);
    this.beta1 = num('adamw', 'beta1', opts.beta1, 0.9, 0, 0.999999);
    this.beta2 = num('adamw', 'beta2', opts.beta2, 0.999, 0, 0.999999);
    this.eps = num('adamw', 'eps', opts.eps, 1e-8, 0, Infinity);
    this.weightDecay = num('adamw', 'weightDecay', opts.weightDecay, 0.01, 0, Infinity);
  }

  protected update(k: Kernels, p: Parameter, [m, v]: Matrix[]): void {
    const bc1 = 1 - this.beta1 ** this.t;
    const bc2 = 1 - this.beta2 ** this.t;
    k.adamwStep(p.value.ptr, p.grad.ptr, m!.ptr, v!.ptr, p.value.length, this.lr, this.beta1, this.beta2, this.eps, this.weightDecay, bc1, bc2);
  }
}
