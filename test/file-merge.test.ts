// The file executor's paths (src/adapters/apply-files.ts): in place (a reflink of the input, then
// the changed tensors written at their offsets), streamed through wasm-memory blocks, and streamed
// with untouched ranges referenced (a browser Blob sink). Every path writes the same bytes.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Adapter, type FileSink, LoRAFormatError, LoRANonFiniteError, type LoRAWasm, SafetensorsReader, atomicFile, bytesSource, encodeSafetensors, fileSource } from '../src/index.js';
import { lwUnderTest, randomF32, rng } from './helpers.js';

const PEFT = 'base_model.model.';
const bytesOf = (x: Float32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
const t = (name: string, shape: number[], data: Float32Array) => ({ name, dtype: 'F32', shape, data: bytesOf(data) });

/** A base of 5 tensors (one untouched, one zero-size, a bias) and an adapter on two of them with lora_bias and a replacement. */
async function fixture(lw: LoRAWasm) {
  const g = rng(21);
  const base = [
    t('l.q.weight', [24, 20], randomF32(g, 480)), t('l.q.bias', [24], randomF32(g, 24)), t('l.k.weight', [24, 20], randomF32(g, 480)),
    t('l.untouched', [7, 9], randomF32(g, 63)), t('l.empty', [0, 3], new Float32Array(0)), t('head.weight', [2, 20], randomF32(g, 40)),
  ];
  const ad = (m: string) => [t(`${PEFT}${m}.lora_A.weight`, [3, 20], randomF32(g, 60)), t(`${PEFT}${m}.lora_B.weight`, [24, 3], randomF32(g, 72))];
  const adapter = await lw.loadAdapter({
    weights: encodeSafetensors([...ad('l.q'), ...ad('l.k'), t(`${PEFT}l.q.lora_B.bias`, [24], randomF32(g, 24)), t(`${PEFT}head.weight`, [2, 20], randomF32(g, 40))]),
    config: { peft_type: 'LORA', r: 3, lora_alpha: 6, lora_bias: true, modules_to_save: ['head'] },
  });
  return { bytes: encodeSafetensors(base, { format: 'pt' }), adapter };
}

/** Merges through `sink` and returns the report and the written bytes. */
async function mergeWith(lw: LoRAWasm, source: Parameters<typeof SafetensorsReader.open>[0], adapter: Adapter, sink: () => FileSink, opts: object = {}) {
  const reader = await SafetensorsReader.open(source);
  try {
    return await lw.mergeAdapterFiles({ base: reader, adapter, sink, ...opts });
  } finally {
    await reader.close();
  }
}

const concat = (parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) out.set(p, (o += p.length) - p.length);
  return out;
};

test('in place: a canonical file is copied in the kernel and only changed tensors are written; the bytes equal the streamed path', async () => {
  const lw = await lwUnderTest();
  const { bytes, adapter } = await fixture(lw);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lora-wasm-file-merge-'));
  try {
    const input = path.join(dir, 'base.safetensors');
    writeFileSync(input, bytes);
    // streamed: a sink that can only append
    const parts: Uint8Array[] = [];
    const streamed = await mergeWith(lw, bytesSource(bytes), adapter, () => ({ write: async (b) => void parts.push(b) }));
    assert.is(streamed.inPlaceFiles, 0);
    // in place: an atomic file whose copyOf copies (as a reflink would; ext4 has none), recording what it is asked to write
    const out = await atomicFile(path.join(dir, 'out.safetensors'));
    const writes: [number, number][] = [];
    const copyOf = async (s: { path?: string }) => (copyFileSync(s.path!, out.tempPath), true);
    const sink: FileSink = { write: (b) => out.write(b), copyOf, writeAt: (o, b) => (writes.push([o, b.length]), out.writeAt(o, b)) };
    const placed = await mergeWith(lw, await fileSource(input), adapter, () => sink);
    await out.commit();
    assert.is(placed.inPlaceFiles, 1, 'the in-place path ran');
    assert.equal([placed.merged, placed.replaced], [streamed.merged, streamed.replaced]);
    assert.ok(Buffer.from(readFileSync(out.path)).equals(Buffer.from(concat(parts))), 'byte-identical to the streamed output');
    const reader = await SafetensorsReader.open(bytesSource(bytes));
    const at = (n: string) => [reader.dataStart + reader.get(n)!.begin, reader.get(n)!.end - reader.get(n)!.begin];
    assert.equal(writes.sort((a, b) => a[0] - b[0]), ['l.q.weight', 'l.q.bias', 'l.k.weight', 'head.weight'].map(at).sort((a, b) => a[0]! - b[0]!), 'only the changed tensors, at their offsets');
    // the atomic file's own copyOf reflinks or does nothing (then every byte is written, front to back)
    const own = await atomicFile(path.join(dir, 'own.safetensors'));
    const ownWrites: number[] = [];
    const report = await mergeWith(lw, await fileSource(input), adapter, () => ({ write: (b) => own.write(b), copyOf: (s) => own.copyOf(s), writeAt: (o, b) => (ownWrites.push(o), own.writeAt(o, b)) }));
    await own.commit();
    assert.ok(Buffer.from(readFileSync(own.path)).equals(Buffer.from(concat(parts))), 'byte-identical with or without a reflink');
    if (report.inPlaceFiles === 0) assert.is(ownWrites[0], 0, 'no reflink here: the header and every tensor are written');
  } finally {
    rmSync(dir, { recursive: true, force: true });
    adapter.dispose();
  }
});

test('a file whose header is not the reference writer\'s is streamed (the output is canonical, as before), and so is a dtype change', async () => {
  const lw = await lwUnderTest();
  const { bytes, adapter } = await fixture(lw);
  const reader = await SafetensorsReader.open(bytesSource(bytes));
  // the same tensors and data, with the header's keys in another order and padded with more spaces
  const entries = reader.tensors.map((x) => [x.name, { dtype: x.dtype, shape: x.shape, data_offsets: [x.begin, x.end] }] as const).reverse();
  let header = JSON.stringify({ __metadata__: { format: 'pt' }, ...Object.fromEntries(entries) });
  header += ' '.repeat(8 - (header.length % 8) + 8);
  const odd = concat([new Uint8Array(new BigUint64Array([BigInt(header.length)]).buffer), new TextEncoder().encode(header), bytes.subarray(reader.dataStart)]);
  const copies: string[] = [];
  // a positioned sink (like a Node file) that cannot copy: the streamed path writes it front to back
  const run = async (src: Uint8Array, label: string, opts: object = {}) => {
    const out = new Uint8Array(src.length * 2);
    let end = 0;
    const report = await mergeWith(lw, bytesSource(src), adapter, () => ({
      write: async () => assert.unreachable('a positioned sink is written with writeAt'),
      copyOf: async () => (copies.push(label), false),
      writeAt: async (o, b) => {
        assert.is(o, end, 'front to back');
        out.set(b, o);
        end = o + b.length;
      },
    }), opts);
    return { report, out: out.slice(0, end) };
  };
  const a = await run(odd, 'odd');
  const b = await run(bytes, 'canonical');
  assert.equal(copies, ['canonical'], 'a copy is asked for only when the layouts agree');
  assert.is(a.report.inPlaceFiles + b.report.inPlaceFiles, 0);
  assert.ok(Buffer.from(a.out).equals(Buffer.from(b.out)), 'the same canonical output from either input');
  const f16 = await run(bytes, 'f16', { dtype: 'f16' });
  assert.is(f16.report.inPlaceFiles, 0);
  assert.is((await SafetensorsReader.open(bytesSource(f16.out))).get('l.untouched')!.dtype, 'F16');
  adapter.dispose();
});

test('a sink that references the input (a browser Blob) gets ranges for untouched tensors and bytes only for changed ones', async () => {
  const lw = await lwUnderTest();
  const { bytes, adapter } = await fixture(lw);
  const written: string[] = [];
  const parts: Uint8Array[] = [];
  const source = bytesSource(bytes);
  await mergeWith(lw, source, adapter, () => ({
    write: async (b) => void parts.push(b),
    writeRange: async (s, offset, length) => {
      written.push(`range ${length}`);
      parts.push(await s.read(offset, length));
      return true;
    },
  }));
  const plain: Uint8Array[] = [];
  await mergeWith(lw, bytesSource(bytes), adapter, () => ({ write: async (b) => void plain.push(b) }));
  assert.ok(Buffer.from(concat(parts)).equals(Buffer.from(concat(plain))), 'the same bytes');
  assert.equal(written, ['range 252'], 'l.untouched (7×9 f32) referenced, not read; the zero-size tensor needs nothing');
  // a sink that declines the reference (its source is not a Blob) gets the bytes instead
  const declined: Uint8Array[] = [];
  await mergeWith(lw, bytesSource(bytes), adapter, () => ({ write: async (b) => void declined.push(b), writeRange: async () => false }));
  assert.ok(Buffer.from(concat(declined)).equals(Buffer.from(concat(plain))), 'the same bytes when the range is declined');
  adapter.dispose();
});

test('an untouched range longer than a block is copied in chunks, at its offsets, between merged tensors', async () => {
  const lw = await lwUnderTest();
  const { adapter } = await fixture(lw);
  const g = rng(5);
  const big = randomF32(g, 5 << 20); // 20 MiB: more than one 16 MiB copy chunk
  const bytes = encodeSafetensors([
    t('l.q.weight', [24, 20], randomF32(g, 480)), t('l.k.weight', [24, 20], randomF32(g, 480)), t('a.big', [5 << 10, 1 << 10], big),
    t('l.q.bias', [24], randomF32(g, 24)), t('head.weight', [2, 20], randomF32(g, 40)),
  ]);
  const out = new Uint8Array(bytes.length);
  const sizes: number[] = [];
  await mergeWith(lw, bytesSource(bytes), adapter, () => ({
    write: async () => assert.unreachable('positioned'),
    writeAt: async (o, b) => {
      sizes.push(b.length);
      out.set(b, o);
    },
  }));
  const plain: Uint8Array[] = [];
  await mergeWith(lw, bytesSource(bytes), adapter, () => ({ write: async (b) => void plain.push(b) }));
  assert.ok(Buffer.from(out).equals(Buffer.from(concat(plain))), 'the same bytes as an appending sink');
  const reader = await SafetensorsReader.open(bytesSource(out));
  const at = reader.dataStart + reader.get('a.big')!.begin;
  assert.ok(Buffer.from(out.subarray(at, at + big.byteLength)).equals(Buffer.from(bytesOf(big))), 'the untouched tensor byte for byte');
  assert.ok(Math.max(...sizes) <= 16 << 20, `no write over 16 MiB (${Math.max(...sizes)})`);
  adapter.dispose();
});

test('a tensor larger than a band is merged in bands of rows: the same bits as the resident merge, f32 in place and converted to f16; safe refuses an overflow in a later band', async () => {
  const lw = await lwUnderTest();
  const g = rng(8);
  const [rows, cols, r] = [2500, 1024, 3]; // 10 MB of f32: three bands of at most 4 MiB
  const w = randomF32(g, rows * cols), a = randomF32(g, r * cols), b = randomF32(g, rows * r);
  const bytes = encodeSafetensors([t('big.weight', [rows, cols], w)]);
  const adapter = await lw.loadAdapter({
    weights: encodeSafetensors([t(`${PEFT}big.lora_A.weight`, [r, cols], a), t(`${PEFT}big.lora_B.weight`, [rows, r], b)]),
    config: { peft_type: 'LORA', r, lora_alpha: 6 },
  });
  try {
    for (const dtype of ['keep', 'f16'] as const) {
      const parts: Uint8Array[] = [];
      await mergeWith(lw, bytesSource(bytes), adapter, () => ({ write: async (x) => void parts.push(x) }), { dtype });
      const got = await SafetensorsReader.open(bytesSource(concat(parts)));
      const W = lw.matrix(rows, cols, w);
      const res = dtype === 'keep' ? W : lw.matrix(rows, cols, undefined, { dtype: 'f16' });
      lw.mergeAdapter({ 'big.weight': W }, adapter, dtype === 'keep' ? {} : { into: { 'big.weight': res } });
      const want = new Uint8Array(res.toArray().buffer);
      assert.ok(Buffer.from((await got.read('big.weight')).bytes).equals(Buffer.from(want)), `${dtype}: the resident merge's bits`);
      W.dispose();
      if (res !== W) res.dispose();
    }
    const hot = w.slice();
    hot[2100 * cols + 5] = 3e38; // row 2100: in the third band
    const err = await mergeWith(lw, bytesSource(encodeSafetensors([t('big.weight', [rows, cols], hot)])), adapter, () => ({ write: async () => {} }), { dtype: 'f16', safe: true })
      .then(() => undefined, (e: Error) => e);
    assert.ok(err instanceof LoRANonFiniteError && err.message.includes('"big.weight"') && err.message.includes('f16'), String(err));
  } finally {
    adapter.dispose();
  }
});

test('a positioned sink whose writes finish late (a slow disk) gets every byte at its offset: dtype conversions too (the last stop\'s engine wrote two tensors at one offset here)', async () => {
  const lw = await lwUnderTest();
  const { bytes, adapter } = await fixture(lw);
  try {
    for (const dtype of ['keep', 'f16', 'f32'] as const) {
      const plain: Uint8Array[] = [];
      await mergeWith(lw, bytesSource(bytes), adapter, () => ({ write: async (b) => void plain.push(b) }), { dtype });
      const want = concat(plain);
      const out = new Uint8Array(want.length + 64);
      let end = 0;
      await mergeWith(lw, bytesSource(bytes), adapter, () => ({
        write: async () => assert.unreachable('positioned'),
        writeAt: async (o, b) => {
          const copy = b.slice(); // the engine is done with b only when this resolves
          await new Promise((r) => setTimeout(r, 5));
          out.set(copy, o);
          end = Math.max(end, o + copy.length);
        },
      }), { dtype });
      assert.is(end, want.length, `${dtype}: the file's length`);
      assert.ok(Buffer.from(out.subarray(0, end)).equals(Buffer.from(want)), `${dtype}: the same bytes as an appending sink`);
    }
  } finally {
    adapter.dispose();
  }
});

test('a read that fails behind the loop (the base shrank) fails the merge with its error, and every block is freed', async () => {
  const lw = await lwUnderTest();
  const { bytes, adapter } = await fixture(lw);
  const before = lw.memoryStats().liveBlocks;
  let reads = 0;
  const inner = bytesSource(bytes);
  const shrinking = {
    name: 'shrinking.safetensors', size: bytes.length, read: inner.read,
    readInto: async (offset: number, target: Uint8Array) => {
      if (++reads === 3) throw new LoRAFormatError('shrinking.safetensors: the file ended at byte 100 while reading');
      return inner.readInto!(offset, target);
    },
  };
  const reader = await SafetensorsReader.open(shrinking);
  try {
    for (const writeAt of [undefined, async () => {}]) {
      reads = 0;
      await lw.mergeAdapterFiles({ base: reader, adapter, sink: () => ({ write: async () => {}, ...(writeAt ? { writeAt } : {}) }) }).then(
        () => assert.unreachable('the merge must fail'),
        (e) => assert.match((e as Error).message, /the file ended/),
      );
    }
  } finally {
    await reader.close();
  }
  assert.is(lw.memoryStats().liveBlocks, before, 'no block left behind');
  adapter.dispose();
});

test.run();
