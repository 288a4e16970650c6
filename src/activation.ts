/** ReLU as a layer: Y = max(X, 0); ∂L/∂X = G where Y > 0 (equivalently X > 0), else 0. */
import { LoRAStateError } from './errors.js';
import { type Layer, type Parameter, ensureBuffer, gradOperand, saveInput } from './layer.js';
import type { Matrix } from './matrix.js';
import { type MatrixInput, Staging, operand } from './operands.js';
import type { Engine } from './runtime.js';

export class ReLU implements Layer {
  inputGrad = true;
  readonly trainableParameters = 0;
  readonly frozenParameters = 0;
  readonly #engine: Engine;
  #y: Matrix | undefined;
  #dx: Matrix | undefined;

  /** @internal use lw.relu() */
  constructor(engine: Engine) {
    this.#engine = engine;
  }

  parameters(): Parameter[] {
    return [];
  }

  forward(x: MatrixInput): Matrix {
    const e = this.#engine;
    const op = operand(e.heap, 'forward', 'X', x);
    this.#y = saveInput(e, 'forward', 'X', x, op.cols, 'ReLU keeps the width', this.#y);
    e.kernels.reluForward(this.#y.ptr, this.#y.ptr, this.#y.rows * this.#y.cols);
    return this.#y;
  }

  backward(g: MatrixInput): Matrix {
    const fn = 'backward';
    if (!this.#y) throw new LoRAStateError(`${fn}: call forward() before backward()`);
    const e = this.#engine;
    const y = this.#y;
    const gOp = gradOperand(e, fn, g, y.rows, y.cols);
    const staging = new Staging(e.heap, fn);
    try {
      const gp = staging.input(gOp);
      this.#dx = ensureBuffer(e, fn, this.#dx, y.rows, y.cols);
      e.kernels.reluBackward(this.#dx.ptr, gp, y.ptr, y.rows * y.cols);
      return this.#dx;
    } finally {
      staging.release();
    }
  }

  dispose(): void {
    this.#y?.dispose();
    this.#dx?.dispose();
  }
}
