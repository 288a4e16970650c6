/**
 * Typed errors: one table, which class for which kind of mistake. Every error lora-wasm throws on
 * purpose is `instanceof LoRAError`, and also an instance of the built-in class that fits its kind:
 *
 *   kind         class                 built-in    for
 *   shape        LoRAShapeError        RangeError  dims, lengths, shape mismatches
 *   range        LoRARangeError        RangeError  an option or value outside its range (lr < 0, beta1 = 1, a label ≥ classes)
 *   type         LoRATypeError         TypeError   wrong kind of value (Float64Array, not a matrix, a string option, an
 *                                                  unknown dtype or enum value, aliasing, another instance's Matrix)
 *   disposed     LoRADisposedError     TypeError   a Matrix (or a view of one), a layer, an optimizer or an AdapterSet
 *                                                  used after dispose() or garbage collection
 *   nonFinite    LoRANonFiniteError    RangeError  NaN/±Inf in an adapter, a scale, or a merge result
 *   memory       LoRAMemoryError       RangeError  wasm memory exhausted (4 GiB or the init() cap)
 *   state        LoRAStateError        Error       a call out of order (backward before forward, backward while merged)
 *   format       LoRAFormatError       Error       a malformed or unsupported file (safetensors, adapter_config.json, a
 *                                                  .wasm that is not a lora-wasm module): names the file and key
 *   environment  LoRAEnvironmentError  Error       the engine or host cannot do what was asked: no SIMD128 or relaxed
 *                                                  SIMD, a fetch or file system call that failed
 *   internal     LoRAError             Error       a bug in lora-wasm (an internal check failed, a kernel trapped):
 *                                                  the only use of a bare LoRAError; please report it
 *
 * ERROR_CLASSES below is this table as code, and test/errors.test.ts checks every exported class
 * against it. JS classes have one parent, so LoRAError recognises its family by a brand
 * (Symbol.hasInstance) rather than by the prototype chain.
 */

const brand: unique symbol = Symbol.for('lora-wasm.error');

export class LoRAError extends Error {
  /** Stable machine-readable code, e.g. 'LORA_SHAPE'. */
  readonly code: string = 'LORA_ERROR';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'LoRAError';
    (this as unknown as Record<symbol, boolean>)[brand] = true;
  }
  static [Symbol.hasInstance](value: unknown): boolean {
    if (this === LoRAError) {
      return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[brand] === true;
    }
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }
}

function branded<T extends Error>(error: T, name: string, code: string): T {
  error.name = name;
  Object.defineProperty(error, 'code', { value: code, enumerable: true });
  (error as unknown as Record<symbol, boolean>)[brand] = true;
  return error;
}

export class LoRAShapeError extends RangeError {
  declare readonly code: 'LORA_SHAPE';
  constructor(message: string) {
    super(message);
    branded(this, 'LoRAShapeError', 'LORA_SHAPE');
  }
}

export class LoRARangeError extends RangeError {
  declare readonly code: 'LORA_RANGE';
  constructor(message: string) {
    super(message);
    branded(this, 'LoRARangeError', 'LORA_RANGE');
  }
}

export class LoRATypeError extends TypeError {
  declare readonly code: 'LORA_TYPE';
  constructor(message: string) {
    super(message);
    branded(this, 'LoRATypeError', 'LORA_TYPE');
  }
}

export class LoRADisposedError extends TypeError {
  declare readonly code: 'LORA_DISPOSED';
  constructor(message: string) {
    super(message);
    branded(this, 'LoRADisposedError', 'LORA_DISPOSED');
  }
}

export class LoRANonFiniteError extends RangeError {
  declare readonly code: 'LORA_NON_FINITE';
  constructor(message: string) {
    super(message);
    branded(this, 'LoRANonFiniteError', 'LORA_NON_FINITE');
  }
}

export class LoRAMemoryError extends RangeError {
  declare readonly code: 'LORA_MEMORY';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    branded(this, 'LoRAMemoryError', 'LORA_MEMORY');
  }
}

export class LoRAStateError extends LoRAError {
  declare readonly code: 'LORA_STATE';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    branded(this, 'LoRAStateError', 'LORA_STATE');
  }
}

export class LoRAFormatError extends LoRAError {
  declare readonly code: 'LORA_FORMAT';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    branded(this, 'LoRAFormatError', 'LORA_FORMAT');
  }
}

export class LoRAEnvironmentError extends LoRAError {
  declare readonly code: 'LORA_ENVIRONMENT';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    branded(this, 'LoRAEnvironmentError', 'LORA_ENVIRONMENT');
  }
}

/** The table above: which class for which kind of mistake. */
export const ERROR_CLASSES = {
  shape: LoRAShapeError,
  range: LoRARangeError,
  type: LoRATypeError,
  disposed: LoRADisposedError,
  nonFinite: LoRANonFiniteError,
  memory: LoRAMemoryError,
  state: LoRAStateError,
  format: LoRAFormatError,
  environment: LoRAEnvironmentError,
  internal: LoRAError,
} as const;

export type ErrorKind = keyof typeof ERROR_CLASSES;

/** A short description of any value, for error messages ('null', '42', '"abc"', 'Float64Array(4)', 'Matrix [2, 3]'). */
export function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return String(v);
  if (typeof v === 'string') return JSON.stringify(v.length > 20 ? `${v.slice(0, 20)}…` : v);
  const tag = (v as { [Symbol.toStringTag]?: unknown })[Symbol.toStringTag];
  if (ArrayBuffer.isView(v)) return `${String(tag ?? 'view')}(${(v as unknown as { length?: number }).length ?? v.byteLength})`;
  if (Array.isArray(v)) return `Array(${v.length})`;
  if (typeof tag === 'string' && tag.startsWith('Matrix [')) return tag;
  if (typeof v === 'function') return 'a function';
  return typeof v === 'object' ? ((v as object).constructor?.name ?? 'object') : typeof v;
}
