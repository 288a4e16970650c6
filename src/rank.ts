/**
 * delta / merge / unmerge / mergeInto: argument checks, then the kernels of
 * assembly/rank.ts.
 *
 *   A: [dOut, r]   B: [r, dIn]   W, W0, out: [dOut, dIn]   s = scale
 *   delta      Δ = s·A·B                      (allocates the result)
 *   merge      W ← W + s·A·B                  (in place, one pass over W)
 *   unmerge    W ← W − s·A·B                  (in place)
 *   mergeInto  out ← W0 + s·A·B               (W0 untouched; out may be W0)
 *
 * HuggingFace PEFT names the same factors the other way round:
 *   our A = PEFT `lora_B.weight` [out, r],  our B = PEFT `lora_A.weight` [r, in].
 *
 * Order of work: validate everything, stage plain operands, reject
 * non-finite adapters, (safe) prove the result finite, then write.
 */
import { LoRANonFiniteError, LoRAShapeError, LoRATypeError } from './errors.js';
import { MATRIX_TOKEN, Matrix } from './matrix.js';
import {
  type MatrixInput,
  type Operand,
  Staging,
  assertDisjoint,
  assertSameOrDisjoint,
  describeValue,
  operand,
  shapeOf,
} from './operands.js';
import { type Kernels, TILE_COLS, TILE_TMP_BYTES, TileMode, packedABytes, packedBBytes } from './kernels.js';
import type { Engine } from './runtime.js';

/** Twin of MODE_* in assembly/rank.ts (the tile's epilogues). */
export const enum RankMode {
  Delta = TileMode.Store,
  Merge = TileMode.Add,
  Check = TileMode.Check,
}
/** Bytes of packed B kept cache-resident per column block. */
const B_PANEL_BYTES = 128 * 1024;
/** Columns per packed-B block for rank r: a multiple of 8 whose r·cols·4 bytes fit B_PANEL_BYTES. */
const colBlockFor = (r: number): number => Math.max(TILE_COLS, Math.floor(B_PANEL_BYTES / (r * 4 * TILE_COLS)) * TILE_COLS);
const F32_MAX = 3.4028234663852886e38;

export interface ScaleOptions {
  /** s in W + s·A·B. Default 1. Use loraScale({ alpha, r }) for PEFT's alpha/r. Applied in f32. */
  scale?: number;
}

export interface MergeOptions extends ScaleOptions {
  /**
   * Guarantee that W is either fully merged and finite, or left bit-for-bit
   * untouched (the call then throws LoRANonFiniteError). Costs one read pass
   * over W, plus a second compute pass only when values come within 2× of
   * f32's range. A and B are always checked, safe or not.
   */
  safe?: boolean;
}

function readScale(fn: string, opts: unknown): number {
  if (opts === undefined) return 1;
  if (typeof opts !== 'object' || opts === null) {
    throw new LoRATypeError(`${fn}: options must be an object like { scale }, got ${describeValue(opts)}`);
  }
  const s = (opts as { scale?: unknown }).scale;
  if (s === undefined) return 1;
  if (typeof s !== 'number') throw new LoRATypeError(`${fn}: options.scale must be a number, got ${describeValue(s)}`);
  const f = Math.fround(s);
  if (!Number.isFinite(f)) {
    throw new LoRANonFiniteError(`${fn}: options.scale must be finite in f32, got ${s}`);
  }
  return f;
}

function readSafe(fn: string, opts: unknown): boolean {
  const safe = (opts as { safe?: unknown } | undefined)?.safe;
  if (safe === undefined) return false;
  if (typeof safe !== 'boolean') throw new LoRATypeError(`${fn}: options.safe must be a boolean, got ${describeValue(safe)}`);
  return safe;
}

/** Checks A: [dOut, r] and B: [r, dIn] against each other and against the output's [dOut, dIn]. */
function checkFactors(fn: string, a: Operand, b: Operand, w?: Operand): void {
  if (a.cols !== b.rows) {
    throw new LoRAShapeError(
      `${fn}: A is ${shapeOf(a)} but B is ${shapeOf(b)}; A's columns and B's rows are the rank r and must agree`,
    );
  }
  if (w === undefined) return;
  if (a.rows !== w.rows) {
    throw new LoRAShapeError(`${fn}: A is ${shapeOf(a)} but ${w.name} is ${shapeOf(w)}; A must have ${w.name}'s ${w.rows} rows`);
  }
  if (b.cols !== w.cols) {
    throw new LoRAShapeError(
      `${fn}: B is ${shapeOf(b)} but ${w.name} is ${shapeOf(w)}; B must have ${w.name}'s ${w.cols} columns`,
    );
  }
}

function rejectNonFinite(engine: Engine, k: Kernels, fn: string, op: Operand, what: string): void {
  const i = k.firstNonFinite(op.ptr, op.rows * op.cols);
  if (i < 0) return;
  const value = engine.heap.f32(op.ptr + i * 4, 1)[0];
  throw new LoRANonFiniteError(`${fn}: ${op.name}[${Math.floor(i / op.cols)}, ${i % op.cols}] is ${value}; ${what}`);
}

/**
 * The one routine behind every public operation: out = [w0 +] scale·A·B.
 * For delta, `outIn` and `w0In` are undefined and the result Matrix is
 * allocated once the arguments have passed their checks.
 */
function rankR(
  engine: Engine, fn: string, mode: RankMode.Delta | RankMode.Merge,
  outIn: unknown, w0In: unknown, aIn: unknown, bIn: unknown, scale: number, safe: boolean,
): Matrix | undefined {
  const { heap } = engine;
  const k = engine.kernels;
  const a = operand(heap, fn, 'A', aIn);
  const b = operand(heap, fn, 'B', bIn);
  const outName = fn === 'mergeInto' ? 'out' : 'W';
  const out = outIn === undefined ? undefined : operand(heap, fn, outName, outIn);
  const w0 = w0In === undefined ? undefined : w0In === outIn ? out : operand(heap, fn, 'W0', w0In);
  checkFactors(fn, a, b, out);
  if (out && w0 && w0 !== out) {
    if (w0.rows !== out.rows || w0.cols !== out.cols) {
      throw new LoRAShapeError(`${fn}: W0 is ${shapeOf(w0)} but out is ${shapeOf(out)}; they must have the same shape`);
    }
    assertSameOrDisjoint(fn, out, w0);
  }
  if (out) assertDisjoint(fn, out, [a, b]);

  const dOut = a.rows;
  const r = a.cols;
  const dIn = b.cols;
  const staging = new Staging(heap, fn);
  let result: Matrix | undefined;
  try {
    staging.input(a);
    staging.input(b);
    if (w0 && w0 !== out) staging.input(w0);
    if (out) staging.output(out, w0 === out);
    const ap = staging.alloc(packedABytes(dOut, r));
    const bp = staging.alloc(packedBBytes(dIn, r));
    const tmp = staging.alloc(TILE_TMP_BYTES);
    if (!out) result = new Matrix(MATRIX_TOKEN, heap, heap.alloc(dOut * dIn * 4, fn), dOut, dIn);
    const target = out ?? { ptr: result!.ptr, name: 'result' };

    const rejected = out ? `the adapter was rejected and ${out.name} was not modified` : 'the adapter was rejected';
    rejectNonFinite(engine, k, fn, a, rejected);
    rejectNonFinite(engine, k, fn, b, rejected);

    k.packA(ap, a.ptr, r, 0, 0, dOut, 0, r, scale); // s·A, [dOut, r] row-major
    k.packB(bp, b.ptr, dIn, 0, 0, r, 0, dIn); // B, [r, dIn] row-major
    const colBlock = colBlockFor(r);
    const src = w0 ?? target;

    if (safe && mode === RankMode.Merge) {
      const n = dOut * dIn;
      // |w0 + s·A·B| ≤ max|w0| + |s|·max_i Σ_k |A[i,k]| · max|B|; below F32_MAX/2 the f32
      // result cannot overflow (rounding adds far less than a factor 2), so the
      // exact check pass is only needed near f32's range or when w0 holds NaN/Inf.
      const bound = k.absMax(src.ptr, n) + Math.abs(scale) * k.maxRowAbsSum(a.ptr, dOut, r) * k.absMax(b.ptr, r * dIn);
      if (!(bound < F32_MAX / 2)) {
        if (k.rankRUpdate(0, src.ptr, ap, bp, tmp, dOut, dIn, r, colBlock, RankMode.Check) !== 0) {
          const i = k.firstNonFinite(src.ptr, n);
          const srcName = w0 === out ? (out?.name ?? 'W') : 'W0';
          const why =
            i >= 0
              ? `${srcName}[${Math.floor(i / dIn)}, ${i % dIn}] is not finite`
              : `${srcName} + s·A·B would overflow f32 to ±Infinity`;
          throw new LoRANonFiniteError(`${fn}: ${why}; with safe: true ${out?.name ?? 'W'} was left untouched`);
        }
      }
    }
    k.rankRUpdate(target.ptr, src.ptr, ap, bp, tmp, dOut, dIn, r, colBlock, mode);
    staging.commit();
    return result;
  } catch (e) {
    result?.dispose();
    throw e;
  } finally {
    staging.release();
  }
}

/** Δ = s·A·B as a new Matrix [dOut, dIn] (allocates; dispose it when done). */
export function delta(engine: Engine, a: MatrixInput, b: MatrixInput, opts?: ScaleOptions): Matrix {
  const scale = readScale('delta', opts);
  return rankR(engine, 'delta', RankMode.Delta, undefined, undefined, a, b, scale, false)!;
}

/** W ← W + s·A·B in place; returns W. */
export function merge<T extends MatrixInput>(engine: Engine, w: T, a: MatrixInput, b: MatrixInput, opts?: MergeOptions): T {
  rankR(engine, 'merge', RankMode.Merge, w, w, a, b, readScale('merge', opts), readSafe('merge', opts));
  return w;
}

/** W ← W − s·A·B in place (undoes merge with the same A, B, s); returns W. */
export function unmerge<T extends MatrixInput>(engine: Engine, w: T, a: MatrixInput, b: MatrixInput, opts?: MergeOptions): T {
  rankR(engine, 'unmerge', RankMode.Merge, w, w, a, b, -readScale('unmerge', opts), readSafe('unmerge', opts));
  return w;
}

/** out ← W0 + s·A·B, leaving W0 untouched (out may be W0 itself); returns out. */
export function mergeInto<T extends MatrixInput>(
  engine: Engine, out: T, w0: MatrixInput, a: MatrixInput, b: MatrixInput, opts?: MergeOptions,
): T {
  rankR(engine, 'mergeInto', RankMode.Merge, out, w0, a, b, readScale('mergeInto', opts), readSafe('mergeInto', opts));
  return out;
}

/**
 * out ← src + s·L·R, L: [n, r] row-major, R: [r, cols] row-major, or with
 * transR its transpose stored [cols, r] (as A is). One pass over out via the
 * rank-r kernel; out may be src.
 */
export function addRankR(
  engine: Engine, fn: string, out: number, src: number, l: number, rMat: number, n: number, cols: number, r: number,
  s: number, transR: boolean,
): void {
  const k = engine.kernels;
  const staging = new Staging(engine.heap, fn);
  try {
    const ap = staging.alloc(packedABytes(n, r));
    const bp = staging.alloc(packedBBytes(cols, r));
    const tmp = staging.alloc(TILE_TMP_BYTES);
    k.packA(ap, l, r, 0, 0, n, 0, r, s);
    k.packB(bp, rMat, transR ? r : cols, transR ? 1 : 0, 0, r, 0, cols);
    k.rankRUpdate(out, src, ap, bp, tmp, n, cols, r, colBlockFor(r), TileMode.Add);
  } finally {
    staging.release();
  }
}
