/**
 * safetensors: a strict reader and a writer.
 *
 *   [u64 LE N][N bytes of UTF-8 JSON header][data]
 *   header: { name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__"?: { string: string } }
 *   offsets are relative to the first data byte (8 + N).
 *
 * The reader validates as the reference implementation does, and a malformed file is a
 * LoRAFormatError naming the file and the key, never a crash and never an allocation larger than
 * the file: N ≤ 100,000,000 and inside the file; UTF-8 JSON; `__metadata__` string → string; no
 * duplicate key; a known dtype; a shape of non-negative integers; end − begin = numel·itemsize;
 * tensors, sorted by offset, contiguous from 0 with no gap or overlap; the last end at the end of
 * the file. Tensors are read one at a time at their offsets (a multi-GB model is never read whole).
 *
 * The writer pads the header with spaces to a multiple of 8 and orders tensors as the reference
 * writer does: by dtype (its enum order, descending: larger alignment first), then by name.
 * see: https://github.com/huggingface/safetensors (safetensors/src/tensor.rs: validate, prepare)
 */
import { LoRAFormatError } from '../errors.js';
import type { DType } from '../memory/matrix.js';
import type { ByteSource } from './source.js';

/** Every dtype the format defines, with its item size, in the reference's enum order. */
const DTYPE_ORDER = ['BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'F64', 'I64', 'U64'] as const;
const ITEM_SIZE: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, F64: 8, I64: 8, U64: 8,
};
/** The dtypes lora-wasm computes with. */
export const READABLE_DTYPES = ['F32', 'F16', 'BF16'] as const;
export type ReadableDType = (typeof READABLE_DTYPES)[number];

export const MAX_HEADER_BYTES = 100_000_000;

/** safetensors dtype names ↔ lora-wasm dtypes, for the three it computes with. */
export const DTYPE_OF_ST: Readonly<Record<string, DType>> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };
export const ST_OF_DTYPE: Readonly<Record<DType, string>> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };

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

const fail = (file: string, what: string): LoRAFormatError => new LoRAFormatError(`safetensors: ${file}: ${what}`);

export const numelOf = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** The keys of the top-level JSON object, in order, duplicates kept (JSON.parse would drop them). */
function topLevelKeys(text: string): string[] {
  const keys: string[] = [];
  let i = text.indexOf('{') + 1;
  let depth = 1;
  let expectKey = true;
  while (i < text.length && depth > 0) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) keys.push(JSON.parse(text.slice(i, j + 1)) as string);
      expectKey = false;
      i = j + 1;
      continue;
    }
    if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
    else if (c === ',' && depth === 1) expectKey = true;
    i++;
  }
  return keys;
}

/** Validates a header (the JSON text) against the file's size; returns its tensors sorted by offset. */
export function parseHeader(file: string, text: string, dataBytes: number): { tensors: TensorInfo[]; metadata: Record<string, string> } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw fail(file, `the header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw fail(file, 'the header is not a JSON object');
  const keys = topLevelKeys(text);
  const seen = new Set<string>();
  for (const k of keys) {
    if (seen.has(k)) throw fail(file, `the key "${k}" appears twice in the header`);
    seen.add(k);
  }
  const metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw fail(file, '"__metadata__" must be an object of strings');
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== 'string') throw fail(file, `"__metadata__"."${k}" must be a string, got ${JSON.stringify(v)}`);
        metadata[k] = v;
      }
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e !== 'object' || e === null) throw fail(file, `"${name}" must be an object with dtype, shape and data_offsets`);
    if (typeof e.dtype !== 'string' || !(e.dtype in ITEM_SIZE)) throw fail(file, `"${name}" has an unknown dtype ${JSON.stringify(e.dtype)}`);
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw fail(file, `"${name}" has a bad shape ${JSON.stringify(e.shape)}; it must be a list of non-negative integers`);
    }
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[0] > off[1]) {
      throw fail(file, `"${name}" has bad data_offsets ${JSON.stringify(off)}; they must be [begin, end] with 0 ≤ begin ≤ end`);
    }
    const numel = numelOf(e.shape as number[]);
    const bytes = numel * ITEM_SIZE[e.dtype]!;
    if (!Number.isSafeInteger(bytes) || off[1] - off[0] !== bytes) {
      throw fail(file, `"${name}" is ${e.dtype} ${JSON.stringify(e.shape)} (${bytes} bytes) but its data_offsets [${off[0]}, ${off[1]}] hold ${off[1] - off[0]}`);
    }
    tensors.push({ name, dtype: e.dtype, shape: e.shape as number[], begin: off[0], end: off[1] });
  }
  tensors.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const t of tensors) {
    if (t.begin !== at) {
      throw fail(file, t.begin < at ? `"${t.name}" overlaps the tensor before it (begins at ${t.begin}, before ${at})` : `there is a gap before "${t.name}" (bytes ${at} to ${t.begin} belong to no tensor)`);
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
      text = new TextDecoder('utf-8', { fatal: true }).decode(await source.read(8, n));
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
    if (!info) throw fail(this.file, `there is no tensor "${name}"`);
    return { info, bytes: await this.#source.read(this.dataStart + info.begin, info.end - info.begin) };
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
  throw fail(file, `"${name}" is ${dtype}, which lora-wasm does not support (it reads F32, F16 and BF16)`);
}

export interface TensorToWrite {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
}

/**
 * The header of a file holding `tensors` (the reference writer's order and padding), and each
 * tensor's place. Writing the header and then each tensor's bytes in `order` makes the file.
 */
export function planSafetensors<T extends TensorToWrite>(tensors: readonly T[], metadata?: Record<string, string>): { header: Uint8Array; order: T[]; dataBytes: number } {
  const rank = (d: string): number => DTYPE_ORDER.indexOf(d as (typeof DTYPE_ORDER)[number]);
  const order = [...tensors].sort((a, b) => rank(b.dtype) - rank(a.dtype) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const json: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) json.__metadata__ = metadata;
  let at = 0;
  for (const t of order) {
    if (!(t.dtype in ITEM_SIZE)) throw new LoRAFormatError(`safetensors: cannot write "${t.name}": unknown dtype ${t.dtype}`);
    if (t.name in json) throw new LoRAFormatError(`safetensors: cannot write "${t.name}" twice`);
    const bytes = numelOf(t.shape) * ITEM_SIZE[t.dtype]!;
    json[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + bytes] };
    at += bytes;
  }
  let text = JSON.stringify(json);
  const utf8 = new TextEncoder();
  const pad = (8 - (utf8.encode(text).length % 8)) % 8;
  text += ' '.repeat(pad);
  const body = utf8.encode(text);
  const header = new Uint8Array(8 + body.length);
  new DataView(header.buffer).setBigUint64(0, BigInt(body.length), true);
  header.set(body, 8);
  return { header, order, dataBytes: at };
}

/** A whole safetensors file in memory. */
export function encodeSafetensors(tensors: readonly (TensorToWrite & { data: ArrayBufferView })[], metadata?: Record<string, string>): Uint8Array {
  const { header, order, dataBytes } = planSafetensors(tensors, metadata);
  const out = new Uint8Array(header.length + dataBytes);
  out.set(header, 0);
  let at = header.length;
  for (const t of order) {
    const want = numelOf(t.shape) * ITEM_SIZE[t.dtype]!;
    if (t.data.byteLength !== want) throw new LoRAFormatError(`safetensors: "${t.name}" has ${t.data.byteLength} bytes of data for ${want}`);
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
