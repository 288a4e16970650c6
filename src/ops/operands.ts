/**
 * Argument checking and staging shared by every operation and layer.
 *
 * An operand is a resident Matrix, or a plain `{ rows, cols, data: Float32Array }`
 * (the convenience path: copied into wasm memory for the call and, for
 * outputs, copied back afterwards). A plain object whose `data` is a
 * Matrix's own view (`m.data`) is used in place, as long as that Matrix is
 * alive; a view of a disposed or collected Matrix is refused, and so is any
 * other view on wasm memory (it could point anywhere).
 *
 * Everything here runs before any kernel: an operation that throws from
 * here has written nothing.
 */
import { LoRADisposedError, LoRANonFiniteError, LoRARangeError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { type MatrixDesc, describe, describeBlock, shapeOf } from '../kernel/descriptor.js';
import { ITEM_BYTES } from '../memory/dtype.js';
import type { Block, WasmHeap } from '../memory/heap.js';
import { DTYPES, type DType, Matrix } from '../memory/matrix.js';
import type { Engine } from '../runtime/engine.js';

export { shapeOf };

/** A plain row-major matrix, the slower convenience path: f32 values, or f16/bf16 bit patterns with `dtype`. */
export interface MatrixLike {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float32Array;
}

/** A plain half-precision matrix: raw f16 or bf16 bit patterns. */
export interface HalfMatrixLike {
  readonly rows: number;
  readonly cols: number;
  readonly data: Uint16Array;
  readonly dtype: 'f16' | 'bf16';
}

/** Anything an f32 operation accepts as a matrix. */
export type MatrixInput = Matrix | MatrixLike;
/** Anything the merge family and convert accept: any dtype. */
export type AnyMatrixInput = Matrix<DType> | MatrixLike | HalfMatrixLike;

export const F32_ONLY: readonly DType[] = ['f32'];
export const ANY_DTYPE = DTYPES;

export interface Operand {
  readonly name: string;
  readonly rows: number;
  readonly cols: number;
  readonly dtype: DType;
  /** Set for operands already in wasm memory; staged ones get theirs from Staging. */
  desc: MatrixDesc | undefined;
  /** JS data to copy in (plain operands only): f32 values or half bit patterns. */
  readonly plain: Float32Array | Uint16Array | undefined;
  /** Identity of the bytes, for aliasing checks. */
  readonly buffer: unknown;
  readonly byteStart: number;
  readonly byteEnd: number;
}

/** Throws LoRAShapeError unless `v` is a positive safe integer. */
export function checkDim(fn: string, what: string, v: unknown): asserts v is number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
    throw new LoRAShapeError(`${fn}: ${what} must be a positive integer, got ${describeValue(v)}`);
  }
}

export function isFloat32Array(x: unknown): x is Float32Array {
  return x instanceof Float32Array || (ArrayBuffer.isView(x) && (x as { [Symbol.toStringTag]?: string })[Symbol.toStringTag] === 'Float32Array');
}

/** Checks a Matrix belongs to this instance and is alive (the kernel layer checks again on every use). */
export function checkMatrix(heap: WasmHeap, fn: string, name: string, m: Matrix<DType>): void {
  if (m.heap !== heap) throw new LoRATypeError(`${fn}: ${name} (Matrix ${shapeOf(m)}) belongs to another lora-wasm instance`);
  if (m.disposed || !heap.isLive(m.block)) throw new LoRADisposedError(`${fn}: ${name} is a disposed Matrix ${shapeOf(m)}`);
}

function checkDType(fn: string, name: string, dtype: DType, dtypes: readonly DType[]): void {
  if (!dtypes.includes(dtype)) {
    throw new LoRATypeError(
      `${fn}: ${name} is ${dtype} but ${fn} supports ${dtypes.join(', ')} only; convert it first with lw.convert(lw.matrix(rows, cols), ${name})`,
    );
  }
}

/**
 * Validates one matrix argument (kind, dims, data, dtype, liveness, instance) and describes it.
 * `dtypes` lists the element types the operation takes (f32 only unless it says more).
 */
export function operand(heap: WasmHeap, fn: string, name: string, x: unknown, dtypes: readonly DType[] = F32_ONLY): Operand {
  if (x instanceof Matrix) {
    checkMatrix(heap, fn, name, x);
    checkDType(fn, name, x.dtype, dtypes);
    const bytes = x.rows * x.cols * ITEM_BYTES[x.dtype as DType];
    return { name, rows: x.rows, cols: x.cols, dtype: x.dtype, desc: describe(x, name), plain: undefined, buffer: heap, byteStart: x.ptr, byteEnd: x.ptr + bytes };
  }
  if (typeof x !== 'object' || x === null || Array.isArray(x) || ArrayBuffer.isView(x) || !('data' in x)) {
    throw new LoRATypeError(`${fn}: ${name} must be a Matrix or { rows, cols, data: Float32Array }, got ${describeValue(x)}`);
  }
  const m = x as { rows?: unknown; cols?: unknown; data?: unknown; dtype?: unknown };
  checkDim(fn, `${name}.rows`, m.rows);
  checkDim(fn, `${name}.cols`, m.cols);
  const dtype = (m.dtype ?? 'f32') as DType;
  if (!DTYPES.includes(dtype)) throw new LoRATypeError(`${fn}: ${name}.dtype must be 'f32', 'f16' or 'bf16', got ${describeValue(m.dtype)}`);
  checkDType(fn, name, dtype, dtypes);
  const data = m.data;
  const half = dtype !== 'f32';
  if (half ? !(data instanceof Uint16Array) : !isFloat32Array(data)) {
    const want = half ? `a Uint16Array of ${dtype} bit patterns` : 'a Float32Array';
    const hint = !half && (ArrayBuffer.isView(data) || Array.isArray(data)) ? '; convert with Float32Array.from(…)' : '';
    throw new LoRATypeError(`${fn}: ${name}.data must be ${want}, got ${describeValue(data)}${hint}`);
  }
  const view = data as Float32Array | Uint16Array;
  const rows = m.rows;
  const cols = m.cols;
  const owner = heap.ownerOf(view);
  if (owner !== undefined && !heap.isLive(owner)) {
    throw new LoRADisposedError(
      `${fn}: ${name}.data is a view of a Matrix that was disposed or garbage-collected; keep the Matrix itself and pass it`,
    );
  }
  if (view.length !== rows * cols) {
    const detached = view.length === 0 && view.buffer.byteLength === 0 ? ' (a detached view: read matrix.data again after allocating)' : '';
    throw new LoRAShapeError(
      `${fn}: ${name}.data has length ${view.length} but ${name} is [${rows}, ${cols}]; it needs ${rows * cols}${detached}`,
    );
  }
  const span = { byteStart: view.byteOffset, byteEnd: view.byteOffset + view.byteLength };
  if (owner !== undefined) {
    const desc: MatrixDesc = { heap, block: owner, offset: view.byteOffset - owner.ptr, rows, cols, ld: cols, dtype, name };
    return { name, rows, cols, dtype, desc, plain: undefined, buffer: heap, ...span };
  }
  if (heap.owns(view)) {
    throw new LoRATypeError(`${fn}: ${name}.data is a view on wasm memory that no Matrix owns; pass the Matrix (or its own m.data view)`);
  }
  return { name, rows, cols, dtype, desc: undefined, plain: view, buffer: view.buffer, ...span };
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

/** Throws LoRANonFiniteError naming the first NaN/±Inf of a JS array. */
export function rejectNonFiniteArray(fn: string, name: string, data: ArrayLike<number>, cols: number, what: string): void {
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (!Number.isFinite(v)) {
      throw new LoRANonFiniteError(`${fn}: ${name}[${Math.floor(i / cols)}, ${i % cols}] is ${v}; ${what}`);
    }
  }
}

/** Throws LoRANonFiniteError naming the first NaN/±Inf of a resident operand. */
export function rejectNonFinite(engine: Engine, fn: string, d: MatrixDesc, what: string): void {
  const i = engine.kernel.firstNonFinite(fn, d);
  if (i < 0) return;
  const value = engine.kernel.element(fn, d, i);
  throw new LoRANonFiniteError(`${fn}: ${d.name}[${Math.floor(i / d.cols)}, ${i % d.cols}] is ${value}; ${what}`);
}

/**
 * Temporary wasm copies for plain operands: `input()` copies in, `output()`
 * reserves and copies back on `commit()`. `release()` frees every temporary
 * (call it in `finally`), so a failed call leaks nothing and writes nothing back.
 * Allocate everything (`reserve`) before copying anything in: an allocation may
 * grow memory and detach views.
 */
export class Staging {
  private readonly temps: Block[] = [];
  private readonly results: { dispose(): void }[] = [];
  private readonly writeBacks: Operand[] = [];
  private readonly copies: Operand[] = [];
  constructor(
    private readonly heap: WasmHeap,
    private readonly fn: string,
  ) {}

  /** Gives `op` a descriptor: in place when resident, else a temporary filled from its data. */
  input(op: Operand): MatrixDesc {
    if (op.desc) return op.desc;
    op.desc = this.temp(op.rows, op.cols, op.name, op.dtype);
    this.copies.push(op);
    return op.desc;
  }

  /** Like input(), and the result is copied back to the plain object on commit(). */
  output(op: Operand, copyIn: boolean): MatrixDesc {
    if (op.desc) return op.desc;
    op.desc = this.temp(op.rows, op.cols, op.name, op.dtype);
    if (copyIn) this.copies.push(op);
    this.writeBacks.push(op);
    return op.desc;
  }

  /** A temporary [rows, cols] block of dtype, freed on release(). */
  temp(rows: number, cols: number, name: string, dtype: DType = 'f32'): MatrixDesc {
    const block = this.heap.alloc(rows * cols * ITEM_BYTES[dtype], this.fn);
    this.temps.push(block);
    return describeBlock(this.heap, block, rows, cols, name, dtype);
  }

  #view(op: Operand): Float32Array | Uint16Array {
    const n = op.rows * op.cols;
    return op.dtype === 'f32' ? this.heap.view(op.desc!.block, n) : this.heap.viewU16(op.desc!.block, n);
  }

  /** Copies the plain inputs into their temporaries: call once every allocation is done. */
  load(): void {
    for (const op of this.copies) this.#view(op).set(op.plain!);
    this.copies.length = 0;
  }

  commit(): void {
    for (const op of this.writeBacks) op.plain!.set(this.#view(op));
  }

  /** Registers a matrix the call returns: it is disposed if the call fails (see withStaging). */
  result<M extends { dispose(): void }>(m: M): M {
    this.results.push(m);
    return m;
  }

  /** Disposes the registered results (the call failed). */
  discard(): void {
    for (const m of this.results) m.dispose();
    this.results.length = 0;
  }

  release(): void {
    for (const b of this.temps) this.heap.free(b);
    this.temps.length = 0;
  }
}

/**
 * Runs an operation with a Staging: its temporaries are always freed, and the results it registered
 * with `staging.result(m)` are disposed if it throws, so a failed call leaks nothing.
 */
export function withStaging<T>(heap: WasmHeap, fn: string, body: (staging: Staging) => T): T {
  const staging = new Staging(heap, fn);
  try {
    return body(staging);
  } catch (e) {
    staging.discard();
    throw e;
  } finally {
    staging.release();
  }
}

// ---------------------------------------------------------------- options

/** An optional options object; anything else is a LoRATypeError. */
export function optionsObject<T extends object>(fn: string, opts: unknown, example: string): Partial<T> {
  if (opts === undefined) return {};
  if (typeof opts !== 'object' || opts === null || Array.isArray(opts)) {
    throw new LoRATypeError(`${fn}: options must be an object like ${example}, got ${describeValue(opts)}`);
  }
  return opts as Partial<T>;
}

/**
 * A number option, finite in f32 and inside [lo, hi] (bounds inclusive unless
 * `open`). Wrong kind → LoRATypeError; outside the range → LoRARangeError;
 * finite in f64 but not in f32 → LoRANonFiniteError. Returns the f32 value.
 */
export function f32Option(
  fn: string, name: string, v: unknown, dflt: number, range: { lo?: number; hi?: number; loOpen?: boolean; hiOpen?: boolean } = {},
): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number') throw new LoRATypeError(`${fn}: ${name} must be a number, got ${describeValue(v)}`);
  const f = Math.fround(v);
  if (!Number.isFinite(f)) {
    throw new LoRANonFiniteError(`${fn}: ${name} must be finite in f32 (|x| < 3.4e38), got ${v}`);
  }
  const { lo = -Infinity, hi = Infinity, loOpen = false, hiOpen = false } = range;
  if ((loOpen ? !(f > lo) : !(f >= lo)) || (hiOpen ? !(f < hi) : !(f <= hi))) {
    const l = `${loOpen ? '(' : '['}${lo}`;
    const h = `${hi}${hiOpen ? ')' : ']'}`;
    throw new LoRARangeError(`${fn}: ${name} must be in ${l}, ${h}, got ${v}`);
  }
  return f;
}

export function boolOption(fn: string, name: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw new LoRATypeError(`${fn}: ${name} must be a boolean, got ${describeValue(v)}`);
  return v;
}

/** A positive integer option; wrong kind → LoRATypeError, not a positive integer → LoRARangeError. */
export function countOption(fn: string, name: string, v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number') throw new LoRATypeError(`${fn}: ${name} must be a number, got ${describeValue(v)}`);
  if (!Number.isSafeInteger(v) || v < 1) throw new LoRARangeError(`${fn}: ${name} must be a positive integer, got ${v}`);
  return v;
}

// ---------------------------------------------------------------- the option reader

/**
 * One field of an options object: reads a value that is present (not undefined) or throws. The rule
 * is the same for every field: a value of the wrong kind → LoRATypeError; a value of the right kind
 * outside the field's range → LoRARangeError. Messages name the function and `options.<key>`.
 */
export interface OptionField<T> {
  read(fn: string, name: string, v: unknown): T;
}

/** The values a schema reads: each key absent (undefined) or its field's type. */
export type OptionValues<S> = { [K in keyof S]?: S[K] extends OptionField<infer T> ? T : never };

/**
 * Reads an options object by a schema of fields, e.g.
 *   readOptions(fn, opts, { rank: intOption({ min: 1 }), seed: seedOption() }, '{ rank: 8 }')
 * undefined → {}; not a plain object → LoRATypeError showing `example`; a key the schema does not
 * know (with a defined value) → LoRATypeError listing the keys it knows; every known key through
 * its field. Absent and undefined keys stay undefined: defaults belong to the caller.
 */
/** Throws LoRATypeError naming the known keys if `o` has a defined value under any other key (a typo is never ignored). */
export function rejectUnknownKeys(fn: string, o: object, known: readonly string[], what = 'option'): void {
  for (const k of Object.keys(o)) {
    if ((o as Record<string, unknown>)[k] !== undefined && !known.includes(k)) {
      throw new LoRATypeError(`${fn}: unknown ${what} '${k}'; the ${what}s are ${known.join(', ')}`);
    }
  }
}

export function readOptions<S extends Record<string, OptionField<unknown>>>(fn: string, opts: unknown, schema: S, example: string): OptionValues<S> {
  const o = optionsObject<Record<string, unknown>>(fn, opts, example) as Record<string, unknown>;
  const known = Object.keys(schema);
  rejectUnknownKeys(fn, o, known);
  const out: Record<string, unknown> = {};
  for (const k of known) if (o[k] !== undefined) out[k] = schema[k]!.read(fn, `options.${k}`, o[k]);
  return out as OptionValues<S>;
}

interface Bounds {
  min?: number;
  max?: number;
  /** Exclude min / max themselves. */
  minOpen?: boolean;
  maxOpen?: boolean;
}

const interval = ({ min = -Infinity, max = Infinity, minOpen = false, maxOpen = false }: Bounds): string =>
  `${minOpen ? '(' : '['}${min === -Infinity ? '−∞' : min}, ${max === Infinity ? '∞' : max}${maxOpen ? ')' : ']'}`;

const inside = (v: number, { min = -Infinity, max = Infinity, minOpen = false, maxOpen = false }: Bounds): boolean =>
  (minOpen ? v > min : v >= min) && (maxOpen ? v < max : v <= max);

/** A number in a range (NaN is outside every range). `what` names it in messages, e.g. 'a fraction'. */
export function numberOption(bounds: Bounds & { what?: string } = {}): OptionField<number> {
  const rule = `${bounds.what ?? 'a number'} in ${interval(bounds)}`;
  return {
    read(fn, name, v) {
      if (typeof v !== 'number') throw new LoRATypeError(`${fn}: ${name} must be ${rule}, got ${describeValue(v)}`);
      if (!inside(v, bounds)) throw new LoRARangeError(`${fn}: ${name} must be ${rule}, got ${v}`);
      return v;
    },
  };
}

/** An integer in a range (a non-integer number is out of range, as countOption has it). */
export function intOption(bounds: { min?: number; max?: number } = {}): OptionField<number> {
  const { min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER } = bounds;
  const rule = max === Number.MAX_SAFE_INTEGER ? `an integer ≥ ${min}` : `an integer in [${min}, ${max}]`;
  return {
    read(fn, name, v) {
      if (typeof v !== 'number') throw new LoRATypeError(`${fn}: ${name} must be ${rule}, got ${describeValue(v)}`);
      if (!Number.isSafeInteger(v) || v < min || v > max) throw new LoRARangeError(`${fn}: ${name} must be ${rule}, got ${v}`);
      return v;
    },
  };
}

/**
 * A seed for the package's generators (seededRandom, fillRandom, DARE's mask): an integer in
 * [0, 2³² − 1]. The generators take seed >>> 0, so anything else would silently alias another seed
 * (1.5 → 1, −1 → 2³² − 1, 2³² → 0); it is refused instead. The one seed rule of the package.
 */
export function seedOption(): OptionField<number> {
  return intOption({ min: 0, max: 2 ** 32 - 1 });
}

/** One of a list of strings; anything else is the wrong kind (LoRATypeError) and the message lists them. */
export function oneOf<const T extends readonly string[]>(values: T): OptionField<T[number]> {
  return {
    read(fn, name, v) {
      if (typeof v !== 'string' || !values.includes(v)) {
        throw new LoRATypeError(`${fn}: ${name} must be one of ${values.map((x) => `'${x}'`).join(', ')}, got ${describeValue(v)}`);
      }
      return v as T[number];
    },
  };
}

/** A non-empty string. */
export function stringOption(): OptionField<string> {
  return {
    read(fn, name, v) {
      if (typeof v !== 'string' || v.length === 0) throw new LoRATypeError(`${fn}: ${name} must be a non-empty string, got ${describeValue(v)}`);
      return v;
    },
  };
}
