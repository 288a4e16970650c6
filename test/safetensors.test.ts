// safetensors: the strict reader against a real file written by the reference implementation, every
// malformed case the reference rejects, a fuzz of truncated and bit-flipped files, and the writer
// (byte-identical to the reference writer on the same tensors).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRAFormatError } from '../src/index.js';
import { SafetensorsReader, encodeSafetensors, isEmptyShape, planSafetensors, tensorData } from '../src/io/safetensors.js';
import { bytesSource } from '../src/io/source.js';
import { assertRejectsTyped, assertResolves, assertThrowsTyped, rng } from './helpers.js';
import { FIXTURE_ADAPTER, readFixture, readLocalFixture } from './fixtures.js';

const enc = new TextEncoder();
/** A file from a header object (or raw header text) and data bytes. */
function file(header: unknown, data: Uint8Array = new Uint8Array(0), rawLength?: bigint): Uint8Array {
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const body = enc.encode(text);
  const out = new Uint8Array(8 + body.length + data.length);
  new DataView(out.buffer).setBigUint64(0, rawLength ?? BigInt(body.length), true);
  out.set(body, 8);
  out.set(data, 8 + body.length);
  return out;
}
const open = (bytes: Uint8Array, name = 'test.safetensors') => SafetensorsReader.open(bytesSource(bytes, name));

async function rejects(bytes: Uint8Array, words: string[]): Promise<void> {
  try {
    const r = await open(bytes);
    for (const t of r.tensors) await r.read(t.name);
  } catch (e) {
    assert.instance(e, LoRAFormatError, (e as Error).message);
    assert.not.ok((e as Error).message.includes('\n'), `one line: ${JSON.stringify((e as Error).message)}`);
    for (const w of ['test.safetensors', ...words]) assert.ok((e as Error).message.includes(w), `"${(e as Error).message}" should mention "${w}"`);
    return;
  }
  assert.unreachable(`accepted a file that should fail with ${words.join(', ')}`);
}

test('reads the real PEFT adapter (written by the reference implementation): names, dtypes, shapes, metadata, values', async () => {
  const bytes = await readFixture(FIXTURE_ADAPTER);
  if (!bytes) return; // the fixture travels with CI's shared/ folder; see test/fixtures.ts
  const r = await open(bytes, 'adapter_model.safetensors');
  assert.is(bytes.length, 2962192);
  assert.is(r.dataStart, 8 + 3840);
  assert.equal({ ...r.metadata }, { format: 'pt' });
  assert.is(Object.getPrototypeOf(r.metadata), null);
  assert.is(r.tensors.length, 28);
  const q = r.get('base_model.model.distilbert.transformer.layer.0.attention.q_lin.lora_A.weight')!;
  assert.equal([q.dtype, q.shape], ['F32', [8, 768]]);
  assert.equal(r.get('base_model.model.distilbert.transformer.layer.5.attention.v_lin.lora_B.weight')!.shape, [768, 8]);
  assert.equal(r.get('base_model.model.classifier.bias')!.shape, [2]);
  const data = tensorData(r.file, await r.read('base_model.model.classifier.bias')) as Float32Array;
  assert.instance(data, Float32Array);
  assert.is(data.buffer, bytes.buffer, 'aligned: a view, not a copy');
  assert.ok(data.every((v) => Number.isFinite(v)));
});

test('the writer reproduces the reference writer byte for byte (order, offsets, padding)', async () => {
  const bytes = await readFixture(FIXTURE_ADAPTER);
  if (!bytes) return;
  const r = await open(bytes, 'adapter_model.safetensors');
  const tensors = await Promise.all(r.tensors.map(async (t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: (await r.read(t.name)).bytes })));
  rng(1)(); // tensors in a shuffled order must come out the same
  const shuffled = [...tensors].reverse();
  const again = encodeSafetensors(shuffled, { format: 'pt' });
  assert.is(again.length, bytes.length);
  assert.ok(again.every((b, i) => b === bytes[i]), 'identical bytes');
});

test('the writer pads the header to 8 bytes and orders by dtype (reference enum order, descending), then name', async () => {
  const t = (name: string, dtype: string, n: number) => ({ name, dtype, shape: [n], data: new Uint8Array(n * (dtype === 'F32' ? 4 : 2)) });
  const out = encodeSafetensors([t('b', 'F16', 3), t('a', 'F16', 1), t('z', 'F32', 2), t('m', 'BF16', 5)]);
  const n = Number(new DataView(out.buffer).getBigUint64(0, true));
  assert.is(n % 8, 0, 'header padded');
  const r = await open(out);
  assert.equal(r.tensors.map((x) => x.name), ['z', 'm', 'a', 'b'], 'F32, then BF16, then F16 by name');
  assert.equal(r.tensors.map((x) => [x.begin, x.end]), [[0, 8], [8, 18], [18, 20], [20, 26]]);
});

test('every malformed file is a LoRAFormatError that names the file and the key', async () => {
  const ok = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const d8 = new Uint8Array(8);
  await rejects(new Uint8Array(7), ['7 bytes', '8-byte header length']);
  await rejects(file(ok, d8, 100_000_001n), ['100000001 bytes', 'limit']);
  await rejects(file(ok, d8, 5000n), ['header length is 5000', 'only']);
  await rejects(file(ok, d8, 2n ** 63n), ['limit']);
  const bad = file('{"a": 1}', d8);
  bad[9] = 0xff; // not UTF-8
  await rejects(bad, ['not valid UTF-8']);
  await rejects(file('{"a": ', d8), ['not valid JSON']);
  await rejects(file('[1, 2]'), ['not a JSON object']);
  await rejects(file({ __metadata__: { format: 1 }, ...ok }, d8), ['"__metadata__"."format" must be a string']);
  await rejects(file({ __metadata__: ['x'], ...ok }, d8), ['"__metadata__" must be an object of strings']);
  await rejects(file({ a: { dtype: 'F99', shape: [2], data_offsets: [0, 8] } }, d8), ['"a"', 'unknown dtype "F99"']);
  await rejects(file({ a: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, d8), ['"a" has a bad shape', 'shape[0] must be a non-negative integer, got -2']);
  await rejects(file({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 12] } }, new Uint8Array(12)), ['"a"', '(8 bytes)', 'hold 12']);
  await rejects(file({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, d8), ['gap before "a"']);
  await rejects(file({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, d8), ['"b" overlaps']);
  await rejects(file(ok, new Uint8Array(12)), ['end at byte 8', 'holds 12 data bytes']);
  await rejects(file('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', d8), ['the key "a" appears twice in the header']);
  await rejects(file({ a: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }, d8), ['"a" has bad data_offsets [8, 0]', 'end before they begin']);
  await rejects(file({ a: 'x' }, d8), ['"a" must be an object']);
  // a known but unsupported dtype is read, then named when its values are asked for
  const r = await open(file({ i: { dtype: 'I64', shape: [1], data_offsets: [0, 8] } }, d8));
  assertThrowsTyped(() => tensorData(r.file, { info: r.tensors[0]!, bytes: d8 }), LoRAFormatError, ['"i" is I64', 'F32, F16 and BF16']);
  await assertResolves(open(file(ok, d8)), 'the valid file');
});

test('every committed malformed file (test/fixtures/adapters/malformed) is a LoRAFormatError with its expected words', async () => {
  const expected = await readLocalFixture('adapters/malformed/expected.json');
  if (!expected) return;
  const cases = JSON.parse(new TextDecoder().decode(expected)) as Record<string, string[]>;
  assert.ok(Object.keys(cases).length >= 14);
  for (const [file, words] of Object.entries(cases)) {
    const bytes = (await readLocalFixture(`adapters/malformed/${file}`))!;
    try {
      await SafetensorsReader.open(bytesSource(bytes, file));
      assert.unreachable(`${file} was accepted`);
    } catch (e) {
      assert.instance(e, LoRAFormatError, `${file}: ${(e as Error).message}`);
      for (const w of [file, ...words]) assert.ok((e as Error).message.includes(w), `${file}: "${(e as Error).message}" should mention "${w}"`);
    }
  }
});

test('fuzz: truncated and bit-flipped files fail only with LoRAFormatError, reading nothing outside the file', async () => {
  const base = (await readFixture(FIXTURE_ADAPTER))?.subarray(0, 4096 + 8) ?? encodeSafetensors([{ name: 'w', dtype: 'F32', shape: [4, 4], data: new Float32Array(16) }]);
  // a small valid file to mutate: the fixture's header with its first tensor, or a generated one
  const small = await (async () => {
    const full = await readFixture(FIXTURE_ADAPTER);
    if (!full) return base;
    const r = await open(full);
    const first = r.tensors.slice(0, 3);
    return encodeSafetensors(await Promise.all(first.map(async (t) => ({ ...t, data: (await r.read(t.name)).bytes }))), { format: 'pt' });
  })();
  const g = rng(77);
  let failures = 0;
  const tryOpen = async (bytes: Uint8Array): Promise<void> => {
    let reads = 0;
    const src = bytesSource(bytes, 'test.safetensors');
    const spy = { ...src, read: (o: number, l: number) => { reads++; assert.ok(o >= 0 && l >= 0 && o + l <= bytes.length, `read ${l} at ${o} stays inside the ${bytes.length}-byte file`); return src.read(o, l); } };
    try {
      const r = await SafetensorsReader.open(spy);
      for (const t of r.tensors) await r.read(t.name);
    } catch (e) {
      if (!(e instanceof LoRAFormatError)) assert.unreachable(`${(e as Error).name}: ${(e as Error).message}`);
      failures++;
    }
    assert.ok(reads <= 3 + small.length, 'bounded reads');
  };
  for (let cut = 0; cut < small.length; cut += Math.max(1, Math.floor(small.length / 400))) await tryOpen(small.subarray(0, cut));
  for (let i = 0; i < 1500; i++) {
    const m = small.slice();
    const at = i < 1000 ? Math.floor(g() * Math.min(m.length, 400)) : Math.floor(g() * m.length); // mostly the length and header
    m[at]! ^= 1 << Math.floor(g() * 8);
    await tryOpen(m);
  }
  assert.ok(failures > 400, `${failures} mutated files were rejected`);
});

const f32 = (n: number) => new Uint8Array(4 * n);
/** One tensor's entry; a string shape or offsets goes in as raw JSON text. */
const raw = (x: unknown): string => (typeof x === 'string' ? x : JSON.stringify(x));
const entry = (shape: unknown, offsets: unknown, dtype = 'F32') => `{"dtype":"${dtype}","shape":${raw(shape)},"data_offsets":${raw(offsets)}}`;

test('a byte-order mark before the header is refused, as the reference refuses it (serde_json reads no BOM)', async () => {
  await rejects(file('\uFEFF{}'), ['not valid JSON', 'character 0']);
});

test('"__metadata__": null is no metadata (the reference reads Option<HashMap>)', async () => {
  const r = await assertResolves(open(file({ __metadata__: null, a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, f32(1))), '__metadata__ null');
  assert.equal(Object.keys(r.metadata), []);
  assert.equal(r.tensors.map((t) => t.name), ['a']);
  await rejects(file({ __metadata__: 'x', a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, f32(1)), ['"__metadata__" must be an object of strings (or null), got "x"']);
});

test('shape and data_offsets must be integer literals: 4.0, 0.5, 1e0, -1 and -0 are refused, naming the tensor and the field', async () => {
  // JSON.parse reads 4.0 as 4; the reference's usize fields refuse any literal that is not an integer
  await rejects(file(`{"a":${entry([1], '[0, 4.0]')}}`, f32(1)), ['"a" has bad data_offsets', 'data_offsets[1] must be a non-negative integer, got 4.0']);
  await rejects(file(`{"a":${entry([1], '[0.5, 4.5]')}}`, f32(1)), ['"a" has bad data_offsets', 'data_offsets[0]', 'got 0.5']);
  await rejects(file(`{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}`, f32(1)), ['"a" has a bad shape', 'shape[0] must be a non-negative integer, got 1.0']);
  await rejects(file(`{"a":{"dtype":"F32","shape":[2, 1e0],"data_offsets":[0,8]}}`, f32(2)), ['"a"', 'shape[1]', 'got 1e0']);
  await rejects(file(`{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}`), ['"a"', 'shape[0]', 'got -0']);
  await rejects(file(`{"a":${entry([1], [-4, 4])}}`, f32(1)), ['"a" has bad data_offsets', 'got -4']);
  await rejects(file(`{"a":${entry([1], '["0", 4]')}}`, f32(1)), ['"a" has bad data_offsets', 'got "0"']);
  await rejects(file(`{"a":${entry(2, [0, 8])}}`, f32(2)), ['"a" has a bad shape', 'list of non-negative integers, got 2']);
  await rejects(file(`{"a":${entry([1], [0, 4, 8])}}`, f32(1)), ['"a" has bad data_offsets', 'must be [begin, end], got [0, 4, 8]']);
  await rejects(file(`{"a":${entry([1], '[0, 18446744073709551616]')}}`, f32(1)), ['"a"', 'more than 2^64 − 1']);
  await rejects(file(`{"a":{"dtype":"F32","data_offsets":[0,4]}}`, f32(1)), ['"a" has no shape']);
});

test('an element count that overflows usize is refused as the reference\'s checked_mul refuses it, even when a later dimension is 0', async () => {
  const max = Number.MAX_SAFE_INTEGER;
  await rejects(file({ a: { dtype: 'F32', shape: [max, max, 0], data_offsets: [0, 0] } }), ['"a" has a bad shape [9007199254740991, 9007199254740991, 0]', 'overflows']);
  await rejects(file(`{"a":${entry('[4294967296, 4294967296, 0]', [0, 0], 'U8')}}`), ['"a"', 'overflows']); // 2^64: one past usize
  await rejects(file(`{"a":${entry('[0, 18446744073709551615]', [0, 0], 'F32')}}`), ['"a"', 'lora-wasm does not read']); // valid, but past 2^53
  // within usize at every step, then 0: valid in the reference, so valid here
  const r = await assertResolves(open(file(`{"a":${entry('[1073741824, 1073741824, 0]', [0, 0])},"b":${entry([1], [0, 4])}}`, f32(1))), '2^60 then 0');
  assert.equal(r.get('a')!.shape, [2 ** 30, 2 ** 30, 0]);
  await rejects(file(`{"a":${entry('[100000000000000, 100000000000000, 100000000000000, 0]', [0, 0])}}`), ['"a"', 'overflows']); // 10^28 on the way to 0
  // the byte count, not only the element count: 2^62 F32 elements are 2^64 bytes
  await rejects(file(`{"a":${entry('[4611686018427387904]', [0, 0])}}`), ['"a"', 'overflows']);
});

test('zero-size tensors ([0], [0, 4], [4, 0]) are read with begin = end, between others', async () => {
  const h = `{"e0":${entry([0], [0, 0])},"a":${entry([2], [0, 8])},"e1":${entry([0, 4], [8, 8], 'F16')},"e2":${entry([4, 0], [8, 8], 'I64')},"b":${entry([1], [8, 12])}}`;
  const r = await open(file(h, f32(3)));
  assert.equal(r.tensors.map((t) => [t.name, t.begin, t.end]), [['e0', 0, 0], ['a', 0, 8], ['e1', 8, 8], ['e2', 8, 8], ['b', 8, 12]]);
  assert.is((await r.read('e1')).bytes.length, 0);
  assert.ok(isEmptyShape(r.get('e2')!.shape) && !isEmptyShape(r.get('a')!.shape) && !isEmptyShape([]));
  await rejects(file(`{"e":${entry([0], [0, 4])}}`, f32(1)), ['"e" is F32 [0] (0 bytes)', 'hold 4']);
});

test('names that are members of Object.prototype are tensors and metadata keys like any other', async () => {
  const names = ['__proto__', 'constructor', 'toString', 'hasOwnProperty'];
  const h = `{"__metadata__":{"__proto__":"p","constructor":"c"},${names.map((n, k) => `"${n}":${entry([1], [4 * k, 4 * k + 4])}`).join(',')}}`;
  const r = await open(file(h, f32(4)));
  assert.equal(r.tensors.map((t) => t.name), names);
  assert.is(Object.getPrototypeOf(r.metadata), null);
  assert.equal(Object.keys(r.metadata), ['__proto__', 'constructor']);
  assert.is(r.metadata.__proto__, 'p' as never);
  assert.is(r.get('valueOf'), undefined);
  await assertRejectsTyped(r.read('valueOf'), LoRAFormatError, ['there is no tensor "valueOf"']);
  await rejects(file({ a: { dtype: 'constructor', shape: [1], data_offsets: [0, 4] } }, f32(1)), ['"a" has an unknown dtype "constructor"']);
  await rejects(file({ a: { dtype: '__proto__', shape: [1], data_offsets: [0, 4] } }, f32(1)), ['"a" has an unknown dtype "__proto__"']);
  // the writer: any well-formed name but __metadata__, and the duplicate check sees only real duplicates
  const t = (name: string) => ({ name, dtype: 'F32', shape: [1], data: new Float32Array([1]) });
  const out = encodeSafetensors([...names, ''].map(t), Object.fromEntries([['__proto__', 'p']]));
  const back = await open(out);
  assert.equal(back.tensors.map((x) => x.name), ['', '__proto__', 'constructor', 'hasOwnProperty', 'toString']);
  assert.equal({ ...back.metadata }, Object.fromEntries([['__proto__', 'p']]));
  assertThrowsTyped(() => encodeSafetensors([t('toString'), t('toString')]), LoRAFormatError, ['cannot write "toString" twice']);
  assertThrowsTyped(() => encodeSafetensors([t('__metadata__')]), LoRAFormatError, ['"__metadata__"']);
  assertThrowsTyped(() => encodeSafetensors([t('x\uD800')]), LoRAFormatError, ['lone surrogate']);
  assertThrowsTyped(() => encodeSafetensors([{ ...t('a'), dtype: 'constructor' }]), LoRAFormatError, ['"a"', 'unknown dtype constructor']);
});

test('the writer orders names as Rust compares strings (UTF-8 bytes) and keeps integer-like names in that order', async () => {
  const t = (name: string) => ({ name, dtype: 'F16', shape: [1], data: new Uint16Array(1) });
  const out = encodeSafetensors(['2', '10', '\u{10000}', '\uFFFF', 'b'].map(t), { '1': 'x', a: 'y' });
  const n = Number(new DataView(out.buffer).getBigUint64(0, true));
  const text = new TextDecoder().decode(out.subarray(8, 8 + n)).trimEnd();
  // an object would put "2" before "10" and "1" first; UTF-16 order would put U+10000 before U+FFFF
  assert.is(text, '{"__metadata__":{"1":"x","a":"y"},"10":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"2":{"dtype":"F16","shape":[1],"data_offsets":[2,4]},' +
    '"b":{"dtype":"F16","shape":[1],"data_offsets":[4,6]},"\uFFFF":{"dtype":"F16","shape":[1],"data_offsets":[6,8]},"\u{10000}":{"dtype":"F16","shape":[1],"data_offsets":[8,10]}}');
  assert.equal(planSafetensors([{ name: 'z', dtype: 'F32', shape: [0, 3] }]).dataBytes, 0, 'a zero-size tensor is written with no bytes');
});

test('malformed headers: every case is a one-line LoRAFormatError naming the file', async () => {
  const ok = `{"a":${entry([2], [0, 8])}}`;
  const d8 = f32(2);
  await rejects(file(ok, d8, 100_000_001n), ['the header length is 100000001 bytes, over the 100,000,000-byte limit']);
  await rejects(file(ok, d8, BigInt(ok.length + 9)), [`the header length is ${ok.length + 9} bytes but the file has only ${ok.length + 8}`]);
  await rejects(file(`{"a":${entry([1], [4, 8])},"b":${entry([1], [8, 12])}}`, f32(3)), ['gap before "a"', 'bytes 0 to 4']);
  await rejects(file(`{"a":${entry([2], [0, 8])},"b":${entry([2], [8, 16])},"c":${entry([1], [20, 24])}}`, f32(6)), ['gap before "c"']);
  await rejects(file(`{"a":${entry([2], [0, 8])},"b":${entry([2], [4, 12])}}`, f32(3)), ['"b" overlaps']);
  await rejects(file(`{"a":${entry([3], [0, 8])}}`, d8), ['"a" is F32 [3] (12 bytes) but its data_offsets [0, 8] hold 8']);
  await rejects(file(`{"a":${entry([2], [0, 8])}}`, f32(3)), ['the tensors end at byte 8 of the data but the file holds 12 data bytes']);
  await rejects(file(`{"a":${entry([2], [0, 16])}}`, d8), ['"a" has bad data_offsets [0, 16]', 'past the 8 data bytes']);
  await rejects(file('{}', d8), ['end at byte 0', 'holds 8']);
  await rejects(file(`{"__metadata__":{"n":1},"a":${entry([2], [0, 8])}}`, d8), ['"__metadata__"."n" must be a string, got 1']);
  await rejects(file(`{"__metadata__":{"n":null},"a":${entry([2], [0, 8])}}`, d8), ['"__metadata__"."n" must be a string, got null']);
  await rejects(file(`{"__metadata__":{"n":{"x":"y"}},"a":${entry([2], [0, 8])}}`, d8), ['"__metadata__"."n" must be a string, got an object']);
  // a key twice in any object: JSON.parse would keep the last one silently
  await rejects(file(`{"a":${entry([2], [0, 8])},"a":${entry([2], [0, 8])}}`, d8), ['the key "a" appears twice in the header']);
  await rejects(file(`{"\\u0061":${entry([2], [0, 8])},"a":${entry([2], [0, 8])}}`, d8), ['the key "a" appears twice in the header']);
  await rejects(file(`{"a":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}}`, d8), ['the key "dtype" appears twice in "a"']);
  await rejects(file(`{"__metadata__":{"k":"1","k":"2"},"a":${entry([2], [0, 8])}}`, d8), ['the key "k" appears twice in "__metadata__"']);
  await rejects(file(`{"__metadata__":null,"__metadata__":{},"a":${entry([2], [0, 8])}}`, d8), ['the key "__metadata__" appears twice in the header']);
  // not UTF-8, not JSON as serde_json reads it
  const bad = file(ok, d8);
  bad[12] = 0xc3; // a truncated two-byte sequence
  await rejects(bad, ['the header is not valid UTF-8']);
  for (const [text, words] of [
    [`${ok} x`, ['not valid JSON', 'unexpected "x"', 'after the header']],
    [`{"a":${entry([2], [0, 8])},}`, ['not valid JSON', 'unexpected "}"']],
    [`{'a':${entry([2], [0, 8])}}`, ['not valid JSON', `unexpected "'" at character 1`]],
    [`{"a":${entry([2], [0, 8])}`, ['not valid JSON', 'ends too early']],
    [`{"a\n":${entry([2], [0, 8])}}`, ['not valid JSON', 'control character (U+000a)']],
    [`{"\\ud800":${entry([2], [0, 8])}}`, ['not valid JSON', 'lone surrogate']],
    [`{"\\x":${entry([2], [0, 8])}}`, ['not valid JSON', 'bad escape']],
    [`{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}`, ['not valid JSON', 'unexpected "N"']],
    [`{"a":{"dtype":"F32","shape":[02],"data_offsets":[0,8]}}`, ['not valid JSON', 'unexpected "2"']],
    [`{"a":{"x":${'['.repeat(200)}${']'.repeat(200)},"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, ['not valid JSON', 'more than 127 nested']],
    ['', ['not valid JSON', 'ends too early']],
    ['null', ['not a JSON object (it is null)']],
  ] as const) {
    await rejects(file(text, d8), [...words]);
  }
  await rejects(file(`{"a":${entry([2], [0, 8], 'F128')}}`, d8), ['"a" has an unknown dtype "F128"']);
  await rejects(file(`{"a":${entry([2], [0, 8], 'f32')}}`, d8), ['"a" has an unknown dtype "f32"']);
  await rejects(file(`{"a\\nb":${entry([2], [0, 8], 'Q4')}}`, d8), ['"a\\nb" has an unknown dtype "Q4"']); // the name's newline stays escaped
  // what the reference accepts besides: whitespace, unknown fields, a struct as the list of its fields, a deep unknown field
  await assertResolves(open(file(` \t\r\n{ "a" : { "dtype" : "F32" , "shape" : [ 2 ] , "data_offsets" : [ 0 , 8 ] , "extra" : [1.5, {"y": null}] } }  `, d8)), 'whitespace and an unknown field');
  await assertResolves(open(file('{"a":["F32",[2],[0,8]]}', d8)), 'a tensor as [dtype, shape, data_offsets]');
  await assertResolves(open(file(`{"a":{"x":${'['.repeat(120)}${']'.repeat(120)},"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, d8)), '122 levels');
});

test.run();
