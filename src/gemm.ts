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
import { LoRAShapeError, LoRATypeError } from './errors.js';
import { GEMM_KC, GEMM_MC, GEMM_NC, TILE_TMP_BYTES } from './kernels.js';
import { MATRIX_TOKEN, Matrix } from './matrix.js';
import { type MatrixInput, type Operand, Staging, assertDisjoint, describeValue, operand, shapeOf } from './operands.js';
import type { Engine } from './runtime.js';

export interface GemmOptions {
  /** Use Xᵀ: X is stored [K, n]. */
  transX?: boolean;
  /** Use Yᵀ: Y is stored [m, K] (e.g. nn.Linear's W: [dOut, dIn]). */
  transY?: boolean;
  /** Default 1. */
  alpha?: number;
  /** Default 0: C's old contents are ignored (never read). */
  beta?: number;
}

const SCRATCH_BYTES = (GEMM_MC * GEMM_KC + GEMM_KC * GEMM_NC) * 4 + TILE_TMP_BYTES;

/**
 * The unchecked kernel call on pointers, for modules that validated already.
 * A single row times Yᵀ (nn.Linear at batch 1) goes to the unpacked
 * matrix-vector kernel; everything else allocates the GEMM's scratch (≈ 320 KB).
 */
export function gemmPtr(
  engine: Engine, fn: string, c: number, x: number, y: number, n: number, m: number, k: number,
  transX: boolean, transY: boolean, alpha: number, beta: number,
): void {
  if (n === 1 && transY) {
    // x is one row whichever way it is stored ([1, K] or [K, 1] are the same K floats)
    engine.kernels.gemvT(c, x, y, m, k, alpha, beta);
    return;
  }
  const heap = engine.heap;
  const scratch = heap.alloc(SCRATCH_BYTES, fn);
  try {
    const ap = scratch;
    const bp = ap + GEMM_MC * GEMM_KC * 4;
    const tmp = bp + GEMM_KC * GEMM_NC * 4;
    engine.kernels.gemm(c, x, y, n, m, k, transX ? 1 : 0, transY ? 1 : 0, alpha, beta, ap, bp, tmp);
  } finally {
    heap.free(scratch);
  }
}

function readNumber(fn: string, name: string, v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new LoRATypeError(`${fn}: options.${name} must be a finite number, got ${describeValue(v)}`);
  }
  return Math.fround(v);
}

function readBool(fn: string, name: string, v: unknown): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new LoRATypeError(`${fn}: options.${name} must be a boolean, got ${describeValue(v)}`);
  return v;
}

interface Plan {
  x: Operand;
  y: Operand;
  n: number;
  m: number;
  k: number;
  transX: boolean;
  transY: boolean;
  alpha: number;
  beta: number;
}

function plan(engine: Engine, fn: string, xIn: unknown, yIn: unknown, opts: GemmOptions | undefined): Plan {
  if (opts !== undefined && (typeof opts !== 'object' || opts === null)) {
    throw new LoRATypeError(`${fn}: options must be an object, got ${describeValue(opts)}`);
  }
  const x = operand(engine.heap, fn, 'X', xIn);
  const y = operand(engine.heap, fn, 'Y', yIn);
  const transX = readBool(fn, 'transX', opts?.transX);
  const transY = readBool(fn, 'transY', opts?.transY);
  const n = transX ? x.cols : x.rows;
  const kx = transX ? x.rows : x.cols;
  const ky = transY ? y.cols : y.rows;
  const m = transY ? y.rows : y.cols;
  if (kx !== ky) {
    const opX = transX ? 'Xᵀ' : 'X';
    const opY = transY ? 'Yᵀ' : 'Y';
    throw new LoRAShapeError(
      `${fn}: X is ${shapeOf(x)} and Y is ${shapeOf(y)}; ${opX}·${opY} needs the inner sizes to agree, got ${kx} and ${ky}`,
    );
  }
  return {
    x, y, n, m, k: kx, transX, transY,
    alpha: readNumber(fn, 'alpha', opts?.alpha, 1),
    beta: readNumber(fn, 'beta', opts?.beta, 0),
  };
}

function run(engine: Engine, fn: string, p: Plan, c: Operand, staging: Staging): void {
  staging.input(p.x);
  staging.input(p.y);
  gemmPtr(engine, fn, c.ptr, p.x.ptr, p.y.ptr, p.n, p.m, p.k, p.transX, p.transY, p.alpha, p.beta);
  staging.commit();
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
  const staging = new Staging(engine.heap, fn);
  try {
    staging.output(c, p.beta !== 0);
    run(engine, fn, p, c, staging);
  } finally {
    staging.release();
  }
  return cIn;
}

/** alpha·op(X)·op(Y) as a new Matrix [n, m] (allocates; dispose it when done). */
export function matmul(engine: Engine, xIn: MatrixInput, yIn: MatrixInput, opts?: Omit<GemmOptions, 'beta'>): Matrix {
  const fn = 'matmul';
  const p = plan(engine, fn, xIn, yIn, opts);
  p.beta = 0;
  const heap = engine.heap;
  const result = new Matrix(MATRIX_TOKEN, heap, heap.alloc(p.n * p.m * 4, fn), p.n, p.m);
  const staging = new Staging(heap, fn);
  try {
    run(engine, fn, p, operand(heap, fn, 'result', result), staging);
    return result;
  } catch (e) {
    result.dispose();
    throw e;
  } finally {
    staging.release();
  }
}
