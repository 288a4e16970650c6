/**
 * Argument checking and staging shared by every operation.
 *
 * An operand is a resident Matrix, or a plain `{ rows, cols, data: Float32Array }`
 * (the convenience path: copied into wasm memory for the call and, for
 * outputs, copied back afterwards). A plain object whose `data` already is a
 * view on wasm memory (e.g. `m.data`) is used in place, without a copy.
 *
 * Everything here runs before any kernel: an operation that throws from
 * here has written nothing.
 */
import { LoRADisposedError, LoRAShapeError, LoRATypeError } from './errors.js';
import { Matrix } from './matrix.js';
import type { WasmHeap } from './memory.js';

/** A plain row-major f32 matrix, the slower convenience path. */
export interface MatrixLike {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float32Array;
}

/** Anything an operation accepts as a matrix. */
export type MatrixInput = Matrix | MatrixLike;

export interface Operand {
  readonly name: string;
  readonly rows: number;
  readonly cols: number;
  /** Set for operands already in wasm memory; staged ones get theirs from Staging. */
  ptr: number;
  readonly resident: boolean;
  readonly plain: MatrixLike | undefined;
  /** Identity of the bytes, for aliasing checks. */
  readonly buffer: unknown;
  readonly byteStart: number;
  readonly byteEnd: number;
}

export const shapeOf = (x: { rows: number; cols: number }): string => `[${x.rows}, ${x.cols}]`;

/** Throws LoRAShapeError unless `v` is a positive safe integer. */
export function checkDim(fn: string, what: string, v: unknown): asserts v is number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
    throw new LoRAShapeError(`${fn}: ${what} must be a positive integer, got ${describeValue(v)}`);
  }
}

export function isFloat32Array(x: unknown): x is Float32Array {
  return x instanceof Float32Array || (ArrayBuffer.isView(x) && (x as { [Symbol.toStringTag]?: string })[Symbol.toStringTag] === 'Float32Array');
}

export function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return String(v);
  if (typeof v === 'string') return JSON.stringify(v.length > 20 ? `${v.slice(0, 20)}…` : v);
  if (ArrayBuffer.isView(v)) return `${(v as { [Symbol.toStringTag]?: string })[Symbol.toStringTag] ?? 'view'}(${(v as unknown as { length?: number }).length ?? v.byteLength})`;
  if (Array.isArray(v)) return `Array(${v.length})`;
  if (v instanceof Matrix) return `Matrix ${shapeOf(v)}`;
  return typeof v === 'object' ? (v.constructor?.name ?? 'object') : typeof v;
}

/** Validates one matrix argument (kind, dims, data, liveness) and describes it. */
export function operand(heap: WasmHeap, fn: string, name: string, x: unknown): Operand {
  if (x instanceof Matrix) {
    if (x.disposed) throw new LoRADisposedError(`${fn}: ${name} is a disposed Matrix ${shapeOf(x)}`);
    if (x.heap !== heap) {
      throw new LoRATypeError(`${fn}: ${name} (Matrix ${shapeOf(x)}) belongs to another lora-wasm instance`);
    }
    const bytes = x.rows * x.cols * 4;
    return { name, rows: x.rows, cols: x.cols, ptr: x.ptr, resident: true, plain: undefined, buffer: heap, byteStart: x.ptr, byteEnd: x.ptr + bytes };
  }
  if (typeof x !== 'object' || x === null || Array.isArray(x) || ArrayBuffer.isView(x) || !('data' in x)) {
    throw new LoRATypeError(`${fn}: ${name} must be a Matrix or { rows, cols, data: Float32Array }, got ${describeValue(x)}`);
  }
  const m = x as { rows?: unknown; cols?: unknown; data?: unknown };
  checkDim(fn, `${name}.rows`, m.rows);
  checkDim(fn, `${name}.cols`, m.cols);
  const data = m.data;
  if (!isFloat32Array(data)) {
    const hint = ArrayBuffer.isView(data) || Array.isArray(data) ? '; convert with Float32Array.from(…)' : '';
    throw new LoRATypeError(`${fn}: ${name}.data must be a Float32Array, got ${describeValue(data)}${hint}`);
  }
  const rows = m.rows;
  const cols = m.cols;
  if (data.length !== rows * cols) {
    const detached = data.length === 0 && data.buffer.byteLength === 0 ? ' (a detached view: read matrix.data again after allocating)' : '';
    throw new LoRAShapeError(
      `${fn}: ${name}.data has length ${data.length} but ${name} is [${rows}, ${cols}]; it needs ${rows * cols}${detached}`,
    );
  }
  const inWasm = heap.owns(data);
  return {
    name,
    rows,
    cols,
    ptr: inWasm ? data.byteOffset : -1,
    resident: inWasm,
    plain: { rows, cols, data },
    buffer: inWasm ? heap : data.buffer,
    byteStart: data.byteOffset,
    byteEnd: data.byteOffset + data.byteLength,
  };
}

const overlaps = (a: Operand, b: Operand): boolean =>
  a.buffer === b.buffer && a.byteStart < b.byteEnd && b.byteStart < a.byteEnd;

/** Throws LoRATypeError when `out` shares any byte with one of `inputs`. */
export function assertDisjoint(fn: string, out: Operand, inputs: readonly Operand[]): void {
  for (const x of inputs) {
    if (overlaps(out, x)) {
      throw new LoRATypeError(
        `${fn}: ${out.name} ${shapeOf(out)} shares memory with ${x.name} ${shapeOf(x)}; ` +
          `the output must not alias this input`,
      );
    }
  }
}

/** Throws LoRATypeError when `out` and `x` overlap without being the very same bytes. */
export function assertSameOrDisjoint(fn: string, out: Operand, x: Operand): void {
  if (overlaps(out, x) && !(out.byteStart === x.byteStart && out.byteEnd === x.byteEnd)) {
    throw new LoRATypeError(
      `${fn}: ${out.name} ${shapeOf(out)} partly overlaps ${x.name} ${shapeOf(x)}; ` +
        `they must be the same matrix or not share memory at all`,
    );
  }
}

/**
 * Temporary wasm copies for plain operands: `input()` copies in, `output()`
 * reserves and copies back on `commit()`. `release()` frees every temporary
 * (call it in `finally`), so a failed call leaks nothing and writes nothing back.
 */
export class Staging {
  private readonly temps: number[] = [];
  private readonly writeBacks: Operand[] = [];
  constructor(
    private readonly heap: WasmHeap,
    private readonly fn: string,
  ) {}

  /** Makes `op.ptr` valid, copying a plain operand's data into wasm memory. */
  input(op: Operand): number {
    if (op.resident) return op.ptr;
    op.ptr = this.alloc(op.rows * op.cols * 4);
    this.heap.f32(op.ptr, op.rows * op.cols).set(op.plain!.data);
    return op.ptr;
  }

  /** Like input(), and the result is copied back to the plain object on commit(). */
  output(op: Operand, copyIn: boolean): number {
    if (op.resident) return op.ptr;
    if (copyIn) this.input(op);
    else op.ptr = this.alloc(op.rows * op.cols * 4);
    this.writeBacks.push(op);
    return op.ptr;
  }

  /** Scratch bytes for the kernel, freed on release(). */
  alloc(bytes: number): number {
    const ptr = this.heap.alloc(bytes, this.fn);
    this.temps.push(ptr);
    return ptr;
  }

  commit(): void {
    for (const op of this.writeBacks) op.plain!.data.set(this.heap.f32(op.ptr, op.rows * op.cols));
  }

  release(): void {
    for (const ptr of this.temps) this.heap.free(ptr);
    this.temps.length = 0;
  }
}
