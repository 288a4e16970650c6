/**
 * General matrix product: C = alpha·op(X)·op(Y) + beta·C (assembly/gemm.ts).
 *
 *   op(X): [n, K] — X is [n, K], or [K, n] with transX
 *   op(Y): [K, m] — Y is [K, m], or [m, K] with transY
 *   C:     [n, m]
 *
 * nn.Linear's y = x·Wᵀ with W stored [dOut, dIn] is gemm(Y, X, W, { transY: true }):
 * W is read in place, never transposed into a copy.
 */
import { LoRAShapeError } from '../errors.js';
import { describe } from '../kernel/descriptor.js';
import { newMatrix } from '../memory/matrix.js';
import type { Matrix } from '../memory/matrix.js';
import type { Engine } from '../runtime/engine.js';
import {
  type MatrixInput, type Operand, assertDisjoint, boolOption, f32Option, operand, optionsObject, shapeOf, withStaging,
} from './operands.js';

export interface GemmOptions {
  /** Use Xᵀ: X is stored [K, n]. */
  transX?: boolean;
  /** Use Yᵀ: Y is stored [m, K] (e.g. nn.Linear's W: [dOut, dIn]). */
  transY?: boolean;
  /** Default 1; finite in f32. */
  alpha?: number;
  /** Default 0 (C's old contents are ignored, never read); finite in f32. */
  beta?: number;
}

interface Plan {
  x: Operand;
  y: Operand;
  n: number;
  m: number;
  transX: boolean;
  transY: boolean;
  alpha: number;
  beta: number;
}

function plan(engine: Engine, fn: string, xIn: unknown, yIn: unknown, opts: unknown): Plan {
  const o = optionsObject<GemmOptions>(fn, opts, '{ transX, transY, alpha, beta }');
  const x = operand(engine.heap, fn, 'X', xIn);
  const y = operand(engine.heap, fn, 'Y', yIn);
  const transX = boolOption(fn, 'options.transX', o.transX, false);
  const transY = boolOption(fn, 'options.transY', o.transY, false);
  const alpha = f32Option(fn, 'options.alpha', o.alpha, 1);
  const beta = f32Option(fn, 'options.beta', o.beta, 0);
  const kx = transX ? x.rows : x.cols;
  const ky = transY ? y.cols : y.rows;
  if (kx !== ky) {
    const opX = transX ? 'Xᵀ' : 'X';
    const opY = transY ? 'Yᵀ' : 'Y';
    throw new LoRAShapeError(
      `${fn}: X is ${shapeOf(x)} and Y is ${shapeOf(y)}; ${opX}·${opY} needs the inner sizes to agree, got ${kx} and ${ky}`,
    );
  }
  return { x, y, n: transX ? x.cols : x.rows, m: transY ? y.rows : y.cols, transX, transY, alpha, beta };
}

/** C ← alpha·op(X)·op(Y) + beta·C; returns C. C may not share memory with X or Y. */
export function gemm<T extends MatrixInput>(engine: Engine, cIn: T, xIn: MatrixInput, yIn: MatrixInput, opts?: GemmOptions): T {
  const fn = 'gemm';
  const p = plan(engine, fn, xIn, yIn, opts);
  const c = operand(engine.heap, fn, 'C', cIn);
  if (c.rows !== p.n || c.cols !== p.m) {
    throw new LoRAShapeError(`${fn}: C is ${shapeOf(c)} but op(X)·op(Y) is [${p.n}, ${p.m}]`);
  }
  assertDisjoint(fn, c, [p.x, p.y]);
  withStaging(engine.heap, fn, (staging) => {
    const cd = staging.output(c, p.beta !== 0);
    const xd = staging.input(p.x);
    const yd = staging.input(p.y);
    staging.load();
    engine.kernel.gemm(fn, cd, xd, yd, p);
    staging.commit();
  });
  return cIn;
}

/** alpha·op(X)·op(Y) as a new Matrix [n, m] (allocates; dispose it when done). */
export function matmul(engine: Engine, xIn: MatrixInput, yIn: MatrixInput, opts?: Omit<GemmOptions, 'beta'>): Matrix {
  const fn = 'matmul';
  const o = optionsObject<GemmOptions>(fn, opts, '{ transX, transY, alpha }');
  const p = plan(engine, fn, xIn, yIn, { ...o, beta: undefined });
  return withStaging(engine.heap, fn, (staging) => {
    const xd = staging.input(p.x);
    const yd = staging.input(p.y);
    const result = staging.result(newMatrix(engine.heap, fn, p.n, p.m));
    staging.load();
    engine.kernel.gemm(fn, describe(result, 'result'), xd, yd, p);
    return result;
  });
}
