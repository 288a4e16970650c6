// safetensors: the strict reader against a real file written by the reference implementation, every
// malformed case the reference rejects, a fuzz of truncated and bit-flipped files, and the writer
// (byte-identical to the reference writer on the same tensors).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRAFormatError } from '../src/index.js';
import { SafetensorsReader, encodeSafetensors, tensorData } from '../src/io/safetensors.js';
import { bytesSource } from '../src/io/source.js';
import { assertThrowsTyped, rng } from './helpers.js';
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
  assert.equal(r.metadata, { format: 'pt' });
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
  await rejects(file({ a: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, d8), ['"a"', 'bad shape']);
  await rejects(file({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 12] } }, new Uint8Array(12)), ['"a"', '(8 bytes)', 'hold 12']);
  await rejects(file({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, d8), ['gap before "a"']);
  await rejects(file({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, d8), ['"b" overlaps']);
  await rejects(file(ok, new Uint8Array(12)), ['end at byte 8', 'holds 12 data bytes']);
  await rejects(file('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', d8), ['"a" appears twice']);
  await rejects(file({ a: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }, d8), ['bad data_offsets']);
  await rejects(file({ a: 'x' }, d8), ['"a" must be an object']);
  // a known but unsupported dtype is read, then named when its values are asked for
  const r = await open(file({ i: { dtype: 'I64', shape: [1], data_offsets: [0, 8] } }, d8));
  assertThrowsTyped(() => tensorData(r.file, { info: r.tensors[0]!, bytes: d8 }), LoRAFormatError, ['"i" is I64', 'F32, F16 and BF16']);
  await assert.not.throws(async () => open(file(ok, d8)));
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

test.run();
