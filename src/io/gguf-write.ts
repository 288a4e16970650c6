/**
 * GGUF writing: plans (header bytes + each tensor's place) and writers, from scratch or from a
 * GgufReader plus changes.
 *
 * The layout is the one llama.cpp's gguf_write_out makes (and its reader requires): the header, zeros
 * to the alignment, then the tensors in order, each at offset = the previous offset + its size rounded
 * up to the alignment, each followed by zeros to the alignment (the last one too). So an unchanged
 * plan of a file llama.cpp or gguf-py wrote has header bytes equal to the input's.
 *
 * From a reader, metadata are copied as stored (each key-value pair's exact bytes: keys, types, values,
 * string bytes that are not UTF-8 included); only pairs the caller sets are encoded anew (a set key
 * keeps its place; a new key goes last). Tensor infos are rewritten with the new offsets, keeping each
 * name, n_dims and ne; a tensor given a new type gets its new byte size.
 * see: ggml/src/gguf.cpp (gguf_writer_base, gguf_write_out); ggml docs/gguf.md.
 */
import { LoRAFormatError } from '../errors.js';
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VALUE_TYPES, type GgufArray, type GgufKV, type GgufReader, type GgufTensorInfo, type GgufType, type GgufValue, MAX_NESTING, MAX_TENSOR_NAME_BYTES, quoteName } from './gguf.js';
import { type GgmlType, type GgmlTypeName, ggmlBytes, ggmlType } from './gguf-types.js';

const fail = (what: string): LoRAFormatError => new LoRAFormatError(`gguf: cannot write ${what}`);
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const enc = new TextEncoder();
const padTo = (n: number, alignment: number): number => n + ((alignment - (n % alignment)) % alignment);

/** A growing little-endian byte buffer. Each write takes its room first: #room may replace #view. */
class Bytes {
  #buf = new Uint8Array(256);
  #view = new DataView(this.#buf.buffer);
  length = 0;
  #room(n: number): number {
    if (this.length + n > this.#buf.length) {
      const buf = new Uint8Array(Math.max(this.#buf.length * 2, this.length + n));
      buf.set(this.#buf.subarray(0, this.length));
      this.#buf = buf;
      this.#view = new DataView(buf.buffer);
    }
    const at = this.length;
    this.length += n;
    return at;
  }
  u8(v: number): void {
    const at = this.#room(1);
    this.#view.setUint8(at, v);
  }
  i8(v: number): void {
    const at = this.#room(1);
    this.#view.setInt8(at, v);
  }
  u16(v: number): void {
    const at = this.#room(2);
    this.#view.setUint16(at, v, true);
  }
  i16(v: number): void {
    const at = this.#room(2);
    this.#view.setInt16(at, v, true);
  }
  u32(v: number): void {
    const at = this.#room(4);
    this.#view.setUint32(at, v, true);
  }
  i32(v: number): void {
    const at = this.#room(4);
    this.#view.setInt32(at, v, true);
  }
  f32(v: number): void {
    const at = this.#room(4);
    this.#view.setFloat32(at, v, true);
  }
  f64(v: number): void {
    const at = this.#room(8);
    this.#view.setFloat64(at, v, true);
  }
  u64(v: bigint): void {
    const at = this.#room(8);
    this.#view.setBigUint64(at, v, true);
  }
  i64(v: bigint): void {
    const at = this.#room(8);
    this.#view.setBigInt64(at, v, true);
  }
  bytes(b: Uint8Array): void {
    const at = this.#room(b.length);
    this.#buf.set(b, at);
  }
  string(s: string): void {
    const b = enc.encode(s);
    this.u64(BigInt(b.length));
    this.bytes(b);
  }
  zerosTo(alignment: number): void {
    this.#room(padTo(this.length, alignment) - this.length);
  }
  /** The bytes written (a copy of exactly that length). */
  done(): Uint8Array {
    return this.#buf.slice(0, this.length);
  }
}

const INT_RANGE: Readonly<Partial<Record<GgufType, readonly [number, number]>>> = {
  UINT8: [0, 0xff], INT8: [-0x80, 0x7f], UINT16: [0, 0xffff], INT16: [-0x8000, 0x7fff], UINT32: [0, 0xffffffff], INT32: [-0x80000000, 0x7fffffff],
};
const BIG_RANGE: Readonly<Partial<Record<GgufType, readonly [bigint, bigint]>>> = { UINT64: [0n, 2n ** 64n - 1n], INT64: [-(2n ** 63n), 2n ** 63n - 1n] };

function show(v: unknown): string {
  if (typeof v === 'string') return quoteName(v);
  if (typeof v === 'bigint') return `${v}n`;
  if (v === null || typeof v !== 'object') return String(v);
  return Array.isArray(v) ? `an array of ${v.length}` : ArrayBuffer.isView(v) ? (v as object).constructor.name : 'an object';
}

/** Writes one value of `type`, checking it is a value of that type. */
function writeValue(w: Bytes, type: GgufType, v: unknown, depth: number, what: () => string): void {
  const int = INT_RANGE[type];
  if (int !== undefined) {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < int[0] || v > int[1]) throw fail(`${what()}: a ${type} must be an integer in [${int[0]}, ${int[1]}], got ${show(v)}`);
    ({ UINT8: () => w.u8(v), INT8: () => w.i8(v), UINT16: () => w.u16(v), INT16: () => w.i16(v), UINT32: () => w.u32(v), INT32: () => w.i32(v) })[type as 'UINT8']();
    return;
  }
  const big = BIG_RANGE[type];
  if (big !== undefined) {
    const b = typeof v === 'bigint' ? v : typeof v === 'number' && Number.isSafeInteger(v) ? BigInt(v) : undefined;
    if (b === undefined || b < big[0] || b > big[1]) throw fail(`${what()}: a ${type} must be a bigint (or a safe integer) in [${big[0]}, ${big[1]}], got ${show(v)}`);
    if (type === 'UINT64') w.u64(b);
    else w.i64(b);
    return;
  }
  switch (type) {
    case 'FLOAT32':
    case 'FLOAT64':
      if (typeof v !== 'number') throw fail(`${what()}: a ${type} must be a number, got ${show(v)}`);
      if (type === 'FLOAT32') w.f32(v);
      else w.f64(v);
      return;
    case 'BOOL':
      if (typeof v !== 'boolean') throw fail(`${what()}: a BOOL must be true or false, got ${show(v)}`);
      w.u8(v ? 1 : 0);
      return;
    case 'STRING':
      if (typeof v !== 'string') throw fail(`${what()}: a STRING must be a string, got ${show(v)}`);
      if (LONE_SURROGATE.test(v)) throw fail(`${what()}: the string holds a lone surrogate, which UTF-8 cannot encode`);
      w.string(v);
      return;
    case 'ARRAY': {
      if (depth >= MAX_NESTING) throw fail(`${what()}: arrays nested more than ${MAX_NESTING} deep (readers refuse them)`);
      const a = v as GgufArray;
      if (typeof a !== 'object' || a === null || !GGUF_VALUE_TYPES.includes(a.type) || a.values === null || typeof a.values !== 'object' || typeof (a.values as { length?: unknown }).length !== 'number') {
        throw fail(`${what()}: an ARRAY must be { type, values } (an item type and its items), got ${show(v)}`);
      }
      w.u32(GGUF_VALUE_TYPES.indexOf(a.type));
      w.u64(BigInt(a.values.length));
      for (let i = 0; i < a.values.length; i++) writeValue(w, a.type, a.values[i], depth + 1, () => `${what()}[${i}]`);
      return;
    }
  }
  throw fail(`${what()}: unknown value type ${show(type)}`);
}

/** The bytes of one key-value pair (key, type, value), as llama.cpp and gguf-py write them. */
export function encodeKV(kv: GgufKV): Uint8Array {
  const w = new Bytes();
  writeKV(w, kv, 0);
  return w.done();
}

function checkKey(key: unknown, i: number): string {
  if (typeof key !== 'string' || key === '') throw fail(`metadata ${i}: a key must be a non-empty string, got ${show(key)}`);
  if (LONE_SURROGATE.test(key)) throw fail(`metadata ${i} (${quoteName(key)}): the key holds a lone surrogate`);
  return key;
}

function writeKV(w: Bytes, kv: GgufKV, i: number): void {
  const key = checkKey(kv?.key, i);
  const where = () => `metadata ${i} (${quoteName(key)})`;
  if (!GGUF_VALUE_TYPES.includes(kv.type)) throw fail(`${where()}: unknown value type ${show(kv.type)}`);
  w.string(key);
  w.u32(GGUF_VALUE_TYPES.indexOf(kv.type));
  writeValue(w, kv.type, kv.value, 0, where);
}

/** A tensor to write: its name, ggml type (id or name) and shape (outermost first, i.e. ne reversed). */
export interface GgufTensorToWrite {
  readonly name: string;
  readonly type: number | GgmlTypeName;
  readonly shape: readonly number[];
}

export interface GgufPlannedTensor {
  readonly index: number;
  readonly name: string;
  /** ggml dimensions, innermost first. */
  readonly ne: readonly number[];
  readonly shape: readonly number[];
  readonly type: number;
  readonly typeName: GgmlTypeName;
  readonly size: number;
  /** Bytes from the start of the data section, and the absolute range in the output file. */
  readonly offset: number;
  readonly begin: number;
  readonly end: number;
  /** From a reader: the input tensor (its bytes are copied unchanged when `changed` is false). */
  readonly from?: GgufTensorInfo;
  /** From a reader: true when the tensor gets a new type (its bytes must come from the caller). */
  readonly changed: boolean;
}

export interface GgufPlan {
  readonly version: number;
  readonly alignment: number;
  /** The file's first dataStart bytes: header, metadata, tensor infos and zeros to the alignment. */
  readonly header: Uint8Array;
  readonly dataStart: number;
  readonly tensors: readonly GgufPlannedTensor[];
  /** The whole file's size: dataStart + every tensor padded to the alignment. */
  readonly fileSize: number;
}

/** general.alignment of a list of pairs (checked as readers check it), or the default. */
function alignmentOf(metadata: readonly { key: string; type: GgufType; value?: GgufValue }[]): number {
  const a = metadata.find((kv) => kv.key === 'general.alignment');
  if (a === undefined) return GGUF_DEFAULT_ALIGNMENT;
  const v = a.value;
  if (a.type !== 'UINT32' || typeof v !== 'number' || !(v > 0 && (v & (v - 1)) === 0 && v <= 2 ** 31)) {
    throw fail(`general.alignment: it must be a UINT32 power of two, got ${a.type} ${show(v)}`);
  }
  return v;
}

interface TensorSpec {
  name: string;
  ne: readonly number[];
  type: GgmlType;
  from?: GgufTensorInfo;
  changed: boolean;
}

function checkTensor(i: number, name: unknown, typeIn: unknown, ne: readonly number[]): { name: string; type: GgmlType } {
  if (typeof name !== 'string' || LONE_SURROGATE.test(name)) throw fail(`tensor ${i}: a name must be a string of UTF-16 text, got ${show(name)}`);
  const where = `tensor ${i} (${quoteName(name)})`;
  const nameBytes = enc.encode(name).length;
  if (nameBytes > MAX_TENSOR_NAME_BYTES) throw fail(`${where}: the name has ${nameBytes} bytes; ggml allows at most ${MAX_TENSOR_NAME_BYTES}`);
  const type = typeof typeIn === 'number' || typeof typeIn === 'string' ? ggmlType(typeIn) : undefined;
  if (type === undefined) throw fail(`${where}: unknown ggml type ${show(typeIn)}`);
  if (ne.length > 4) throw fail(`${where}: ${ne.length} dimensions; ggml tensors have at most 4`);
  if (!ne.every((d) => Number.isSafeInteger(d) && d >= 0)) throw fail(`${where}: its shape must be a list of non-negative integers, got [${[...ne].reverse().map(show).join(', ')}]`);
  if (!Number.isSafeInteger(ne.reduce((p, d) => p * d, 1))) throw fail(`${where}: more than 2^53 − 1 elements`);
  if (ggmlBytes(type, ne) === undefined) throw fail(`${where}: ${type.name} needs rows (the last dimension, ne[0] = ${ne[0]}) of a multiple of ${type.blockSize} elements`);
  return { name, type };
}

/** The header and layout for `metadata` (pairs to encode, or exact stored bytes) and `tensors`. */
function layout(version: number, metadata: readonly ({ key: string; type: GgufType; value?: GgufValue; raw?: Uint8Array })[], specs: readonly TensorSpec[]): GgufPlan {
  const alignment = alignmentOf(metadata);
  const w = new Bytes();
  w.u32(GGUF_MAGIC);
  w.u32(version);
  w.i64(BigInt(specs.length));
  w.i64(BigInt(metadata.length));
  const keys = new Set<string>();
  metadata.forEach((kv, i) => {
    const key = checkKey(kv.key, i);
    if (keys.has(key)) throw fail(`metadata ${i} (${quoteName(key)}): the key appears twice`);
    keys.add(key);
    if (kv.raw) w.bytes(kv.raw);
    else writeKV(w, kv as GgufKV, i);
  });
  const names = new Set<string>();
  const placed: Omit<GgufPlannedTensor, 'begin' | 'end'>[] = [];
  let offset = 0;
  specs.forEach((t, index) => {
    if (names.has(t.name)) throw fail(`tensor ${index} (${quoteName(t.name)}): the name appears twice`);
    names.add(t.name);
    const size = ggmlBytes(t.type, t.ne)!;
    w.string(t.name);
    w.u32(t.ne.length);
    for (const d of t.ne) w.i64(BigInt(d));
    w.i32(t.type.id);
    w.u64(BigInt(offset));
    placed.push({ index, name: t.name, ne: Object.freeze([...t.ne]), shape: Object.freeze([...t.ne].reverse()), type: t.type.id, typeName: t.type.name, size, offset, from: t.from, changed: t.changed });
    offset += padTo(size, alignment);
    if (!Number.isSafeInteger(offset)) throw fail(`tensor ${index} (${quoteName(t.name)}): the data pass 2^53 − 1 bytes`);
  });
  w.zerosTo(alignment); // gguf_write_out pads even with no tensors
  const header = w.done();
  const dataStart = header.length;
  const tensors = placed.map((t) => Object.freeze({ ...t, begin: dataStart + t.offset, end: dataStart + t.offset + t.size }));
  return Object.freeze({ version, alignment, header, dataStart, tensors: Object.freeze(tensors), fileSize: dataStart + offset });
}

/**
 * A plan for a new file (from scratch): `metadata` in order, `tensors` in order. Shapes are
 * outermost first (a row-major [rows, cols] matrix is ne [cols, rows]); n_dims is shape.length.
 */
export function planGguf(spec: { readonly version?: 2 | 3; readonly metadata: readonly GgufKV[]; readonly tensors: readonly GgufTensorToWrite[] }): GgufPlan {
  const version = spec.version ?? 3;
  if (version !== 2 && version !== 3) throw fail(`version ${show(version)}: only 2 and 3`);
  const specs = spec.tensors.map((t, i): TensorSpec => {
    if (!Array.isArray(t?.shape)) throw fail(`tensor ${i}: shape must be an array, got ${show(t?.shape)}`);
    const ne = [...t.shape].reverse();
    const { name, type } = checkTensor(i, t.name, t.type, ne);
    return { name, ne, type, changed: true };
  });
  return layout(version, spec.metadata, specs);
}

export interface GgufChanges {
  /** New ggml types by tensor name (id or name): those tensors get new bytes from the caller. */
  readonly types?: ReadonlyMap<string, number | GgmlTypeName> | Readonly<Record<string, number | GgmlTypeName>>;
  /** Pairs to set: a key already in the file is replaced in its place, a new key is added last. */
  readonly set?: readonly GgufKV[];
  /** Keys to remove. */
  readonly remove?: readonly string[];
}

/**
 * A plan for a file like `reader`'s with `changes`: metadata kept byte for byte except the pairs set or
 * removed, tensors in the same order with their names and ne, new offsets (llama.cpp's layout), and
 * new types where asked. Reads the stored metadata once (layout.kvStart to kvEnd).
 */
export async function planGgufFrom(reader: GgufReader, changes: GgufChanges = {}): Promise<GgufPlan> {
  const types = changes.types instanceof Map ? changes.types : new Map(Object.entries(changes.types ?? {}));
  for (const name of types.keys()) if (!reader.get(name)) throw fail(`${quoteName(name)}: ${reader.file} has no such tensor`);
  const set = new Map<string, GgufKV>();
  for (const kv of changes.set ?? []) set.set(checkKey(kv?.key, set.size), kv);
  const remove = new Set(changes.remove ?? []);
  const stored = await reader.rawBytes(reader.layout.kvStart, reader.layout.kvEnd);
  const metadata: { key: string; type: GgufType; value?: GgufValue; raw?: Uint8Array }[] = [];
  for (const e of reader.metadata) {
    if (remove.has(e.key)) continue;
    const s = set.get(e.key);
    if (s) {
      metadata.push(s);
      set.delete(e.key);
    } else metadata.push({ key: e.key, type: e.type, value: e.value, raw: stored.subarray(e.begin - reader.layout.kvStart, e.end - reader.layout.kvStart) });
  }
  for (const kv of set.values()) if (!remove.has(kv.key)) metadata.push(kv);
  const specs = reader.tensors.map((t, i): TensorSpec => {
    const next = types.get(t.name);
    if (next === undefined) return { name: t.name, ne: t.ne, type: ggmlType(t.type)!, from: t, changed: false };
    const { type } = checkTensor(i, t.name, next, t.ne);
    return { name: t.name, ne: t.ne, type, from: t, changed: type.id !== t.type };
  });
  return layout(reader.version, metadata, specs);
}

/** Where the bytes go: a Node AtomicFile, a WritableStream's writer, an array of chunks… */
export interface ByteSink {
  write(bytes: Uint8Array): Promise<void> | void;
}

const ZEROS = new Uint8Array(256);

/**
 * Writes a planned file to `sink`: the header, then each tensor's bytes from `data(t)` (exactly t.size
 * of them) and zeros to the alignment. One tensor's bytes are in flight at a time.
 */
export async function writeGguf(plan: GgufPlan, sink: ByteSink, data: (t: GgufPlannedTensor) => Promise<ArrayBufferView> | ArrayBufferView): Promise<void> {
  await sink.write(plan.header);
  let at = plan.dataStart;
  for (const t of plan.tensors) {
    const d = await data(t);
    if (!ArrayBuffer.isView(d) || d.byteLength !== t.size) {
      throw fail(`tensor ${t.index} (${quoteName(t.name)}): ${ArrayBuffer.isView(d) ? `${d.byteLength} bytes` : show(d)} given for ${t.typeName} [${t.shape.join(', ')}], which has ${t.size}`);
    }
    await sink.write(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
    at += t.size;
    for (let pad = padTo(at, plan.alignment) - at; pad > 0; pad -= Math.min(pad, ZEROS.length)) await sink.write(ZEROS.subarray(0, Math.min(pad, ZEROS.length)));
    at = padTo(at, plan.alignment);
  }
}

/** For writeGguf from a reader's plan: unchanged tensors' bytes read from `reader`; `changed(t)` gives the others. */
export function copyUnchanged(reader: GgufReader, changed: (t: GgufPlannedTensor) => Promise<ArrayBufferView> | ArrayBufferView = (t) => {
  throw fail(`tensor ${t.index} (${quoteName(t.name)}): it changes type, and no bytes were given for it`);
}): (t: GgufPlannedTensor) => Promise<ArrayBufferView> | ArrayBufferView {
  return (t) => (t.from && !t.changed ? reader.read(t.from) : changed(t));
}

/** A whole GGUF file in memory (from scratch): tensors with their bytes (t.data: exactly their size). */
export async function encodeGguf(spec: { readonly version?: 2 | 3; readonly metadata: readonly GgufKV[]; readonly tensors: readonly (GgufTensorToWrite & { readonly data: ArrayBufferView })[] }): Promise<Uint8Array> {
  const plan = planGguf(spec);
  const out = new Uint8Array(plan.fileSize);
  let at = 0;
  await writeGguf(plan, { write: (b) => { out.set(b, at); at += b.length; } }, (t) => spec.tensors[t.index]!.data);
  return out;
}

