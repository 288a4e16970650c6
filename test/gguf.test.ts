// GGUF: the type table against gguf-py's formulas, round trips of every value type (v2 and v3),
// verbatim rewriting, every malformed field refused with a one-line LoRAFormatError naming the file
// and the field (and a fuzz of truncated and bit-flipped files), and the real thing: a tiny llama
// model written by our writer, loaded and run by llama.cpp (node-llama-cpp), and re-read exactly.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRAFormatError, LoRAShapeError } from '../src/errors.js';
import { GGML_TYPE, GGML_TYPES, REMOVED_GGML_TYPES, ggmlBytes, ggmlType } from '../src/io/gguf-types.js';
import { type GgufKV, GgufReader, MAX_NESTING } from '../src/io/gguf.js';
import { type GgufPlan, copyUnchanged, encodeGguf, encodeKV, planGguf, planGgufFrom, writeGguf } from '../src/io/gguf-write.js';
import { blobSource, bytesSource } from '../src/io/source.js';
import { tinyLlama } from './fixtures/tiny-llama.js';
import { assertRejectsTyped, rng } from './helpers.js';

const FILE = 'model.gguf';
const open = (bytes: Uint8Array, name = FILE) => GgufReader.open(bytesSource(bytes, name));

/** Opening (and reading every tensor of) `bytes` fails with a one-line LoRAFormatError naming the file and `words`. */
async function rejects(bytes: Uint8Array, words: string[]): Promise<void> {
  try {
    const r = await open(bytes);
    for (const t of r.tensors) await r.read(t);
  } catch (e) {
    assert.instance(e, LoRAFormatError, (e as Error).stack);
    const m = (e as Error).message;
    assert.not.ok(m.includes('\n'), `one line: ${JSON.stringify(m)}`);
    for (const w of [FILE, ...words]) assert.ok(m.includes(w), `"${m}" should mention "${w}"`);
    return;
  }
  assert.unreachable(`accepted a file that should fail with ${words.join(', ')}`);
}

/** Raw little-endian bytes, for files no writer would make. */
class Raw {
  #parts: number[] = [];
  #dv = new DataView(new ArrayBuffer(8));
  #put(n: number): this {
    for (let i = 0; i < n; i++) this.#parts.push(this.#dv.getUint8(i));
    return this;
  }
  u8(v: number) { this.#dv.setUint8(0, v); return this.#put(1); }
  u32(v: number) { this.#dv.setUint32(0, v >>> 0, true); return this.#put(4); }
  i32(v: number) { this.#dv.setInt32(0, v, true); return this.#put(4); }
  u64(v: bigint | number) { this.#dv.setBigUint64(0, BigInt.asUintN(64, BigInt(v)), true); return this.#put(8); }
  f32(v: number) { this.#dv.setFloat32(0, v, true); return this.#put(4); }
  bytes(b: Uint8Array | number[]) { for (const x of b) this.#parts.push(x); return this; }
  str(s: string | Uint8Array) {
    const b = typeof s === 'string' ? new TextEncoder().encode(s) : s;
    return this.u64(b.length).bytes(b);
  }
  zerosTo(alignment: number) { while (this.#parts.length % alignment) this.#parts.push(0); return this; }
  get length() { return this.#parts.length; }
  done() { return Uint8Array.from(this.#parts); }
}
/** A file: header with the given counts (default: the list lengths), pairs, infos, zeros to 32, `data` bytes. */
function raw(o: { version?: number; nTensors?: bigint | number; nKV?: bigint | number; kvs?: ((r: Raw) => void)[]; infos?: ((r: Raw) => void)[]; data?: number; align?: number }): Uint8Array {
  const r = new Raw().bytes([0x47, 0x47, 0x55, 0x46]).u32(o.version ?? 3).u64(o.nTensors ?? o.infos?.length ?? 0).u64(o.nKV ?? o.kvs?.length ?? 0);
  for (const kv of o.kvs ?? []) kv(r);
  for (const t of o.infos ?? []) t(r);
  if ((o.infos?.length ?? 0) > 0) r.zerosTo(o.align ?? 32);
  return new Raw().bytes(r.done()).bytes(new Array(o.data ?? 0).fill(7)).done();
}
const kvU32 = (key: string, v: number) => (r: Raw) => r.str(key).u32(4).u32(v);
const info = (name: string, ne: (number | bigint)[], type: number, offset: number | bigint) => (r: Raw) => {
  r.str(name).u32(ne.length);
  for (const d of ne) r.u64(d);
  r.i32(type).u64(offset);
};

// ---- the type table --------------------------------------------------------------------------

test('the ggml type table matches gguf-py GGML_QUANT_SIZES (block size, bytes per block) for every type', () => {
  const QK_K = 256;
  const want: Record<string, [number, number, number]> = {
    F32: [0, 1, 4], F16: [1, 1, 2], Q4_0: [2, 32, 2 + 16], Q4_1: [3, 32, 2 + 2 + 16], Q5_0: [6, 32, 2 + 4 + 16], Q5_1: [7, 32, 2 + 2 + 4 + 16],
    Q8_0: [8, 32, 2 + 32], Q8_1: [9, 32, 2 + 2 + 32], // gguf-py says 4 + 4 + 32; ggml's block_q8_1 is two halves + 32 (ggml_type_size 36)
    Q2_K: [10, 256, 2 + 2 + QK_K / 16 + QK_K / 4], Q3_K: [11, 256, 2 + QK_K / 4 + QK_K / 8 + 12],
    Q4_K: [12, 256, 2 + 2 + QK_K / 2 + 12], Q5_K: [13, 256, 2 + 2 + QK_K / 2 + QK_K / 8 + 12], Q6_K: [14, 256, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16],
    Q8_K: [15, 256, 4 + QK_K + QK_K / 8], IQ2_XXS: [16, 256, 2 + QK_K / 4], IQ2_XS: [17, 256, 2 + QK_K / 4 + QK_K / 32],
    IQ3_XXS: [18, 256, 2 + QK_K / 4 + QK_K / 8], IQ1_S: [19, 256, 2 + QK_K / 8 + QK_K / 16], IQ4_NL: [20, 32, 2 + 16],
    IQ3_S: [21, 256, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4], IQ2_S: [22, 256, 2 + QK_K / 4 + QK_K / 16], IQ4_XS: [23, 256, 2 + 2 + QK_K / 2 + QK_K / 64],
    I8: [24, 1, 1], I16: [25, 1, 2], I32: [26, 1, 4], I64: [27, 1, 8], F64: [28, 1, 8], IQ1_M: [29, 256, QK_K / 8 + QK_K / 16 + QK_K / 32],
    BF16: [30, 1, 2], TQ1_0: [34, 256, 2 + 4 * 13], TQ2_0: [35, 256, 2 + 64], MXFP4: [39, 32, 1 + 16], NVFP4: [40, 64, 4 + 32],
    Q1_0: [41, 128, 2 + 16], Q2_0: [42, 64, 2 + 16],
  };
  assert.equal(GGML_TYPES.map((t) => t.name).sort(), Object.keys(want).sort());
  for (const t of GGML_TYPES) {
    assert.equal([t.id, t.blockSize, t.typeSize], want[t.name], t.name);
    assert.is(GGML_TYPE[t.name], t.id);
    assert.is(ggmlType(t.id), t);
    assert.is(ggmlType(t.name.toLowerCase()), t);
    assert.is(t.quantized, t.blockSize > 1, t.name);
  }
  for (const id of [4, 5, 31, 32, 33, 36, 37, 38]) assert.ok(REMOVED_GGML_TYPES.has(id) && ggmlType(id) === undefined, `id ${id}`);
  assert.is(ggmlBytes(ggmlType('Q4_K')!, [512, 3]), 2 * 3 * 144);
  assert.is(ggmlBytes(ggmlType('Q8_0')!, [33]), undefined);
});

// ---- round trips ----------------------------------------------------------------------------

const EVERY_TYPE: GgufKV[] = [
  { key: 'u8', type: 'UINT8', value: 255 },
  { key: 'i8', type: 'INT8', value: -128 },
  { key: 'u16', type: 'UINT16', value: 65535 },
  { key: 'i16', type: 'INT16', value: -32768 },
  { key: 'u32', type: 'UINT32', value: 4294967295 },
  { key: 'i32', type: 'INT32', value: -2147483648 },
  { key: 'f32', type: 'FLOAT32', value: 1.5 },
  { key: 'bool.t', type: 'BOOL', value: true },
  { key: 'bool.f', type: 'BOOL', value: false },
  { key: 'str', type: 'STRING', value: 'héllo ▁ 🦙 "quoted"\n' },
  { key: 'str.empty', type: 'STRING', value: '' },
  { key: 'u64', type: 'UINT64', value: 2n ** 64n - 1n },
  { key: 'i64', type: 'INT64', value: -(2n ** 63n) },
  { key: 'f64', type: 'FLOAT64', value: Math.PI },
  { key: 'arr.u8', type: 'ARRAY', value: { type: 'UINT8', values: Uint8Array.of(0, 1, 255) } },
  { key: 'arr.i8', type: 'ARRAY', value: { type: 'INT8', values: Int8Array.of(-1, 127) } },
  { key: 'arr.u16', type: 'ARRAY', value: { type: 'UINT16', values: Uint16Array.of(65535) } },
  { key: 'arr.i16', type: 'ARRAY', value: { type: 'INT16', values: Int16Array.of(-2, 3) } },
  { key: 'arr.u32', type: 'ARRAY', value: { type: 'UINT32', values: Uint32Array.of(1, 2 ** 32 - 1) } },
  { key: 'arr.i32', type: 'ARRAY', value: { type: 'INT32', values: Int32Array.of(-5, 6) } },
  { key: 'arr.f32', type: 'ARRAY', value: { type: 'FLOAT32', values: Float32Array.of(0.25, -Infinity, Number.NaN) } },
  { key: 'arr.f64', type: 'ARRAY', value: { type: 'FLOAT64', values: Float64Array.of(1e300, -0) } },
  { key: 'arr.u64', type: 'ARRAY', value: { type: 'UINT64', values: BigUint64Array.of(0n, 2n ** 64n - 1n) } },
  { key: 'arr.i64', type: 'ARRAY', value: { type: 'INT64', values: BigInt64Array.of(-1n, 2n ** 63n - 1n) } },
  { key: 'arr.bool', type: 'ARRAY', value: { type: 'BOOL', values: [true, false, true] } },
  { key: 'arr.str', type: 'ARRAY', value: { type: 'STRING', values: ['a', '', '<0x0A>', '▁the'] } },
  { key: 'arr.empty', type: 'ARRAY', value: { type: 'FLOAT32', values: new Float32Array(0) } },
  {
    key: 'arr.nested', type: 'ARRAY', value: {
      type: 'ARRAY', values: [
        { type: 'INT32', values: Int32Array.of(1, 2) },
        { type: 'ARRAY', values: [{ type: 'STRING', values: ['deep'] }, { type: 'UINT64', values: BigUint64Array.of(7n) }] },
        { type: 'STRING', values: [] },
      ],
    },
  },
];

/** Values compared as data (typed arrays by kind and contents, NaN equal to NaN, -0 distinct). */
const plain = (v: unknown): unknown => {
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'number') return Object.is(v, -0) ? '-0' : Number.isNaN(v) ? 'NaN' : v;
  if (ArrayBuffer.isView(v)) return [(v as object).constructor.name, ...Array.from(v as unknown as ArrayLike<unknown>, plain)];
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
};

function tensorsFor(seed: number) {
  const r = rng(seed);
  const mk = (name: string, type: 'F32' | 'F16' | 'Q8_0' | 'I8', shape: number[]) => {
    const t = ggmlType(type)!;
    const bytes = new Uint8Array(ggmlBytes(t, [...shape].reverse())!);
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(r() * 256);
    return { name, type, shape, data: bytes };
  };
  return [mk('a.weight', 'F32', [3, 5]), mk('b', 'F16', [7]), mk('q.weight', 'Q8_0', [2, 64]), mk('empty', 'F32', [0, 4]), mk('i', 'I8', [2, 1, 3, 1]), mk('scalar', 'F32', [])];
}

for (const version of [2, 3] as const) {
  test(`v${version}: every value type (nested arrays too) and tensors round-trip through the writer and the reader`, async () => {
    const tensors = tensorsFor(version);
    const bytes = await encodeGguf({ version, metadata: EVERY_TYPE, tensors });
    const r = await open(bytes);
    assert.is(r.version, version);
    assert.is(r.alignment, 32);
    assert.equal(r.metadata.map((e) => [e.key, e.type, plain(e.value)]), EVERY_TYPE.map((e) => [e.key, e.type, plain(e.value)]));
    assert.is(r.value('u64'), 2n ** 64n - 1n);
    assert.instance((r.value('arr.u64') as { values: unknown }).values, BigUint64Array);
    assert.is(r.dataStart % 32, 0);
    assert.is(r.tensors.length, tensors.length);
    for (const [k, t] of r.tensors.entries()) {
      const want = tensors[k]!;
      assert.equal([t.name, t.typeName, t.shape, t.ne], [want.name, want.type, want.shape, [...want.shape].reverse()]);
      assert.is(t.offset % 32, 0);
      assert.is(t.begin, r.dataStart + t.offset);
      assert.equal(await r.read(t), want.data);
      // each pair's stored bytes are what encodeKV makes of it
      assert.equal(await r.rawKV(r.metadata[k]!), encodeKV(EVERY_TYPE[k]!));
    }
    assert.equal(r.get('q.weight')!.size, 2 * 34 * 2);
    // unchanged: the plan's header is the input's, and the whole file comes out byte for byte
    const plan = await planGgufFrom(r);
    assert.equal(plan.header, await r.headerBytes());
    assert.equal(await writeAll(plan, copyUnchanged(r)), bytes);
  });
}

async function writeAll(plan: GgufPlan, data: Parameters<typeof writeGguf>[2]): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  await writeGguf(plan, { write: (b) => void parts.push(b.slice()) }, data);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) (out.set(p, at), (at += p.length));
  assert.is(out.length, plan.fileSize);
  return out;
}

test('the writer pads as llama.cpp writes: zeros after the header and after every tensor (the last too), data at the alignment', async () => {
  const tensors = tensorsFor(5);
  const bytes = await encodeGguf({ metadata: [{ key: 'general.alignment', type: 'UINT32', value: 64 }], tensors });
  const r = await open(bytes);
  assert.is(r.alignment, 64);
  assert.is(r.dataStart % 64, 0);
  assert.ok(bytes.subarray(r.layout.infoEnd, r.dataStart).every((b) => b === 0));
  let at = 0;
  for (const t of r.tensors) {
    assert.is(t.offset, at);
    at = Math.ceil((t.offset + t.size) / 64) * 64;
    assert.ok(bytes.subarray(t.end, r.dataStart + at).every((b) => b === 0), `padding after ${t.name}`);
  }
  assert.is(bytes.length, r.dataStart + at);
});

test('verbatim copies keep string bytes that are not UTF-8 (read with U+FFFD) and the exact order', async () => {
  const bytes = raw({ kvs: [(r) => r.str('tok').u32(8).str(Uint8Array.of(0x61, 0xff, 0x62)), kvU32('z', 1), kvU32('a', 2)] });
  const r = await open(bytes);
  assert.is(r.value('tok'), 'a\ufffdb');
  const plan = await planGgufFrom(r);
  assert.equal(plan.header.subarray(0, bytes.length), bytes);
  assert.ok(plan.header.subarray(bytes.length).every((b) => b === 0));
});

test('a plan from a reader sets a pair in its place, adds new pairs last, removes pairs, and re-types tensors with new offsets', async () => {
  const tensors = tensorsFor(9);
  const bytes = await encodeGguf({ metadata: EVERY_TYPE.slice(0, 4), tensors });
  const r = await open(bytes);
  const plan = await planGgufFrom(r, {
    set: [{ key: 'i8', type: 'STRING', value: 'now a string' }, { key: 'adapter.lora.alpha', type: 'FLOAT32', value: 16 }],
    remove: ['u16'],
    types: { 'a.weight': 'F16' },
  });
  const a = plan.tensors.find((t) => t.name === 'a.weight')!;
  assert.equal([a.typeName, a.size, a.changed], ['F16', 30, true]);
  const newA = new Uint8Array(30).fill(9);
  const out = await writeAll(plan, copyUnchanged(r, (t) => (t.name === 'a.weight' ? newA : new Uint8Array(0))));
  const back = await open(out);
  assert.equal(back.metadata.map((e) => e.key), ['u8', 'i8', 'i16', 'adapter.lora.alpha']);
  assert.is(back.value('i8'), 'now a string');
  assert.equal(await back.rawKV('i16'), await r.rawKV('i16'));
  assert.equal(await back.read('a.weight'), newA);
  for (const t of r.tensors.slice(1)) assert.equal(await back.read(t.name), await r.read(t), t.name);
  await assertRejectsTyped(() => planGgufFrom(r, { types: { nope: 'F16' } }), LoRAFormatError, ['nope']);
  await assertRejectsTyped(() => planGgufFrom(r, { types: { 'q.weight': 'Q4_K' } }), LoRAFormatError, ['q.weight', '256']);
  await assertRejectsTyped(() => writeAll(plan, copyUnchanged(r)), LoRAFormatError, ['a.weight', 'no bytes']);
});

test('the writer refuses values that do not fit their type, bad names and shapes, with LoRAFormatError', () => {
  const bad: [GgufKV, string][] = [
    [{ key: 'k', type: 'UINT8', value: 256 }, 'UINT8'],
    [{ key: 'k', type: 'INT32', value: 1.5 }, 'INT32'],
    [{ key: 'k', type: 'UINT64', value: -1n }, 'UINT64'],
    [{ key: 'k', type: 'BOOL', value: 1 }, 'BOOL'],
    [{ key: 'k', type: 'STRING', value: '\ud800' }, 'surrogate'],
    [{ key: '', type: 'UINT8', value: 1 }, 'non-empty'],
    [{ key: 'k', type: 'ARRAY', value: [1, 2] as never }, 'ARRAY'],
    [{ key: 'k', type: 'ARRAY', value: { type: 'UINT8', values: [1, 300] } as never }, '("k")[1]'],
    [{ key: 'k', type: 'NOPE' as never, value: 1 }, 'unknown value type'],
  ];
  for (const [kv, word] of bad) assertThrowsFormat(() => planGguf({ metadata: [kv], tensors: [] }), word);
  let nest: unknown = { type: 'UINT8', values: [] };
  for (let i = 0; i <= MAX_NESTING; i++) nest = { type: 'ARRAY', values: [nest] };
  assertThrowsFormat(() => planGguf({ metadata: [{ key: 'deep', type: 'ARRAY', value: nest as never }], tensors: [] }), 'nested');
  assertThrowsFormat(() => planGguf({ metadata: [kv('a'), kv('a')], tensors: [] }), 'twice');
  assertThrowsFormat(() => planGguf({ metadata: [{ key: 'general.alignment', type: 'UINT32', value: 24 }], tensors: [] }), 'power of two');
  assertThrowsFormat(() => planGguf({ metadata: [], tensors: [{ name: 'x', type: 'Q8_0', shape: [2, 33] }] }), '32');
  assertThrowsFormat(() => planGguf({ metadata: [], tensors: [{ name: 'x', type: 'F32', shape: [1, 1, 1, 1, 1] }] }), 'at most 4');
  assertThrowsFormat(() => planGguf({ metadata: [], tensors: [{ name: 'x'.repeat(64), type: 'F32', shape: [1] }] }), '64 bytes');
  assertThrowsFormat(() => planGguf({ metadata: [], tensors: [{ name: 'x', type: 4 as never, shape: [1] }] }), 'unknown ggml type');
  assertThrowsFormat(() => planGguf({ metadata: [], tensors: [{ name: 'x', type: 'F32', shape: [1] }, { name: 'x', type: 'F32', shape: [1] }] }), 'twice');
});
/** The items of a STRING array value. */
function strings(r: GgufReader, key: string): readonly string[] {
  const v = r.value(key);
  if (typeof v !== 'object' || v.type !== 'STRING') throw new Error(`${key} is not a STRING array`);
  return v.values;
}
const kv = (key: string): GgufKV => ({ key, type: 'UINT8', value: 1 });
function assertThrowsFormat(fn: () => unknown, word: string): void {
  try {
    fn();
  } catch (e) {
    assert.instance(e, LoRAFormatError, (e as Error).stack);
    assert.ok((e as Error).message.includes(word), `"${(e as Error).message}" should mention "${word}"`);
    return;
  }
  assert.unreachable(`accepted input that should fail with ${word}`);
}

// ---- reading: streaming, sources, wasm memory -----------------------------------------------

test('a header larger than the read chunk (a 2 MB vocabulary) is read in pieces, from bytes and from a Blob', async () => {
  const tokens = Array.from({ length: 120_000 }, (_, i) => `tok${i}_${'x'.repeat(i % 7)}`);
  const bytes = await encodeGguf({ metadata: [{ key: 'tokenizer.ggml.tokens', type: 'ARRAY', value: { type: 'STRING', values: tokens } }, kv('after')], tensors: tensorsFor(3) });
  assert.ok(bytes.length > 2_000_000);
  for (const r of [await open(bytes), await GgufReader.open(blobSource(new Blob([bytes as BlobPart]), FILE))]) {
    assert.equal(strings(r, 'tokenizer.ggml.tokens'), tokens);
    assert.is(r.value('after'), 1);
    assert.equal(await r.read('q.weight'), tensorsFor(3)[2]!.data);
  }
});

test('readInto reads a tensor straight into wasm memory at an offset; a short target is a LoRAShapeError', async () => {
  const tensors = tensorsFor(4);
  const r = await GgufReader.open(blobSource(new Blob([(await encodeGguf({ metadata: [], tensors })) as BlobPart]), FILE));
  const memory = new WebAssembly.Memory({ initial: 1 });
  const t = r.get('a.weight')!;
  const target = new Uint8Array(memory.buffer, 1000, t.size + 8);
  await r.readInto(t, target);
  assert.equal(target.slice(0, t.size), tensors[0]!.data);
  assert.ok(target.subarray(t.size).every((b) => b === 0), 'nothing past the tensor');
  await assertRejectsTyped(() => r.readInto(t, new Uint8Array(t.size - 1)), LoRAShapeError, ['a.weight', String(t.size)]);
});

// ---- malformed files ------------------------------------------------------------------------

test('bad magic, versions 0, 1, 4 and a big-endian file are refused', async () => {
  await rejects(Uint8Array.of(0x47, 0x47), ['magic']);
  await rejects(new TextEncoder().encode('GGML\x03\0\0\0'), ['magic', 'GGML']);
  for (const v of [0, 1, 4]) await rejects(raw({ version: v }), ['version', String(v)]);
  await rejects(raw({ version: 0x03000000 }), ['big-endian']);
  await rejects(new TextEncoder().encode('GGUF\x03\0\0\0\0\0'), ['counts']);
});

test('counts, lengths and array sizes larger than the file are refused before anything is allocated', async () => {
  await rejects(raw({ nTensors: 2n ** 62n }), ['tensors', 'do not fit']);
  await rejects(raw({ nKV: 2n ** 40n }), ['key-value', 'do not fit']);
  await rejects(raw({ nTensors: -1n }), ['tensor count', 'negative']);
  await rejects(raw({ nKV: 2n ** 63n }), ['key-value count', 'negative']);
  await rejects(raw({ kvs: [(r) => r.u64(2n ** 60n)], data: 16 }), ['metadata 0: key', 'do not fit']);
  await rejects(raw({ kvs: [(r) => r.str('s').u32(8).u64(2n ** 64n - 1n)] }), ['metadata 0 ("s")', 'do not fit']);
  await rejects(raw({ kvs: [(r) => r.str('a').u32(9).u32(6).u64(2n ** 62n)] }), ['"a"', 'array count', 'FLOAT32']);
  await rejects(raw({ kvs: [(r) => r.str('a').u32(9).u32(8).u64(2n ** 61n)] }), ['"a"', 'strings']);
  await rejects(raw({ kvs: [(r) => r.str('a').u32(9).u32(9).u64(1000)] }), ['"a"', 'arrays']);
  await rejects(raw({ kvs: [(r) => r.str('a').u32(9).u32(8).u64(2).str('x').u64(99)] }), ['("a")[1]', 'do not fit']);
});

test('nesting bombs: arrays nested past the limit are refused; wide nesting is bounded by the file', async () => {
  const deep = (levels: number) => (r: Raw) => {
    r.str('bomb').u32(9);
    for (let i = 0; i < levels; i++) r.u32(9).u64(1);
    r.u32(0).u64(0);
  };
  // deep(n) is n + 1 arrays, one inside the other
  assert.is((await open(raw({ kvs: [deep(MAX_NESTING - 1)] }))).metadata.length, 1);
  await rejects(raw({ kvs: [deep(MAX_NESTING)] }), ['"bomb"', 'nested more than 16']);
  await rejects(raw({ kvs: [deep(100_000)] }), ['"bomb"', 'nested']);
});

test('a header that decodes into more memory than the file holds (a million empty arrays, ten million bools) is refused up front', async () => {
  // key "wide": an ARRAY of n items of item type `item`, each `each` bytes (empty arrays: u32 type 0 + u64 count 0)
  const wide = (item: number, n: number, each: number) => {
    const head = raw({ kvs: [(r) => r.str('wide').u32(9).u32(item).u64(n)] });
    const out = new Uint8Array(head.length + n * each); // zeros: empty UINT8 arrays, or false bools
    out.set(head);
    return out;
  };
  await rejects(wide(9, 1_000_000, 12), ['"wide"', 'more than', 'MiB in memory']);
  await rejects(wide(7, 12_000_000, 1), ['"wide"', 'more than', 'MiB in memory']);
  assert.is((await open(wide(7, 1000, 1))).metadata.length, 1, 'a small bool array still reads');
});

test('unknown value types, bad bools, empty, duplicate and non-UTF-8 keys are refused', async () => {
  await rejects(raw({ kvs: [(r) => r.str('t').u32(13).u32(0)] }), ['metadata 0 ("t")', 'unknown value type 13']);
  await rejects(raw({ kvs: [(r) => r.str('t').u32(0xffffffff)], data: 1 }), ['unknown value type 4294967295']);
  await rejects(raw({ kvs: [(r) => r.str('t').u32(9).u32(42).u64(0)] }), ['array item type', '42']);
  await rejects(raw({ kvs: [(r) => r.str('b').u32(7).u8(2)] }), ['"b"', 'bool', '2']);
  await rejects(raw({ kvs: [(r) => r.str('b').u32(9).u32(7).u64(2).u8(1).u8(5)] }), ['("b")[1]', 'bool']);
  await rejects(raw({ kvs: [(r) => r.str('').u32(0).u8(1)], data: 1 }), ['metadata 0', 'empty']);
  await rejects(raw({ kvs: [kvU32('dup', 1), kvU32('x', 1), kvU32('dup', 2)] }), ['metadata 2 ("dup")', 'twice', 'metadata 0']);
  await rejects(raw({ kvs: [(r) => r.str(Uint8Array.of(0x6b, 0xc3)).u32(0).u8(1)] }), ['metadata 0: key', 'UTF-8']);
});

test('general.alignment must be a UINT32 power of two', async () => {
  await rejects(raw({ kvs: [(r) => r.str('general.alignment').u32(10).u64(32)] }), ['general.alignment', 'UINT32', 'UINT64']);
  for (const a of [0, 3, 48]) await rejects(raw({ kvs: [kvU32('general.alignment', a)] }), ['general.alignment', 'power of two']);
  const r = await open(raw({ kvs: [kvU32('general.alignment', 8)], infos: [info('t', [2], 0, 0)], align: 8, data: 8 }));
  assert.equal([r.alignment, r.dataStart % 8], [8, 0]);
});

test('tensor infos: names, n_dims, ne, types, block sizes, offsets, bounds and overlaps are checked', async () => {
  const T = (i: (r: Raw) => void, data = 64, more: ((r: Raw) => void)[] = []) => raw({ infos: [i, ...more], data });
  await rejects(T(info('w', [5, 1, 1, 1, 1], 0, 0)), ['tensor 0 ("w")', 'n_dims is 5']);
  await rejects(T(info('w', [4, -1n], 0, 0)), ['"w"', 'ne[1] is negative']);
  await rejects(T(info('w', [2n ** 53n, 1], 0, 0)), ['"w"', 'ne[0]', '2^53']);
  await rejects(T(info('w', [2n ** 30n, 2n ** 30n], 0, 0)), ['"w"', 'elements', '2^53']);
  await rejects(T(info('blk.0.attn_q.weight', [32, 2], 4, 0)), ['"blk.0.attn_q.weight"', 'ggml type 4', 'removed']);
  await rejects(T(info('w', [32], 99, 0)), ['"w"', 'ggml type 99', 'unknown']);
  await rejects(T(info('w', [32], -1, 0)), ['ggml type -1']);
  await rejects(T(info('w', [33, 2], 8, 0)), ['"w"', 'ne[0] = 33', 'Q8_0', '32']);
  await rejects(T(info('blk.0.attn_q.weight', [4], 0, 1234)), ['tensor 0 ("blk.0.attn_q.weight"): offset 1234 is not a multiple of the alignment 32']);
  await rejects(T(info('w', [32], 0, 32)), ['"w"', 'reach past the end', '128 bytes at offset 32']);
  await rejects(T(info('w', [4], 0, 2n ** 63n)), ['"w"', 'reach past the end']);
  await rejects(T(info('a', [16], 0, 0), 128, [info('b', [4], 0, 32)]), ['tensor 1 ("b")', 'overlap', 'tensor 0 ("a")']);
  await rejects(T(info('a', [4], 0, 0), 64, [info('a', [4], 0, 32)]), ['tensor 1 ("a")', 'twice', 'tensor 0']);
  await rejects(T(info('n'.repeat(64), [4], 0, 0)), ['tensor 0', '64 bytes', '63']);
  await rejects(T(info('', [4], 0, 0), 64, [(r) => r.u64(3).bytes([0x61, 0xff, 0x62])]), ['tensor 1: name', 'UTF-8']);
  // the data section must start inside the file, and zero-size tensors are fine anywhere aligned
  await rejects(raw({ infos: [info('w', [0], 0, 0)] }).subarray(0, 24 + 9 + 4 + 8 + 4 + 8 + 1), ['data section', 'byte 64']);
  const ok = await open(T(info('e', [0, 3], 0, 0), 32, [info('f', [8], 0, 0)]));
  assert.equal(ok.tensors.map((t) => [t.name, t.size, t.shape]), [['e', 0, [3, 0]], ['f', 32, [8]]]);
});

test('a file cut at any byte before the end of its last tensor is refused with LoRAFormatError; after it, read', async () => {
  const bytes = await encodeGguf({ version: 3, metadata: EVERY_TYPE, tensors: tensorsFor(11) });
  const r = await open(bytes);
  const lastEnd = Math.max(...r.tensors.map((t) => t.end));
  for (let n = 0; n < bytes.length; n++) {
    const cut = bytes.subarray(0, n);
    if (n < lastEnd) {
      await assertRejectsTyped(() => open(cut), LoRAFormatError, [FILE]);
    } else {
      assert.is((await open(cut)).tensors.length, r.tensors.length);
    }
  }
});

test('a fuzz of bit flips, byte changes and random headers never throws anything but LoRAFormatError', async () => {
  const bytes = await encodeGguf({ metadata: EVERY_TYPE, tensors: tensorsFor(12) });
  const r = (await open(bytes)).dataStart;
  const random = rng(2024);
  for (let k = 0; k < 3000; k++) {
    const b = bytes.slice();
    const flips = 1 + Math.floor(random() * 4);
    for (let f = 0; f < flips; f++) {
      const at = Math.floor(random() * r);
      if (random() < 0.5) b[at] = b[at]! ^ (1 << Math.floor(random() * 8));
      else b[at] = [0, 0xff, 0x7f, 0x80, 9, 8][Math.floor(random() * 6)]!;
    }
    try {
      const g = await open(b);
      for (const t of g.tensors) await g.read(t);
    } catch (e) {
      if (!(e instanceof LoRAFormatError)) assert.unreachable(`case ${k}: ${(e as Error).stack}`);
      assert.not.ok((e as Error).message.includes('\n'));
    }
  }
});

// ---- the real thing: llama.cpp --------------------------------------------------------------

type Llama = Awaited<ReturnType<typeof import('node-llama-cpp')['getLlama']>>;
let llama: Promise<Llama> | undefined;
const dir = mkdtempSync(join(tmpdir(), 'lora-wasm-gguf-'));

/** Loads `bytes` in llama.cpp, evaluates a few tokens, returns the full next-token distribution. */
async function nextTokenDistribution(bytes: Uint8Array, name: string, adapter?: Uint8Array): Promise<Map<number, number>> {
  const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
  llama ??= getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  const path = join(dir, name);
  writeFileSync(path, bytes);
  const model = await (await llama).loadModel({ modelPath: path });
  try {
    const lora = adapter && { adapters: [{ filePath: join(dir, `${name}.lora.gguf`), scale: 1 }] };
    if (adapter) writeFileSync(lora!.adapters[0]!.filePath, adapter);
    const context = await model.createContext({ contextSize: 64, ...(lora && { lora }) });
    try {
      const tokens = model.tokenize('the a');
      const out = await context.getSequence().controlledEvaluate([
        ...tokens.slice(0, -1),
        [tokens.at(-1)!, { generateNext: { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } } }],
      ]);
      return out.at(-1)!.next.probabilities! as Map<number, number>;
    } finally {
      await context.dispose();
    }
  } finally {
    await model.dispose();
  }
}

function assertDistribution(p: Map<number, number>, vocab: number, label: string): void {
  assert.is(p.size, vocab, `${label}: a probability for every token`);
  let sum = 0;
  for (const v of p.values()) {
    assert.ok(Number.isFinite(v) && v >= 0, `${label}: ${v}`);
    sum += v;
  }
  assert.ok(Math.abs(sum - 1) < 1e-4, `${label}: sums to ${sum}`);
}

for (const type of ['F32', 'F16', 'BF16'] as const) {
  test(`llama.cpp loads and runs a tiny llama with ${type} weights written by our writer; our reader re-reads it exactly`, async () => {
    const m = await tinyLlama({ type, seed: 7, layers: 2, version: type === 'BF16' ? 2 : 3 });
    assertDistribution(await nextTokenDistribution(m.bytes, `tiny-${type}.gguf`), m.config.vocab, type);
    const r = await open(m.bytes);
    assert.is(r.value('general.architecture'), 'llama');
    assert.equal(strings(r, 'tokenizer.ggml.tokens'), m.tokens);
    assert.is(r.tensors.length, m.tensors.length);
    for (const [k, t] of r.tensors.entries()) assert.equal([t.name, t.typeName, t.shape], [m.tensors[k]!.gguf, m.tensors[k]!.type, m.tensors[k]!.shape]);
    const plan = await planGgufFrom(r);
    assert.equal(plan.header, await r.headerBytes());
    assert.equal(await writeAll(plan, copyUnchanged(r)), m.bytes);
    // the f32 weights returned are the stored values, q/k rows in Hugging Face order: within each
    // head of d rows, stored row 2i + j is Hugging Face row j·d/2 + i (LlamaModel.permute)
    const q = r.get('blk.1.attn_q.weight')!;
    const hfQ = m.hf.get('model.layers.1.self_attn.q_proj.weight')!;
    assert.equal([q.shape, hfQ.shape], [[64, 64], [64, 64]]);
    const stored = m.tensors[q.index]!.values;
    const d = m.config.headDim;
    for (const [row, hfRow] of [[0, 0], [1, d / 2], [2, 1], [d + 3, d + d / 2 + 1]] as const) {
      assert.equal(stored.subarray(row * 64, row * 64 + 64), hfQ.data.subarray(hfRow * 64, hfRow * 64 + 64), `row ${row}`);
    }
    if (type === 'F32') {
      const b = await r.read(q);
      assert.equal(new Float32Array(b.slice().buffer), stored);
    }
  });
}

test('a model re-typed by a plan (F32 matrices → F16) still loads and runs in llama.cpp', async () => {
  const m = await tinyLlama({ seed: 3 });
  const r = await open(m.bytes);
  const types = new Map(r.tensors.filter((t) => t.shape.length === 2).map((t) => [t.name, 'F16' as const]));
  const f16 = await tinyLlama({ seed: 3, type: 'F16' });
  const f16Reader = await open(f16.bytes);
  const plan = await planGgufFrom(r, { types, set: [{ key: 'general.name', type: 'STRING', value: 'retyped' }] });
  const out = await writeAll(plan, copyUnchanged(r, (t) => f16Reader.read(t.name)));
  const back = await open(out);
  assert.is(back.value('general.name'), 'retyped');
  assert.equal(back.tensors.map((t) => t.typeName), f16Reader.tensors.map((t) => t.typeName));
  assertDistribution(await nextTokenDistribution(out, 'retyped.gguf'), m.config.vocab, 'retyped');
});

test('llama.cpp applies a LoRA adapter written by our writer: B = 0 leaves the distribution exactly, B ≠ 0 changes it', async () => {
  const m = await tinyLlama({ seed: 5 });
  const base = await nextTokenDistribution(m.bytes, 'adapter-base.gguf');
  const random = rng(6);
  const r = 4;
  const adapter = (zeroB: boolean) => {
    const tensors = [];
    for (const name of ['blk.0.attn_q.weight', 'blk.1.ffn_down.weight']) {
      const [out, inn] = m.tensors.find((t) => t.gguf === name)!.shape as [number, number];
      const a = Float32Array.from({ length: r * inn }, () => random() - 0.5);
      const b = Float32Array.from({ length: out * r }, () => (zeroB ? 0 : random() - 0.5));
      // lora_a ne [in, r] (shape [r, in]), lora_b ne [r, out] (shape [out, r])
      tensors.push({ name: `${name.slice(0, -'.weight'.length)}.weight.lora_a`, type: 'F32' as const, shape: [r, inn], data: a });
      tensors.push({ name: `${name.slice(0, -'.weight'.length)}.weight.lora_b`, type: 'F32' as const, shape: [out, r], data: b });
    }
    return encodeGguf({
      metadata: [
        { key: 'general.architecture', type: 'STRING', value: 'llama' },
        { key: 'general.type', type: 'STRING', value: 'adapter' },
        { key: 'adapter.type', type: 'STRING', value: 'lora' },
        { key: 'adapter.lora.alpha', type: 'FLOAT32', value: r },
      ],
      tensors,
    });
  };
  const zero = await nextTokenDistribution(m.bytes, 'adapter-zero.gguf', await adapter(true));
  assert.equal([...zero], [...base], 'B = 0: the same distribution');
  const moved = await nextTokenDistribution(m.bytes, 'adapter-moved.gguf', await adapter(false));
  assertDistribution(moved, m.config.vocab, 'adapter');
  assert.ok([...moved].some(([k, v]) => Math.abs(v - base.get(k)!) > 1e-6), 'B ≠ 0 changes the distribution');
});

test.after(async () => {
  if (llama) await (await llama).dispose();
  rmSync(dir, { recursive: true, force: true });
});

test.run();
