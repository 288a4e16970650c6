/**
 * Optimizers: update each Parameter's value in place from its grad
 * (assembly/optim.ts). State buffers live in wasm memory until dispose().
 *
 * Options are checked before any state is allocated, and `lr` again whenever
 * it is set. step() checks every parameter, gradient and state buffer (alive,
 * this instance) before it updates the first one, so a step that throws has
 * changed nothing.
 */
import { LoRADisposedError, LoRARangeError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { describe } from '../kernel/descriptor.js';
import type { KernelLayer } from '../kernel/kernel.js';
import { type DType, Matrix } from '../memory/matrix.js';
import { boolOption, checkMatrix, f32Option, optionsObject } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { type Parameter, allocAll } from './layer.js';

export interface SGDOptions {
  /** Learning rate ≥ 0. Default 0.01. */
  lr?: number;
  /** Momentum μ in [0, 1). Default 0. */
  momentum?: number;
  /** L2 penalty ≥ 0 added to the gradient (coupled, as torch.optim.SGD). Default 0. */
  weightDecay?: number;
  /** Nesterov momentum (needs momentum > 0, as in torch). */
  nesterov?: boolean;
}

export interface AdamWOptions {
  /** Learning rate ≥ 0. Default 1e-3. */
  lr?: number;
  /** In [0, 1). Default 0.9. */
  beta1?: number;
  /** In [0, 1). Default 0.999. */
  beta2?: number;
  /** > 0. Default 1e-8. */
  eps?: number;
  /** Decoupled weight decay ≥ 0. Default 0.01 (torch.optim.AdamW's default). */
  weightDecay?: number;
}

const readLr = (fn: string, name: string, v: unknown, dflt: number): number => f32Option(fn, name, v, dflt, { lo: 0 });

function checkParams(engine: Engine, fn: string, params: unknown): Parameter[] {
  if (!Array.isArray(params) || params.length === 0) {
    throw new LoRATypeError(`${fn}: params must be a non-empty array of { value, grad } (e.g. model.parameters()), got ${describeValue(params)}`);
  }
  params.forEach((p: Partial<Parameter> | null, i) => {
    if (!p || !(p.value instanceof Matrix) || !(p.grad instanceof Matrix)) {
      throw new LoRATypeError(`${fn}: params[${i}] must be { value: Matrix, grad: Matrix }, got ${describeValue(p)}`);
    }
    checkMatrix(engine.heap, fn, `params[${i}].value`, p.value);
    checkMatrix(engine.heap, fn, `params[${i}].grad`, p.grad);
    for (const [what, m] of [['value', p.value], ['grad', p.grad]] as const) {
      const dtype = (m as Matrix<DType>).dtype;
      if (dtype !== 'f32') throw new LoRATypeError(`${fn}: params[${i}].${what} is ${dtype} but ${fn} supports f32 only`);
    }
    if (p.value.rows !== p.grad.rows || p.value.cols !== p.grad.cols) {
      throw new LoRAShapeError(`${fn}: params[${i}] has value [${p.value.rows}, ${p.value.cols}] but grad [${p.grad.rows}, ${p.grad.cols}]; they must match`);
    }
  });
  return params as Parameter[];
}

abstract class Optimizer {
  readonly params: readonly Parameter[];
  protected readonly engine: Engine;
  protected readonly state: Matrix[][];
  readonly #fn: string;
  #lr: number;
  #disposed = false;
  /** Steps taken. */
  t = 0;

  constructor(engine: Engine, fn: string, params: unknown, buffersPerParam: number, lr: number) {
    this.engine = engine;
    this.#fn = fn;
    this.params = checkParams(engine, fn, params);
    this.#lr = lr;
    const shapes = this.params.flatMap((p) => Array.from({ length: buffersPerParam }, () => [p.value.rows, p.value.cols] as const));
    const made = allocAll(engine, fn, shapes);
    this.state = this.params.map((_, i) => made.slice(i * buffersPerParam, (i + 1) * buffersPerParam));
  }

  /** Learning rate: finite in f32 and ≥ 0, checked when set. */
  get lr(): number {
    return this.#lr;
  }

  set lr(v: number) {
    this.#lr = readLr(this.#fn, 'lr', v, this.#lr);
  }

  /** Applies one update to every parameter from its current grad (all are checked first). */
  step(): void {
    const fn = 'step';
    if (this.#disposed) throw new LoRADisposedError(`${fn}: this optimizer was disposed`);
    const heap = this.engine.heap;
    this.params.forEach((p, i) => {
      checkMatrix(heap, fn, `${p.name ?? `params[${i}]`} (params[${i}].value)`, p.value);
      checkMatrix(heap, fn, `gradient of ${p.name ?? `params[${i}]`} (params[${i}].grad)`, p.grad);
    });
    this.t++;
    const k = this.engine.kernel;
    this.params.forEach((p, i) => this.update(k, fn, p, this.state[i]!));
  }

  protected abstract update(k: KernelLayer, fn: string, p: Parameter, state: Matrix[]): void;

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const s of this.state) for (const m of s) m.dispose();
  }
}

/** torch.optim.SGD: v = μ·v + (g + wd·p); p -= lr·v (or lr·(g' + μ·v) with nesterov). */
export class SGD extends Optimizer {
  readonly momentum: number;
  readonly weightDecay: number;
  readonly nesterov: boolean;

  /** @internal use lw.sgd(params, options) */
  constructor(engine: Engine, params: unknown, opts?: SGDOptions) {
    const fn = 'sgd';
    const o = optionsObject<SGDOptions>(fn, opts, '{ lr, momentum, weightDecay, nesterov }');
    const lr = readLr(fn, 'options.lr', o.lr, 0.01);
    const momentum = f32Option(fn, 'options.momentum', o.momentum, 0, { lo: 0, hi: 1, hiOpen: true });
    const weightDecay = f32Option(fn, 'options.weightDecay', o.weightDecay, 0, { lo: 0 });
    const nesterov = boolOption(fn, 'options.nesterov', o.nesterov, false);
    if (nesterov && momentum === 0) throw new LoRARangeError(`${fn}: options.nesterov needs options.momentum > 0`);
    super(engine, fn, params, 1, lr);
    this.momentum = momentum;
    this.weightDecay = weightDecay;
    this.nesterov = nesterov;
  }

  protected update(k: KernelLayer, fn: string, p: Parameter, [v]: Matrix[]): void {
    k.sgdStep(fn, describe(p.value, p.name ?? 'parameter'), describe(p.grad, `grad ${p.name ?? 'parameter'}`), describe(v!, 'momentum'), this.lr, this.momentum, this.weightDecay, this.nesterov);
  }
}

/** torch.optim.AdamW: Adam with bias correction and decoupled weight decay. */
export class AdamW extends Optimizer {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;

  /** @internal use lw.adamw(params, options) */
  constructor(engine: Engine, params: unknown, opts?: AdamWOptions) {
    const fn = 'adamw';
    const o = optionsObject<AdamWOptions>(fn, opts, '{ lr, beta1, beta2, eps, weightDecay }');
    const lr = readLr(fn, 'options.lr', o.lr, 1e-3);
    const beta1 = f32Option(fn, 'options.beta1', o.beta1, 0.9, { lo: 0, hi: 1, hiOpen: true });
    const beta2 = f32Option(fn, 'options.beta2', o.beta2, 0.999, { lo: 0, hi: 1, hiOpen: true });
    const eps = f32Option(fn, 'options.eps', o.eps, 1e-8, { lo: 0, loOpen: true });
    const weightDecay = f32Option(fn, 'options.weightDecay', o.weightDecay, 0.01, { lo: 0 });
    super(engine, fn, params, 2, lr);
    this.beta1 = beta1;
    this.beta2 = beta2;
    this.eps = eps;
    this.weightDecay = weightDecay;
  }

  protected update(k: KernelLayer, fn: string, p: Parameter, [m, v]: Matrix[]): void {
    const bc1 = 1 - this.beta1 ** this.t;
    const bc2 = 1 - this.beta2 ** this.t;
    k.adamwStep(
      fn, describe(p.value, p.name ?? 'parameter'), describe(p.grad, `grad ${p.name ?? 'parameter'}`), describe(m!, 'first moment'), describe(v!, 'second moment'),
      this.lr, this.beta1, this.beta2, this.eps, this.weightDecay, bc1, bc2,
    );
  }
}
