/** ReLU as a layer: Y = max(X, 0); ∂L/∂X = G where Y > 0 (equivalently X > 0), else 0. */
import { LoRAStateError } from '../errors.js';
import { describe } from '../kernel/descriptor.js';
import type { Matrix } from '../memory/matrix.js';
import { type MatrixInput, operand, withStaging } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { ActivationCache, type Layer, type Parameter, activationDroppers, assertNotDisposed, copyInto, gradOperand, layerEngines } from './layer.js';

export class ReLU implements Layer {
  inputGrad = true;
  readonly trainableParameters = 0;
  readonly frozenParameters = 0;
  readonly #engine: Engine;
  readonly #acts: ActivationCache<'y'>;
  readonly #grads: ActivationCache<'dx'>;
  #last: Matrix | undefined;
  #disposed = false;

  /** @internal use lw.relu() */
  constructor(engine: Engine) {
    this.#engine = engine;
    this.#acts = new ActivationCache(engine, 'forward');
    this.#grads = new ActivationCache(engine, 'backward');
    layerEngines.set(this, engine);
    activationDroppers.set(this, () => this.#dropActivations());
  }

  parameters(): Parameter[] {
    return [];
  }

  forward(x: MatrixInput): Matrix {
    const fn = 'forward';
    assertNotDisposed(this.#disposed, fn, 'ReLU');
    const e = this.#engine;
    const op = operand(e.heap, fn, 'X', x);
    const { y } = this.#acts.get({ y: [op.rows, op.cols] });
    this.#last = undefined;
    copyInto(e, fn, y, op);
    const Y = describe(y, 'Y');
    e.kernel.reluForward(fn, Y, Y);
    this.#last = y;
    return y;
  }

  backward(g: MatrixInput): Matrix {
    const fn = 'backward';
    assertNotDisposed(this.#disposed, fn, 'ReLU');
    const y = this.#last;
    if (!y) throw new LoRAStateError(`${fn}: call forward() before backward()`);
    const e = this.#engine;
    const gOp = gradOperand(e, fn, g, y.rows, y.cols);
    const { dx } = this.#grads.get({ dx: [y.rows, y.cols] });
    return withStaging(e.heap, fn, (staging) => {
      const G = staging.input(gOp);
      staging.load();
      e.kernel.reluBackward(fn, describe(dx, 'dX'), G, describe(y, 'Y'));
      return dx;
    });
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#dropActivations();
  }

  #dropActivations(): void {
    this.#acts.clear();
    this.#grads.clear();
    this.#last = undefined;
  }
}
