/** ReLU as a layer: Y = max(X, 0); ∂L/∂X = G where Y > 0 (equivalently X > 0), else 0. */
import { LoRAStateError } from '../errors.js';
import { describe } from '../kernel/descriptor.js';
import type { Matrix } from '../memory/matrix.js';
import { type MatrixInput, operand, withStaging } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { LayerBase, type Parameter, copyInto, gradOperand } from './layer.js';

/** The last forward's output Y (backward reads Y > 0). */
export class ReLU extends LayerBase<Matrix> {
  inputGrad = true;
  readonly trainableParameters = 0;
  readonly frozenParameters = 0;
  readonly #acts = this.buffers<'y'>('forward');
  readonly #grads = this.buffers<'dx'>('backward');

  /** @internal use lw.relu() */
  constructor(engine: Engine) {
    super(engine);
  }

  parameters(): Parameter[] {
    return [];
  }

  forward(x: MatrixInput): Matrix {
    const fn = 'forward';
    this.check(fn);
    const e = this.engine;
    const op = operand(e.heap, fn, 'X', x);
    const { y } = this.#acts.get({ y: [op.rows, op.cols] });
    this.last = undefined;
    copyInto(e, fn, y, op);
    const Y = describe(y, 'Y');
    e.kernel.reluForward(fn, Y, Y);
    this.last = y;
    return y;
  }

  backward(g: MatrixInput): Matrix {
    const fn = 'backward';
    this.check(fn);
    const y = this.last;
    if (!y) throw new LoRAStateError(`${fn}: call forward() before backward()`);
    const e = this.engine;
    const gOp = gradOperand(e, fn, g, y.rows, y.cols);
    const { dx } = this.#grads.get({ dx: [y.rows, y.cols] });
    return withStaging(e.heap, fn, (staging) => {
      const G = staging.input(gOp);
      staging.load();
      e.kernel.reluBackward(fn, describe(dx, 'dX'), G, describe(y, 'Y'));
      return dx;
    });
  }

  protected get what(): string {
    return 'ReLU';
  }

  protected owned(): Matrix[] {
    return [];
  }
}
