/**
 * safetensors: a strict reader and a writer.
 *
 *   [u64 LE N][N bytes of UTF-8 JSON header][data]
 *   header: { name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__"?: { string: string } | null }
 *   offsets are relative to the first data byte (8 + N).
 *
 * The reader validates as the reference implementation does (one `validate`, below), and a malformed
 * file is a one-line LoRAFormatError naming the file, the tensor and the field, never a crash and never
 * an allocation larger than the file: N ≤ 100,000,000 and inside the file; UTF-8; JSON as serde_json
 * reads it (no trailing commas, NaN, lone surrogates, or text after the object), with no key twice in
 * one object (JSON.parse would keep the last silently); `__metadata__` null or string → string; a known
 * dtype; shape and data_offsets of integer literals (`4.0`, `1e3`, `-0` are refused, as the reference's
 * usize fields refuse them); the element count's product, taken in order with checked multiplies, within
 * 2^64 − 1 (even when a later dimension is 0); end − begin = numel·itemsize; tensors, sorted by offset,
 * contiguous from 0 with no gap or overlap (zero-size tensors have begin = end); the last end at the end
 * of the file. Tensors are read one at a time at their offsets (a multi-GB model is never read whole).
 *
 * The writer pads the header with spaces to a multiple of 8 and orders tensors as the reference
 * writer does: by dtype (its enum order, descending: larger alignment first), then by name (byte order
 * of the UTF-8, as Rust compares strings). Any name that is a well-formed string other than
 * `__metadata__` can be written, `__proto__` and `constructor` included: every name-keyed record here
 * is a Map or has a null prototype.
 * see: https://github.com/huggingface/safetensors (safetensors/src/tensor.rs: validate, prepare)
 */
import { LoRAFormatError } from '../errors.js';
import type { DType } from '../memory/matrix.js';
import { type ByteSource, readInto } from './source.js';

/** A record with no prototype: `r["constructor"]` is only ever an own entry. */
const nullRecord = <V>(entries: Record<string, V>): Record<string, V> => Object.assign(Object.create(null) as Record<string, V>, entries);

/** Every dtype the format defines, in the reference's enum order. */
const DTYPE_ORDER = ['BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'F64', 'I64', 'U64'] as const;
const ITEM_SIZE: Readonly<Record<string, number>> = nullRecord({
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, F64: 8, I64: 8, U64: 8,
});

export const MAX_HEADER_BYTES = 100_000_000;
/** The reference's usize (64-bit): shapes and offsets above it do not parse, products above it overflow. */
const USIZE_MAX = 2n ** 64n - 1n;

/** safetensors dtype names ↔ lora-wasm dtypes, for the three it computes with. */
export const DTYPE_OF_ST: Readonly<Record<string, DType>> = nullRecord<DType>({ F32: 'f32', F16: 'f16', BF16: 'bf16' });
export const ST_OF_DTYPE: Readonly<Record<DType, string>> = nullRecord({ f32: 'F32', f16: 'F16', bf16: 'BF16' }) as Record<DType, string>;

export interface TensorInfo {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  /** Byte range relative to the first data byte. */
  readonly begin: number;
  readonly end: number;
}

export interface TensorBytes {
  readonly info: TensorInfo;
  /** The raw little-endian bytes of the tensor. */
  readonly bytes: Uint8Array;
}

const clip = (s: string): string => (s.length > 120 ? `${s.slice(0, 119)}…` : s);
/** A tensor or key name in a message: quoted and escaped (one line whatever the name holds), clipped. */
export const quoteName = (name: string): string => clip(JSON.stringify(name));
const fail = (file: string, what: string): LoRAFormatError => new LoRAFormatError(`safetensors: ${file.replace(/[\r\n]+/g, ' ')}: ${what}`);

/** Elements of a shape (1 for []); exact for every shape the reader accepts. */
export const numelOf = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);
/** A shape with no elements ([0], [0, 4], [4, 0]): it has no bytes, and no matrix can hold it. */
export const isEmptyShape = (shape: readonly number[]): boolean => shape.some((d) => d === 0);

/**
 * The byte size of a tensor as the reference checks it: the dimensions multiplied in order, each
 * partial product and then the byte count within usize (`try_fold(1, checked_mul)`), or undefined on
 * overflow, even when a later dimension is 0.
 */
function checkedBytes(dims: readonly (number | bigint)[], itemSize: number): bigint | undefined {
  let small = itemSize; // exact while every partial product stays a safe integer (the common case)
  for (const d of dims) if (small <= Number.MAX_SAFE_INTEGER) small = typeof d === 'number' ? small * d : Infinity;
  if (small <= Number.MAX_SAFE_INTEGER) return BigInt(small);
  let n = 1n;
  for (const d of dims) {
    n *= BigInt(d);
    if (n > USIZE_MAX) return undefined;
  }
  n *= BigInt(itemSize);
  return n > USIZE_MAX ? undefined : n;
}

// ---- the header's JSON, read as serde_json reads it -------------------------------------------

/** A JSON number kept as its literal: shape and data_offsets must be integer literals. */
class JsonNumber {
  constructor(readonly text: string) {}
}
type Json = string | boolean | null | JsonNumber | Json[] | Map<string, Json>;
/** A header that is not JSON, or has a key twice in one object: the message to give. */
class JsonRefusal {
  constructor(readonly message: string) {}
}
/** serde_json's recursion limit: at most 127 arrays or objects open at once. */
const MAX_DEPTH = 127;
const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
const HEX4 = /^[0-9a-fA-F]{4}$/;
const ESCAPES: Readonly<Record<string, string>> = nullRecord({ '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' });

/**
 * A strict JSON parser (RFC 8259 as serde_json reads it: no comments, trailing commas, NaN, lone
 * surrogate escapes, control characters in strings, or anything but whitespace after the value) that
 * keeps objects as Maps in order, numbers as their literal text, and refuses a key repeated in one
 * object. Linear in the text; recursion bounded by MAX_DEPTH.
 */
function parseJson(text: string): Json {
  const n = text.length;
  let i = 0;
  const path: (string | number)[] = [];
  const here = (): string => (i < n ? `unexpected ${JSON.stringify(text[i])} at character ${i}` : 'it ends too early');
  const syntax = (what = here()): JsonRefusal => new JsonRefusal(`the header is not valid JSON: ${what}`);
  const ws = (): void => {
    for (let c = text.charCodeAt(i); c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09; c = text.charCodeAt(++i));
  };
  const hex = (k: number): number => {
    const h = text.slice(k, k + 4);
    if (!HEX4.test(h)) throw syntax(`a bad \\u escape at character ${k - 2}`);
    return parseInt(h, 16);
  };
  const string = (): string => {
    let out = '';
    let from = ++i; // past the opening quote
    for (;;) {
      if (i >= n) throw syntax('a string is not closed');
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        out += text.slice(from, i++);
        return out;
      }
      if (c < 0x20) throw syntax(`a control character (U+${c.toString(16).padStart(4, '0')}) in a string at character ${i}`);
      if (c !== 0x5c) {
        i++;
        continue;
      }
      out += text.slice(from, i);
      const e = text[i + 1] ?? '';
      if (e === 'u') {
        const u = hex(i + 2);
        if (u >= 0xdc00 && u <= 0xdfff) throw syntax(`a lone surrogate escape at character ${i}`);
        if (u >= 0xd800 && u <= 0xdbff) {
          const lo = text[i + 6] === '\\' && text[i + 7] === 'u' ? hex(i + 8) : -1;
          if (lo < 0xdc00 || lo > 0xdfff) throw syntax(`a lone surrogate escape at character ${i}`);
          out += String.fromCharCode(u, lo);
          i += 12;
        } else {
          out += String.fromCharCode(u);
          i += 6;
        }
      } else {
        const r = ESCAPES[e];
        if (r === undefined) throw syntax(`a bad escape at character ${i}`);
        out += r;
        i += 2;
      }
      from = i;
    }
  };
  const where = (): string => (path.length === 0 ? 'the header' : path.map((p, k) => (typeof p === 'number' ? `[${p}]` : k === 0 ? quoteName(p) : `.${quoteName(p)}`)).join(''));
  const value = (depth: number): Json => {
    ws();
    const c = text[i];
    if (c === '"') return string();
    if (c === '{' || c === '[') {
      if (depth >= MAX_DEPTH) throw syntax(`more than ${MAX_DEPTH} nested arrays or objects at character ${i}`);
      i++;
      ws();
      if (c === '[') {
        const list: Json[] = [];
        if (text[i] === ']') {
          i++;
          return list;
        }
        for (;;) {
          path.push(list.length);
          list.push(value(depth + 1));
          path.pop();
          ws();
          if (text[i] === ']') {
            i++;
            return list;
          }
          if (text[i] !== ',') throw syntax();
          i++;
        }
      }
      const map = new Map<string, Json>();
      if (text[i] === '}') {
        i++;
        return map;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') throw syntax();
        const key = string();
        if (map.has(key)) throw new JsonRefusal(`the key ${quoteName(key)} appears twice in ${where()}`);
        ws();
        if (text[i] !== ':') throw syntax();
        i++;
        path.push(key);
        map.set(key, value(depth + 1));
        path.pop();
        ws();
        if (text[i] === '}') {
          i++;
          return map;
        }
        if (text[i] !== ',') throw syntax();
        i++;
      }
    }
    const word = c === 't' ? 'true' : c === 'f' ? 'false' : c === 'n' ? 'null' : undefined;
    if (word !== undefined && text.startsWith(word, i)) {
      i += word.length;
      return word === 'null' ? null : word === 'true';
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) throw syntax();
    i += m[0].length;
    return new JsonNumber(m[0]);
  };
  const v = value(0);
  ws();
  if (i < n) throw syntax(`${here()}, after the header's object`);
  return v;
}

/** A JSON value in a message, short and on one line. */
function show(v: Json | undefined): string {
  if (v instanceof JsonNumber) return clip(v.text);
  if (v instanceof Map) return 'an object';
  if (Array.isArray(v)) return v.length > 8 ? `a list of ${v.length}` : `[${v.map(show).join(', ')}]`;
  if (typeof v === 'string') return quoteName(v);
  return String(v);
}

const UINT = /^(?:0|[1-9]\d*)$/;
/** A usize field: an integer literal within 2^64 − 1 (serde refuses 4.0, 1e3, -1 and -0 for usize); a number when it has ≤ 15 digits. */
function usize(file: string, field: string, v: Json): number | bigint {
  if (v instanceof JsonNumber && UINT.test(v.text)) {
    if (v.text.length <= 15) return Number(v.text);
    const x = BigInt(v.text);
    if (x <= USIZE_MAX) return x;
    throw fail(file, `${field} is ${clip(v.text)}, more than 2^64 − 1`);
  }
  throw fail(file, `${field} must be a non-negative integer, got ${show(v)}`);
}

/** One tensor's entry, checked on its own (the offsets against the file, the size against the shape). */
function tensorInfo(file: string, name: string, entry: Json, dataBytes: number): TensorInfo {
  const t = quoteName(name);
  let fields: Json[];
  if (entry instanceof Map) fields = ['dtype', 'shape', 'data_offsets'].map((f) => entry.get(f) as Json);
  else if (Array.isArray(entry) && entry.length === 3) fields = entry; // serde also reads a struct from the list of its fields
  else throw fail(file, `${t} must be an object with dtype, shape and data_offsets, got ${show(entry)}`);
  const [dtype, shape, offsets] = fields;
  for (const [k, f] of ['dtype', 'shape', 'data_offsets'].entries()) if (fields[k] === undefined) throw fail(file, `${t} has no ${f}`);
  const size = typeof dtype === 'string' ? ITEM_SIZE[dtype] : undefined;
  if (size === undefined) throw fail(file, `${t} has an unknown dtype ${show(dtype)}`);
  if (!Array.isArray(shape)) throw fail(file, `${t} has a bad shape: it must be a list of non-negative integers, got ${show(shape)}`);
  const dims: (number | bigint)[] = [];
  for (let k = 0; k < shape.length; k++) dims.push(usize(file, `${t} has a bad shape: shape[${k}]`, shape[k]!));
  const dimsText = `[${dims.join(', ')}]`;
  if (!Array.isArray(offsets) || offsets.length !== 2) throw fail(file, `${t} has bad data_offsets: they must be [begin, end], got ${show(offsets)}`);
  const begin = BigInt(usize(file, `${t} has bad data_offsets: data_offsets[0]`, offsets[0]!));
  const end = BigInt(usize(file, `${t} has bad data_offsets: data_offsets[1]`, offsets[1]!));
  if (end < begin) throw fail(file, `${t} has bad data_offsets [${begin}, ${end}]: they end before they begin`);
  if (end > BigInt(dataBytes)) throw fail(file, `${t} has bad data_offsets [${begin}, ${end}]: they reach past the ${dataBytes} data bytes of the file`);
  const bytes = checkedBytes(dims, size);
  if (bytes === undefined) throw fail(file, `${t} has a bad shape ${clip(dimsText)}: its element count overflows: the product of its dimensions and the item size, taken in order, passes 2^64 − 1 (the reference refuses it even when a later dimension is 0)`);
  if (bytes !== end - begin) throw fail(file, `${t} is ${dtype} ${clip(dimsText)} (${bytes} bytes) but its data_offsets [${begin}, ${end}] hold ${end - begin}`);
  // only a zero-size tensor can get here with a dimension past 2^53 − 1
  if (dims.some((d) => d > Number.MAX_SAFE_INTEGER)) throw fail(file, `${t} has a shape ${clip(dimsText)} with a dimension over 2^53 − 1, which lora-wasm does not read`);
  return { name, dtype: dtype as string, shape: dims.map(Number), begin: Number(begin), end: Number(end) };
}

/**
 * Validates a header (the JSON text) against the file's size, as the reference's `validate` does;
 * returns its tensors sorted by offset and its metadata (a null-prototype record; none is empty).
 */
export function parseHeader(file: string, text: string, dataBytes: number): { tensors: TensorInfo[]; metadata: Record<string, string> } {
  let json: Json;
  try {
    json = parseJson(text);
  } catch (e) {
    if (e instanceof JsonRefusal) throw fail(file, e.message);
    throw e;
  }
  if (!(json instanceof Map)) throw fail(file, `the header is not a JSON object (it is ${show(json)})`);
  const metadata = Object.create(null) as Record<string, string>;
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of json) {
    if (name !== '__metadata__') {
      tensors.push(tensorInfo(file, name, entry, dataBytes));
      continue;
    }
    if (entry === null) continue; // Option<HashMap<String, String>>: null is no metadata
    if (!(entry instanceof Map)) throw fail(file, `"__metadata__" must be an object of strings (or null), got ${show(entry)}`);
    for (const [k, v] of entry) {
      if (typeof v !== 'string') throw fail(file, `"__metadata__".${quoteName(k)} must be a string, got ${show(v)}`);
      metadata[k] = v;
    }
  }
  tensors.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const t of tensors) {
    if (t.begin !== at) {
      throw fail(file, t.begin < at ? `${quoteName(t.name)} overlaps the tensor before it (begins at ${t.begin}, before ${at})` : `there is a gap before ${quoteName(t.name)} (bytes ${at} to ${t.begin} belong to no tensor)`);
    }
    at = t.end;
  }
  if (at !== dataBytes) throw fail(file, `the tensors end at byte ${at} of the data but the file holds ${dataBytes} data bytes`);
  return { tensors, metadata };
}

/** A safetensors file opened for reading: the header is parsed and checked; tensors are read on demand. */
export class SafetensorsReader {
  readonly file: string;
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensors in file order. */
  readonly tensors: readonly TensorInfo[];
  readonly dataStart: number;
  readonly #source: ByteSource;
  readonly #byName: Map<string, TensorInfo>;

  private constructor(source: ByteSource, tensors: TensorInfo[], metadata: Record<string, string>, dataStart: number) {
    this.#source = source;
    this.file = source.name;
    this.tensors = tensors;
    this.metadata = metadata;
    this.dataStart = dataStart;
    this.#byName = new Map(tensors.map((t) => [t.name, t]));
  }

  static async open(source: ByteSource): Promise<SafetensorsReader> {
    const file = source.name;
    if (source.size < 8) throw fail(file, `the file has ${source.size} bytes; a safetensors file starts with an 8-byte header length`);
    const lenBytes = await source.read(0, 8);
    const n = Number(new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true));
    if (n > MAX_HEADER_BYTES) throw fail(file, `the header length is ${n} bytes, over the 100,000,000-byte limit`);
    if (8 + n > source.size) throw fail(file, `the header length is ${n} bytes but the file has only ${source.size - 8} after the length`);
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }) // a BOM stays in the text and is refused, as the reference refuses it
      .decode(await source.read(8, n));
    } catch {
      throw fail(file, 'the header is not valid UTF-8');
    }
    const { tensors, metadata } = parseHeader(file, text, source.size - 8 - n);
    return new SafetensorsReader(source, tensors, metadata, 8 + n);
  }

  get(name: string): TensorInfo | undefined {
    return this.#byName.get(name);
  }

  /** The raw bytes of one tensor, read at its offset. */
  async read(name: string): Promise<TensorBytes> {
    const info = this.#byName.get(name);
    if (!info) throw fail(this.file, `there is no tensor ${quoteName(String(name))}`);
    return { info, bytes: await this.#source.read(this.dataStart + info.begin, info.end - info.begin) };
  }

  /** The tensor's bytes read straight into `target` (a view of wasm memory, say), `end − begin` of them. */
  async readInto(info: TensorInfo, target: Uint8Array): Promise<void> {
    await readInto(this.#source, this.dataStart + info.begin, target.subarray(0, info.end - info.begin));
  }

  /** The file's first dataStart bytes: the length and the header, as stored. */
  headerBytes(): Promise<Uint8Array> {
    return this.#source.read(0, this.dataStart);
  }

  /** The source the file is read from (for writers that copy or reference it without reading it). */
  get source(): ByteSource {
    return this.#source;
  }

  /** Closes the source (a Node file handle). */
  async close(): Promise<void> {
    await this.#source.close?.();
  }
}

/**
 * The values of a tensor as lora-wasm reads them: a Float32Array for F32, the Uint16Array of bit
 * patterns for F16/BF16 (views when the bytes are aligned, copies otherwise). Other dtypes are named
 * as unsupported.
 */
export function tensorData(file: string, t: TensorBytes): Float32Array | Uint16Array {
  const { dtype, name } = t.info;
  const b = t.bytes;
  if (dtype === 'F32') return b.byteOffset % 4 === 0 ? new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4) : new Float32Array(b.slice().buffer);
  if (dtype === 'F16' || dtype === 'BF16') return b.byteOffset % 2 === 0 ? new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2) : new Uint16Array(b.slice().buffer);
  throw fail(file, `${quoteName(name)} is ${dtype}, which lora-wasm does not support (it reads F32, F16 and BF16)`);
}

export interface TensorToWrite {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
}

/** Lone surrogates cannot be written as UTF-8. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
/** Rust's string order (UTF-8 bytes, i.e. code points) on JS strings (UTF-16 units order U+E000–U+FFFF after the surrogates). */
function compareNames(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let k = 0; k < n; k++) {
    const x = a.charCodeAt(k);
    const y = b.charCodeAt(k);
    if (x !== y) {
      const key = (c: number): number => (c >= 0xe000 ? c - 0x800 : c >= 0xd800 ? c + 0x2000 : c);
      return key(x) - key(y);
    }
  }
  return a.length - b.length;
}

/** A name or metadata string the writer can put in a header: a string with no lone surrogate. */
function writable(what: string, s: unknown): string {
  if (typeof s !== 'string') throw new LoRAFormatError(`safetensors: cannot write ${what}: it must be a string, got ${typeof s}`);
  if (LONE_SURROGATE.test(s)) throw new LoRAFormatError(`safetensors: cannot write ${what} ${quoteName(s)}: it holds a lone surrogate, which UTF-8 cannot encode`);
  return s;
}

/**
 * The header of a file holding `tensors` (the reference writer's order and padding), and each
 * tensor's place. Writing the header and then each tensor's bytes in `order` makes the file.
 * `metadata` (string → string, in its key order) is written when it has a key.
 */
export function planSafetensors<T extends TensorToWrite>(tensors: readonly T[], metadata?: Readonly<Record<string, string>>): { header: Uint8Array; order: T[]; dataBytes: number } {
  const seen = new Set<string>();
  for (const t of tensors) {
    const name = writable('a tensor name', t.name);
    if (name === '__metadata__') throw new LoRAFormatError('safetensors: cannot write a tensor named "__metadata__" (the key of the metadata)');
    if (seen.has(name)) throw new LoRAFormatError(`safetensors: cannot write ${quoteName(name)} twice`);
    seen.add(name);
    if (typeof t.dtype !== 'string' || ITEM_SIZE[t.dtype] === undefined) throw new LoRAFormatError(`safetensors: cannot write ${quoteName(name)}: unknown dtype ${String(t.dtype)}`);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new LoRAFormatError(`safetensors: cannot write ${quoteName(name)}: its shape must be a list of non-negative integers, got ${JSON.stringify(t.shape)}`);
    }
  }
  const rank = (d: string): number => DTYPE_ORDER.indexOf(d as (typeof DTYPE_ORDER)[number]);
  const order = [...tensors].sort((a, b) => rank(b.dtype) - rank(a.dtype) || compareNames(a.name, b.name));
  // the JSON is written by hand: an object would put integer-like keys ("0", "12") first
  const parts: string[] = [];
  const keys = metadata === undefined || metadata === null ? [] : Object.keys(metadata);
  if (keys.length > 0) {
    parts.push(`"__metadata__":{${keys.map((k) => `${JSON.stringify(writable('a metadata key', k))}:${JSON.stringify(writable(`metadata ${quoteName(k)}`, metadata![k]))}`).join(',')}}`);
  }
  let at = 0;
  for (const t of order) {
    const bytes = checkedBytes(t.shape.map(BigInt), ITEM_SIZE[t.dtype]!);
    const end = bytes === undefined ? undefined : at + Number(bytes);
    if (end === undefined || !Number.isSafeInteger(end)) throw new LoRAFormatError(`safetensors: cannot write ${quoteName(t.name)}: ${t.dtype} [${t.shape.join(', ')}] does not fit in a file`);
    parts.push(`${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${at},${end}]}`);
    at = end;
  }
  const body0 = new TextEncoder().encode(`{${parts.join(',')}}`);
  const padded = body0.length + ((8 - (body0.length % 8)) % 8);
  if (padded > MAX_HEADER_BYTES) throw new LoRAFormatError(`safetensors: cannot write a ${padded}-byte header; readers refuse headers over 100,000,000 bytes`);
  const header = new Uint8Array(8 + padded).fill(0x20, 8 + body0.length);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(body0, 8);
  return { header, order, dataBytes: at };
}

/** A whole safetensors file in memory. */
export function encodeSafetensors(tensors: readonly (TensorToWrite & { data: ArrayBufferView })[], metadata?: Readonly<Record<string, string>>): Uint8Array {
  const { header, order, dataBytes } = planSafetensors(tensors, metadata);
  const out = new Uint8Array(header.length + dataBytes);
  out.set(header, 0);
  let at = header.length;
  for (const t of order) {
    const want = numelOf(t.shape) * ITEM_SIZE[t.dtype]!;
    if (!ArrayBuffer.isView(t.data) || t.data.byteLength !== want) {
      throw new LoRAFormatError(`safetensors: ${quoteName(t.name)} has ${ArrayBuffer.isView(t.data) ? t.data.byteLength : 'no'} bytes of data for ${want}`);
    }
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += want;
  }
  return out;
}

/** A tensor shape as a matrix: [n] → [1, n], [] → [1, 1], [a, b, 1, 1] → [a, b], [a, ...rest] → [a, Π rest]. */
export function as2d(shape: readonly number[]): [number, number] {
  if (shape.length === 0) return [1, 1];
  if (shape.length === 1) return [1, shape[0]!];
  return [shape[0]!, numelOf(shape.slice(1))];
}

/**
 * Why `text` is not strict JSON (a key repeated in one object, trailing garbage, a lone surrogate…),
 * or undefined when it is: for JSON files other than headers, such as adapter_config.json, where
 * JSON.parse would keep the last of two keys silently.
 */
export function strictJsonProblem(text: string): string | undefined {
  try {
    parseJson(text);
    return undefined;
  } catch (e) {
    if (e instanceof JsonRefusal) return e.message.replace(/^the header is not valid JSON: /, '').replace(/ in the header$/, '');
    throw e;
  }
}
