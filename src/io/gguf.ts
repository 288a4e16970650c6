/**
 * GGUF: a strict, streaming reader (v2 and v3, little-endian).
 *
 *   "GGUF" u32 version  i64 n_tensors  i64 n_kv
 *   n_kv × { string key, u32 type, value }                          metadata
 *   n_tensors × { string name, u32 n_dims, i64 ne[n_dims], i32 ggml type, u64 offset }
 *   zeros to general.alignment (default 32)                           (only when n_tensors > 0)
 *   data: each tensor at dataStart + offset
 *   string = u64 length + UTF-8 bytes; array value = u32 item type, u64 count, count × value (arrays nest)
 *
 * ne[] lists dimensions innermost first: a row-major [rows, cols] matrix has ne = [cols, rows]; `shape`
 * here is ne reversed (outermost first, as safetensors and PyTorch write shapes).
 *
 * Files are untrusted. A malformed file is a one-line LoRAFormatError naming the file and the field,
 * and never costs more memory or time than its size: the header is read in chunks (never a guessed
 * size, never past the end); every count and length is checked against the bytes left in the file
 * before anything is allocated; arrays nest at most MAX_NESTING deep; value types, ggml types and
 * bools (0 or 1) must be known; keys are non-empty, UTF-8 and unique; `general.alignment`, when
 * present, is a u32 power of two (as gguf.cpp checks); tensor names are UTF-8, shorter than 64 bytes
 * (GGML_MAX_NAME) and unique; n_dims ≤ 4; every ne ≥ 0 and within 2^53, the element count within
 * 2^53, ne[0] a multiple of the type's block size; offsets multiples of the alignment, every tensor
 * inside the file and no two overlapping (gguf.cpp of llama.cpp's current release also requires each
 * offset to be the previous tensor's padded end, in file order: the layout gguf-write.ts always writes;
 * this reader accepts any aligned layout without overlaps). String values that are not UTF-8 are read with U+FFFD in
 * place of bad bytes (llama.cpp reads any bytes; a verbatim copy keeps them): keys and names are not.
 * see: ggml docs/gguf.md; ggml/src/gguf.cpp (gguf_init_from_reader) for what llama.cpp checks.
 */
import { LoRAFormatError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { type GgmlTypeName, REMOVED_GGML_TYPES, ggmlBytes, ggmlType } from './gguf-types.js';
import { type ByteSource, readInto } from './source.js';

/** Metadata value types (enum gguf_type), in id order. */
export const GGUF_VALUE_TYPES = ['UINT8', 'INT8', 'UINT16', 'INT16', 'UINT32', 'INT32', 'FLOAT32', 'BOOL', 'STRING', 'ARRAY', 'UINT64', 'INT64', 'FLOAT64'] as const;
export type GgufType = (typeof GGUF_VALUE_TYPES)[number];
/** Bytes of one value of each fixed-size type. */
export const GGUF_VALUE_SIZE: Readonly<Partial<Record<GgufType, number>>> = Object.freeze({
  UINT8: 1, INT8: 1, UINT16: 2, INT16: 2, UINT32: 4, INT32: 4, FLOAT32: 4, BOOL: 1, UINT64: 8, INT64: 8, FLOAT64: 8,
});

/** An array value: its item type and its items (typed arrays for numbers, bigint ones for 64-bit ints). */
export type GgufArray =
  | { readonly type: 'UINT8'; readonly values: Uint8Array }
  | { readonly type: 'INT8'; readonly values: Int8Array }
  | { readonly type: 'UINT16'; readonly values: Uint16Array }
  | { readonly type: 'INT16'; readonly values: Int16Array }
  | { readonly type: 'UINT32'; readonly values: Uint32Array }
  | { readonly type: 'INT32'; readonly values: Int32Array }
  | { readonly type: 'FLOAT32'; readonly values: Float32Array }
  | { readonly type: 'FLOAT64'; readonly values: Float64Array }
  | { readonly type: 'UINT64'; readonly values: BigUint64Array }
  | { readonly type: 'INT64'; readonly values: BigInt64Array }
  | { readonly type: 'BOOL'; readonly values: readonly boolean[] }
  | { readonly type: 'STRING'; readonly values: readonly string[] }
  | { readonly type: 'ARRAY'; readonly values: readonly GgufArray[] };

/** number for 8/16/32-bit ints and floats, bigint for UINT64/INT64, boolean, string, or an array. */
export type GgufValue = number | bigint | boolean | string | GgufArray;

/** One metadata key-value pair: `type` is the value's type ('ARRAY' for arrays; the item type is on the value). */
export interface GgufKV {
  readonly key: string;
  readonly type: GgufType;
  readonly value: GgufValue;
}

/** A key-value pair as read: with its place in the file (`begin`…`end`, key included), for verbatim copies. */
export interface GgufMetadataEntry extends GgufKV {
  readonly index: number;
  readonly begin: number;
  readonly end: number;
}

export interface GgufTensorInfo {
  /** Position in the file's tensor infos. */
  readonly index: number;
  readonly name: string;
  /** ggml dimensions, innermost first (n_dims of them, as stored). */
  readonly ne: readonly number[];
  /** ne reversed: outermost first ([rows, cols] for a matrix). */
  readonly shape: readonly number[];
  /** ggml type id, and its name ('F16', 'Q4_K'…). */
  readonly type: number;
  readonly typeName: GgmlTypeName;
  readonly elements: number;
  /** Bytes from the start of the data section (a multiple of the alignment). */
  readonly offset: number;
  /** Bytes of data. */
  readonly size: number;
  /** Absolute byte range in the file: dataStart + offset, + size. */
  readonly begin: number;
  readonly end: number;
}

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** Array levels in one value, at most (16: an array of arrays is 2; gguf.cpp reads only 1, gguf-py any). */
export const MAX_NESTING = 16;
/** GGML_MAX_NAME: a tensor name holds at most 63 bytes. */
export const MAX_TENSOR_NAME_BYTES = 63;
/** Bytes read at a time while parsing the header (a single item larger than this is read whole). */
const CHUNK = 1 << 20;
/** The fewest bytes a key-value pair (non-empty key, type, a u8) and a tensor info (empty name, n_dims 0) take. */
const MIN_KV_BYTES = 8 + 1 + 4 + 1;
const MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8;

const clip = (s: string): string => (s.length > 120 ? `${s.slice(0, 119)}…` : s);
/** A key or tensor name in a message: quoted, escaped to one line, clipped. */
export const quoteName = (name: string): string => clip(JSON.stringify(name));
const fail = (file: string, what: string): LoRAFormatError => new LoRAFormatError(`gguf: ${file.replace(/[\r\n]+/g, ' ')}: ${what}`);
const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const utf8Strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const utf8Lossy = new TextDecoder('utf-8', { ignoreBOM: true });
const utf8 = new TextEncoder();

/**
 * The header, read forward through a window of the file that is refilled in chunks. `need(n)` makes
 * n bytes at `pos` available or fails naming the field; the read methods then take them.
 */
/** Decoded metadata may take this much memory beyond the file's size (Cursor.charge). */
const METADATA_BUDGET = 64 * 2 ** 20;
/** What one item costs decoded, beyond its bytes in the file (V8 objects, array slots, string headers). */
const COST = { bool: 8, string: 32, array: 96 } as const;

class Cursor {
  pos = 0;
  /** The window: #store[0, #len) holds the file's bytes from #at. */
  #store = new Uint8Array(0);
  #view = new DataView(this.#store.buffer);
  #len = 0;
  #at = 0;
  /**
   * What decoded metadata may still cost in memory, in bytes: 64 MiB plus the file's size. Items that
   * decode into more JS memory than they take in the file (an empty nested array is 12 bytes there and
   * an object here; a bool is 1 byte there) are charged, so a hostile header costs at most about its
   * file's size (measured before this: 240 MB of nested arrays took 7.4 GB and crashed Node).
   */
  #budget: number;
  constructor(readonly source: ByteSource, readonly file: string) {
    this.#budget = METADATA_BUDGET + source.size;
  }
  charge(bytes: number, what: () => string): void {
    this.#budget -= bytes;
    if (this.#budget < 0) throw fail(this.file, `${what()}: the metadata would take more than ${Math.round((METADATA_BUDGET + this.size) / 2 ** 20)} MiB in memory (64 MiB plus the file's size); refusing a header built to exhaust memory`);
  }

  get size(): number {
    return this.source.size;
  }
  /** Bytes left in the file after pos. */
  get left(): number {
    return this.source.size - this.pos;
  }
  /** Makes n bytes at pos available (a no-op when they are), or fails naming `what` if the file ends first. */
  need(n: number, what: () => string): Promise<void> | undefined {
    if (this.pos + n <= this.#at + this.#len) return undefined;
    if (n > this.left) throw fail(this.file, `${what()}: the file ends at byte ${this.size}, ${n} bytes are needed at ${this.pos}`);
    return this.#fill(n);
  }
  /** Moves the unread tail to the front and reads on: at least n bytes, a chunk when the file has one. */
  async #fill(n: number): Promise<void> {
    const k = this.pos - this.#at;
    const kept = this.#len - k;
    const length = Math.min(Math.max(n, CHUNK), this.left);
    if (length > this.#store.length) {
      const store = new Uint8Array(length);
      store.set(this.#store.subarray(k, this.#len));
      this.#store = store;
      this.#view = new DataView(store.buffer);
    } else this.#store.copyWithin(0, k, this.#len);
    await readInto(this.source, this.pos + kept, this.#store.subarray(kept, length));
    this.#len = length;
    this.#at = this.pos;
  }
  #take(n: number): number {
    const k = this.pos - this.#at;
    this.pos += n;
    return k;
  }
  u8(): number {
    return this.#view.getUint8(this.#take(1));
  }
  i8(): number {
    return this.#view.getInt8(this.#take(1));
  }
  u16(): number {
    return this.#view.getUint16(this.#take(2), true);
  }
  i16(): number {
    return this.#view.getInt16(this.#take(2), true);
  }
  u32(): number {
    return this.#view.getUint32(this.#take(4), true);
  }
  i32(): number {
    return this.#view.getInt32(this.#take(4), true);
  }
  f32(): number {
    return this.#view.getFloat32(this.#take(4), true);
  }
  f64(): number {
    return this.#view.getFloat64(this.#take(8), true);
  }
  u64(): bigint {
    return this.#view.getBigUint64(this.#take(8), true);
  }
  i64(): bigint {
    return this.#view.getBigInt64(this.#take(8), true);
  }
  /** Whether n bytes at pos are buffered (then no need() is required to read them). */
  has(n: number): boolean {
    return this.pos + n <= this.#at + this.#len;
  }
  /** The u64 at pos without taking it (has(8) must hold). */
  peekU64(): bigint {
    return this.#view.getBigUint64(this.pos - this.#at, true);
  }
  /** n bytes at pos: a view valid until the next need(). */
  bytes(n: number): Uint8Array {
    const k = this.#take(n);
    return this.#store.subarray(k, k + n);
  }
}

/** A u64 length or count that must fit in what is left of the file (checked in bigint: no overflow). */
function fits(c: Cursor, n: bigint, perItem: number, what: () => string, unit: string): number {
  if (n * BigInt(perItem) > BigInt(c.left)) {
    throw fail(c.file, `${what()}: ${n} ${unit}${perItem > 1 ? ` (at least ${perItem} bytes each)` : ''} do not fit in the ${c.left} bytes left in the file`);
  }
  return Number(n);
}

/** UTF-8 bytes as text: short ASCII directly (most vocabulary entries), else TextDecoder. */
function decode(c: Cursor, b: Uint8Array, what: () => string, strict: boolean): string {
  if (b.length <= 64) {
    let ascii = true;
    for (let k = 0; k < b.length; k++) if (b[k]! >= 0x80) ascii = false;
    if (ascii) return String.fromCharCode.apply(null, b as unknown as number[]);
  }
  if (!strict) return utf8Lossy.decode(b);
  try {
    return utf8Strict.decode(b);
  } catch {
    throw fail(c.file, `${what()}: not valid UTF-8`);
  }
}

/** The string at pos when it is wholly buffered (no await: a vocabulary has ~10^5 of them), else undefined. */
function bufferedString(c: Cursor, what: () => string, strict: boolean): string | undefined {
  if (!c.has(8)) return undefined;
  const n = c.peekU64();
  if (n > 0xffffffffn || !c.has(8 + Number(n))) return undefined;
  c.u64();
  return decode(c, c.bytes(Number(n)), what, strict);
}

async function readString(c: Cursor, what: () => string, strict: boolean): Promise<string> {
  const now = bufferedString(c, what, strict);
  if (now !== undefined) return now;
  await c.need(8, what);
  const n = fits(c, c.u64(), 1, what, 'bytes of string');
  await c.need(n, what);
  return decode(c, c.bytes(n), what, strict);
}

function valueType(c: Cursor, id: number, what: () => string): GgufType {
  const t = GGUF_VALUE_TYPES[id];
  if (t === undefined) throw fail(c.file, `${what()}: unknown value type ${id} (known: 0 to ${GGUF_VALUE_TYPES.length - 1})`);
  return t;
}

type NumericArrayType = Exclude<GgufType, 'BOOL' | 'STRING' | 'ARRAY'>;
const ARRAY_CTOR = {
  UINT8: Uint8Array, INT8: Int8Array, UINT16: Uint16Array, INT16: Int16Array, UINT32: Uint32Array, INT32: Int32Array,
  FLOAT32: Float32Array, FLOAT64: Float64Array, UINT64: BigUint64Array, INT64: BigInt64Array,
} as const;
const GETTER = {
  UINT8: 'getUint8', INT8: 'getInt8', UINT16: 'getUint16', INT16: 'getInt16', UINT32: 'getUint32', INT32: 'getInt32',
  FLOAT32: 'getFloat32', FLOAT64: 'getFloat64', UINT64: 'getBigUint64', INT64: 'getBigInt64',
} as const;

/** Little-endian bytes of n values of `type` as a typed array of its own (a copy). */
function numericArray(type: NumericArrayType, bytes: Uint8Array): GgufArray {
  const Ctor = ARRAY_CTOR[type];
  const size = GGUF_VALUE_SIZE[type]!;
  const n = bytes.length / size;
  if (LITTLE_ENDIAN_HOST) return { type, values: new Ctor(bytes.slice().buffer, 0, n) } as GgufArray;
  const values = new Ctor(n);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const get = GETTER[type];
  for (let i = 0; i < n; i++) (values as unknown as (number | bigint)[])[i] = (view[get] as (o: number, le: boolean) => number | bigint)(i * size, true);
  return { type, values } as GgufArray;
}

function readBool(c: Cursor, what: () => string): boolean {
  const b = c.u8();
  if (b > 1) throw fail(c.file, `${what()}: a bool must be 0 or 1, got ${b}`);
  return b === 1;
}

/** Reads one value of `type` (an array's item type and count first, for 'ARRAY'). */
async function readValue(c: Cursor, type: GgufType, depth: number, what: () => string): Promise<GgufValue> {
  const size = GGUF_VALUE_SIZE[type];
  if (size !== undefined) {
    await c.need(size, what);
    switch (type) {
      case 'UINT8': return c.u8();
      case 'INT8': return c.i8();
      case 'UINT16': return c.u16();
      case 'INT16': return c.i16();
      case 'UINT32': return c.u32();
      case 'INT32': return c.i32();
      case 'FLOAT32': return c.f32();
      case 'FLOAT64': return c.f64();
      case 'UINT64': return c.u64();
      case 'INT64': return c.i64();
      case 'BOOL': return readBool(c, what);
    }
  }
  if (type === 'STRING') return readString(c, what, false);
  // ARRAY
  if (depth >= MAX_NESTING) throw fail(c.file, `${what()}: arrays nested more than ${MAX_NESTING} deep`);
  await c.need(12, () => `${what()}: array header`);
  const itemType = valueType(c, c.u32(), () => `${what()}: array item type`);
  const count = c.u64();
  const item = (i: number) => () => `${what()}[${i}]`;
  const itemSize = GGUF_VALUE_SIZE[itemType];
  if (itemSize !== undefined) {
    const n = fits(c, count, itemSize, () => `${what()}: array count`, `${itemType} items`);
    await c.need(n * itemSize, what);
    if (itemType !== 'BOOL') return numericArray(itemType as NumericArrayType, c.bytes(n * itemSize));
    c.charge(n * COST.bool, what);
    const values: boolean[] = [];
    for (let i = 0; i < n; i++) values.push(readBool(c, item(i)));
    return { type: 'BOOL', values };
  }
  if (itemType === 'STRING') {
    const n = fits(c, count, 8, () => `${what()}: array count`, 'strings');
    c.charge(n * COST.string, what);
    const values: string[] = [];
    for (let i = 0; i < n; i++) values.push(bufferedString(c, item(i), false) ?? (await readString(c, item(i), false)));
    return { type: 'STRING', values };
  }
  const n = fits(c, count, 12, () => `${what()}: array count`, 'arrays');
  c.charge(n * COST.array, what);
  const values: GgufArray[] = [];
  for (let i = 0; i < n; i++) values.push((await readValue(c, 'ARRAY', depth + 1, item(i))) as GgufArray);
  return { type: 'ARRAY', values };
}

/** The int64 count at pos, which must be ≥ 0. */
function count(c: Cursor, what: string): bigint {
  const n = c.i64();
  if (n < 0n) throw fail(c.file, `the ${what} is negative (${n})`);
  return n;
}

const isPowerOfTwo = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;
const padTo = (n: number, alignment: number): number => n + ((alignment - (n % alignment)) % alignment);

/** The header's layout: where each part begins (absolute byte offsets). */
export interface GgufLayout {
  /** The first key-value pair (24: after magic, version and the two counts). */
  readonly kvStart: number;
  /** After the last key-value pair: where the tensor infos begin. */
  readonly kvEnd: number;
  /** After the last tensor info (before the padding). */
  readonly infoEnd: number;
  readonly dataStart: number;
}

/** A GGUF file opened for reading: the header is parsed and checked; tensor data are read on demand. */
export class GgufReader {
  readonly file: string;
  readonly version: number;
  /** Key-value pairs in file order. */
  readonly metadata: readonly GgufMetadataEntry[];
  /** Tensor infos in file order. */
  readonly tensors: readonly GgufTensorInfo[];
  readonly alignment: number;
  readonly layout: GgufLayout;
  readonly #source: ByteSource;
  readonly #kv: Map<string, GgufMetadataEntry>;
  readonly #byName: Map<string, GgufTensorInfo>;

  private constructor(source: ByteSource, version: number, metadata: GgufMetadataEntry[], kv: Map<string, GgufMetadataEntry>, tensors: GgufTensorInfo[], byName: Map<string, GgufTensorInfo>, alignment: number, layout: GgufLayout) {
    this.#source = source;
    this.file = source.name;
    this.version = version;
    this.metadata = metadata;
    this.#kv = kv;
    this.tensors = tensors;
    this.#byName = byName;
    this.alignment = alignment;
    this.layout = layout;
  }

  /** Absolute offset of the data section (aligned). */
  get dataStart(): number {
    return this.layout.dataStart;
  }

  static async open(source: ByteSource): Promise<GgufReader> {
    if (typeof source !== 'object' || source === null || typeof source.read !== 'function' || typeof source.size !== 'number') {
      throw new LoRATypeError(`GgufReader.open takes a ByteSource (bytesSource(bytes), blobSource(file), or in Node await fileSource(path)), got ${describeValue(source)}`);
    }
    const file = source.name;
    const c = new Cursor(source, file);
    await c.need(4, () => `the file has ${source.size} bytes; a GGUF file starts with the magic "GGUF"`);
    const magic = c.u32();
    if (magic !== GGUF_MAGIC) {
      const text = [0, 8, 16, 24].map((s) => (magic >>> s) & 0xff).map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`)).join('');
      throw fail(file, `bad magic "${text}": not a GGUF file (it starts with "GGUF")`);
    }
    await c.need(4, () => 'header: version');
    const version = c.u32();
    if ((version & 0xffff) === 0 && version !== 0) throw fail(file, `header: version ${version} (0x${version.toString(16)}): a big-endian GGUF file, which lora-wasm does not read`);
    if (version !== 2 && version !== 3) throw fail(file, `header: version ${version} is not supported (lora-wasm reads GGUF v2 and v3${version === 1 ? '; v1 is obsolete' : ''})`);
    await c.need(16, () => 'header: tensor and key-value counts');
    const nTensors = count(c, 'tensor count');
    const nKV = count(c, 'key-value count');
    if (nTensors * BigInt(MIN_TENSOR_INFO_BYTES) + nKV * BigInt(MIN_KV_BYTES) > BigInt(c.left)) {
      throw fail(file, `header: ${nTensors} tensors and ${nKV} key-value pairs do not fit in the ${c.left} bytes left in the file`);
    }
    const kvStart = c.pos;
    const metadata: GgufMetadataEntry[] = [];
    const kv = new Map<string, GgufMetadataEntry>();
    for (let i = 0; i < Number(nKV); i++) {
      const begin = c.pos;
      const key = await readString(c, () => `metadata ${i}: key`, true);
      if (key === '') throw fail(file, `metadata ${i}: the key is empty`);
      const where = () => `metadata ${i} (${quoteName(key)})`;
      if (kv.has(key)) throw fail(file, `${where()}: the key appears twice (first as metadata ${kv.get(key)!.index})`);
      await c.need(4, () => `${where()}: type`);
      const type = valueType(c, c.u32(), () => `${where()}: type`);
      const value = await readValue(c, type, 0, where);
      const entry: GgufMetadataEntry = { index: i, key, type, value, begin, end: c.pos };
      metadata.push(entry);
      kv.set(key, entry);
    }
    const kvEnd = c.pos;
    let alignment = GGUF_DEFAULT_ALIGNMENT;
    const a = kv.get('general.alignment');
    if (a !== undefined) {
      if (a.type !== 'UINT32') throw fail(file, `metadata ${a.index} ("general.alignment"): must be a UINT32, got ${a.type}`);
      if (!isPowerOfTwo(a.value as number)) throw fail(file, `metadata ${a.index} ("general.alignment"): ${a.value} is not a power of two`);
      alignment = a.value as number;
    }

    const infos: { name: string; ne: number[]; type: number; offset: bigint }[] = [];
    const byIndex = new Map<string, number>();
    for (let i = 0; i < Number(nTensors); i++) {
      let where = () => `tensor ${i}: name`;
      const name = await readString(c, where, true);
      where = () => `tensor ${i} (${quoteName(name)})`;
      const nameBytes = utf8.encode(name).length;
      if (nameBytes > MAX_TENSOR_NAME_BYTES) throw fail(file, `${where()}: the name has ${nameBytes} bytes; ggml allows at most ${MAX_TENSOR_NAME_BYTES}`);
      if (byIndex.has(name)) throw fail(file, `${where()}: the name appears twice (first as tensor ${byIndex.get(name)})`);
      byIndex.set(name, i);
      await c.need(4, () => `${where()}: n_dims`);
      const nDims = c.u32();
      if (nDims > 4) throw fail(file, `${where()}: n_dims is ${nDims}; ggml tensors have at most 4 dimensions`);
      await c.need(8 * nDims + 4 + 8, () => `${where()}: ne, type and offset`);
      const ne: number[] = [];
      let elements = 1n;
      for (let j = 0; j < nDims; j++) {
        const d = c.i64();
        if (d < 0n) throw fail(file, `${where()}: ne[${j}] is negative (${d})`);
        if (d > BigInt(Number.MAX_SAFE_INTEGER)) throw fail(file, `${where()}: ne[${j}] is ${d}, over 2^53 − 1`);
        ne.push(Number(d));
        elements *= d;
      }
      if (elements > BigInt(Number.MAX_SAFE_INTEGER)) throw fail(file, `${where()}: ne [${ne.join(', ')}] has ${elements} elements, over 2^53 − 1`);
      const typeId = c.i32();
      const t = ggmlType(typeId);
      if (t === undefined) {
        const removed = REMOVED_GGML_TYPES.get(typeId);
        throw fail(file, `${where()}: ggml type ${typeId} is ${removed ? `${removed}` : 'unknown'}`);
      }
      if (ggmlBytes(t, ne) === undefined) throw fail(file, `${where()}: ne[0] = ${ne[0]} is not a multiple of ${t.name}'s block size ${t.blockSize}`);
      const offset = c.u64();
      if (offset % BigInt(alignment) !== 0n) throw fail(file, `${where()}: offset ${offset} is not a multiple of the alignment ${alignment}`);
      infos.push({ name, ne, type: typeId, offset });
    }
    const infoEnd = c.pos;
    const dataStart = infos.length > 0 ? padTo(infoEnd, alignment) : infoEnd;
    if (dataStart > source.size) throw fail(file, `the data section would start at byte ${dataStart} (the header ends at ${infoEnd}, aligned to ${alignment}), past the end of the file (${source.size} bytes)`);
    const dataBytes = BigInt(source.size - dataStart);

    const tensors: GgufTensorInfo[] = infos.map((x, index) => {
      const t = ggmlType(x.type)!;
      const size = ggmlBytes(t, x.ne)!;
      if (x.offset + BigInt(size) > dataBytes) {
        throw fail(file, `tensor ${index} (${quoteName(x.name)}): its ${size} bytes at offset ${x.offset} reach past the end of the file (the data section holds ${dataBytes} bytes)`);
      }
      const offset = Number(x.offset);
      return Object.freeze({
        index, name: x.name, ne: Object.freeze(x.ne), shape: Object.freeze([...x.ne].reverse()), type: x.type, typeName: t.name,
        elements: x.ne.reduce((p, d) => p * d, 1), offset, size, begin: dataStart + offset, end: dataStart + offset + size,
      });
    });
    const sorted = tensors.filter((t) => t.size > 0).sort((p, q) => p.begin - q.begin);
    for (let k = 1; k < sorted.length; k++) {
      const p = sorted[k - 1]!;
      const q = sorted[k]!;
      if (q.begin < p.end) throw fail(file, `tensor ${q.index} (${quoteName(q.name)}): its bytes at offset ${q.offset} overlap tensor ${p.index} (${quoteName(p.name)}) at offsets ${p.offset} to ${p.offset + p.size}`);
    }
    const byName = new Map(tensors.map((t) => [t.name, t]));
    return new GgufReader(source, version, metadata, kv, tensors, byName, alignment, Object.freeze({ kvStart, kvEnd, infoEnd, dataStart }));
  }

  /** The key-value pair `key`, or undefined. */
  kv(key: string): GgufMetadataEntry | undefined {
    return this.#kv.get(key);
  }

  /** The value of `key`, or undefined. */
  value(key: string): GgufValue | undefined {
    return this.#kv.get(key)?.value;
  }

  get(name: string): GgufTensorInfo | undefined {
    return this.#byName.get(name);
  }

  #own(t: GgufTensorInfo, what: string): GgufTensorInfo {
    if (this.tensors[t?.index] !== t) throw new LoRATypeError(`gguf ${what}: ${describeValue(t)} is not a tensor of ${this.file} (pass one of reader.tensors)`);
    return t;
  }

  /** The tensor's bytes read straight into `target` (a view of wasm memory, say): its first `size` bytes. */
  async readInto(tensor: GgufTensorInfo, target: Uint8Array): Promise<void> {
    const t = this.#own(tensor, 'readInto');
    if (!(target instanceof Uint8Array)) throw new LoRATypeError(`gguf readInto: target must be a Uint8Array, got ${describeValue(target)}`);
    if (target.length < t.size) throw new LoRAShapeError(`gguf readInto: target has ${target.length} bytes but ${quoteName(t.name)} (${t.typeName} [${t.shape.join(', ')}]) has ${t.size}`);
    await readInto(this.#source, t.begin, target.subarray(0, t.size));
  }

  /** The tensor's bytes (allocates; prefer readInto for large tensors). */
  async read(tensor: GgufTensorInfo | string): Promise<Uint8Array> {
    const t = typeof tensor === 'string' ? this.#byName.get(tensor) : this.#own(tensor, 'read');
    if (!t) throw fail(this.file, `there is no tensor ${quoteName(String(tensor))}`);
    return this.#source.read(t.begin, t.size);
  }

  /** The exact bytes of one key-value pair (key, type and value) as stored. */
  rawKV(entry: GgufMetadataEntry | string): Promise<Uint8Array> {
    const e = typeof entry === 'string' ? this.#kv.get(entry) : entry;
    if (!e || this.metadata[e.index] !== e) throw fail(this.file, `there is no key ${quoteName(typeof entry === 'string' ? entry : String(e?.key))}`);
    return this.#source.read(e.begin, e.end - e.begin);
  }

  /** The exact bytes from `begin` to `end` of the file (for example the whole metadata: layout.kvStart to layout.kvEnd). */
  rawBytes(begin: number, end: number): Promise<Uint8Array> {
    if (!(Number.isSafeInteger(begin) && Number.isSafeInteger(end) && 0 <= begin && begin <= end && end <= this.#source.size)) {
      throw new LoRAShapeError(`gguf rawBytes: [${begin}, ${end}) is not a byte range of ${this.file} (${this.#source.size} bytes)`);
    }
    return this.#source.read(begin, end - begin);
  }

  /** The file's first dataStart bytes: the header and its padding, as stored. */
  headerBytes(): Promise<Uint8Array> {
    return this.#source.read(0, this.layout.dataStart);
  }

  /** The source the file is read from. */
  get source(): ByteSource {
    return this.#source;
  }

  async close(): Promise<void> {
    await this.#source.close?.();
  }
}
