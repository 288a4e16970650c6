// The CLI on GGUF files: merge into a GGUF model (a PEFT adapter folder, or a llama.cpp adapter), convert
// a PEFT adapter into a llama.cpp adapter, inspect models and adapters; each output byte-identical to
// the API's, and the refusals as one line.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { type FileSink, GgufReader, bytesSource, encodeGgufAdapter } from '../src/index.js';
import { type PeftCase, makePeft } from './fixtures/peft-llama.js';
import { expectFail, hidden, run, workdir } from './fixtures/cli.js';
import { tinyLlama } from './fixtures/tiny-llama.js';
import { lwUnderTest } from './helpers.js';

const CASE: PeftCase = { name: 'rsLoRA + rank_pattern', config: { r: 4, lora_alpha: 6, use_rslora: true, rank_pattern: { k_proj: 8 } }, rank: (m) => (m.endsWith('k_proj') ? 8 : 4), alpha: () => 6 };

/** A tiny llama (F16 blocks) and a PEFT adapter folder for it, in a fresh workdir. */
async function setup() {
  const w = workdir();
  const m = await tinyLlama({ seed: 9, type: (name) => (name.startsWith('blk.') ? 'F16' : 'F32') });
  const peft = makePeft(m, CASE, 3);
  writeFileSync(w.at('model.gguf'), m.bytes);
  mkdirSync(w.at('adapter'));
  writeFileSync(w.at('adapter/adapter_model.safetensors'), peft.weights);
  writeFileSync(w.at('adapter/adapter_config.json'), JSON.stringify(peft.config));
  return { w, m, peft };
}

/** The API's merge of the same inputs, in memory. */
async function apiMerge(model: Uint8Array, weights: Uint8Array, config?: object, opts: object = {}): Promise<Uint8Array> {
  const lw = await lwUnderTest();
  const adapter = await lw.loadAdapter({ weights, ...(config ? { config: config as Record<string, unknown> } : {}) });
  const parts: Uint8Array[] = [];
  const sink: FileSink = { write: async (b) => void parts.push(b) };
  try {
    await lw.mergeAdapterFiles({ base: await GgufReader.open(bytesSource(model)), adapter, sink: () => sink, ...opts });
  } finally {
    adapter.dispose();
  }
  return Buffer.concat(parts);
}

test('merge --base model.gguf --adapter <PEFT dir>: the API\'s bytes; --dtype q8_0; a llama.cpp adapter from convert merges too', async () => {
  const { w, m, peft } = await setup();
  try {
    const r = run(w.dir, 'merge', '--base', 'model.gguf', '--adapter', 'adapter', '--out', 'merged.gguf', '--quiet');
    assert.is(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`merged ${peft.modules.size} modules`));
    assert.ok(Buffer.from(readFileSync(w.at('merged.gguf'))).equals(Buffer.from(await apiMerge(m.bytes, peft.weights, peft.config))), 'byte-identical to the API');
    const q = run(w.dir, 'merge', '--base', 'model.gguf', '--adapter', 'adapter', '--out', 'merged-q8.gguf', '--dtype', 'q8_0', '--quiet');
    assert.is(q.status, 0, q.stderr);
    assert.ok(Buffer.from(readFileSync(w.at('merged-q8.gguf'))).equals(Buffer.from(await apiMerge(m.bytes, peft.weights, peft.config, { dtype: 'q8_0' }))));
    const types = (await GgufReader.open(bytesSource(new Uint8Array(readFileSync(w.at('merged-q8.gguf')))))).get('blk.0.attn_q.weight')!.typeName;
    assert.is(types, 'Q8_0');

    const c = run(w.dir, 'convert', '--adapter', 'adapter', '--base', 'model.gguf', '--out', 'adapter.gguf');
    assert.is(c.status, 0, c.stderr);
    assert.match(c.stdout, /converted 14 modules into adapter\.gguf \(adapter\.lora\.alpha 12, f32; 2 modules' scales folded into lora_b: model\.layers\.\d\.self_attn\.k_proj/);
    const lw = await lwUnderTest();
    const a = await lw.loadAdapter({ weights: peft.weights, config: peft.config });
    const want = await encodeGgufAdapter(a, await GgufReader.open(bytesSource(m.bytes)));
    a.dispose();
    assert.ok(Buffer.from(readFileSync(w.at('adapter.gguf'))).equals(Buffer.from(want)), 'convert writes the API\'s bytes');
    const viaGguf = run(w.dir, 'merge', '--base', 'model.gguf', '--adapter', 'adapter.gguf', '--out', 'merged2.gguf', '--quiet');
    assert.is(viaGguf.status, 0, viaGguf.stderr);
    assert.ok(Buffer.from(readFileSync(w.at('merged2.gguf'))).equals(Buffer.from(await apiMerge(m.bytes, want))));
    assert.equal(hidden(w.dir), [], 'no temp left behind');
  } finally {
    w.done();
  }
});

test('inspect: a GGUF model (architecture, tensors by type) and a llama.cpp adapter (its modules)', async () => {
  const { w } = await setup();
  try {
    const r = run(w.dir, 'inspect', 'model.gguf');
    assert.is(r.status, 0, r.stderr);
    assert.match(r.stdout, /model\.gguf: GGUF v3, \d+ tensors, .*types F16 ×\d+, F32 ×\d+/);
    assert.match(r.stdout, /architecture llama; block_count 2/);
    assert.match(r.stdout, /blk\.0\.attn_q\.weight {2}F16 {2}\[64, 64\]/);
    assert.is(run(w.dir, 'convert', '--adapter', 'adapter', '--base', 'model.gguf', '--out', 'a.gguf').status, 0);
    const a = run(w.dir, 'inspect', 'a.gguf');
    assert.is(a.status, 0, a.stderr);
    assert.match(a.stdout, /llama\.cpp lora adapter for architecture llama; adapter\.lora\.alpha/);
    assert.match(a.stdout, /blk\.1\.ffn_down {2}linear {2}4 /);
  } finally {
    w.done();
  }
});

test('GGUF refusals: q8_0 for a safetensors base, convert onto a non-GGUF base, --out an input or existing, a module the model lacks', async () => {
  const { w } = await setup();
  try {
    writeFileSync(w.at('model.safetensors'), new Uint8Array(16));
    expectFail(w.dir, ['merge', '--base', 'model.safetensors', '--adapter', 'adapter', '--out', 'o.safetensors', '--dtype', 'q8_0'], 2, ['--dtype', 'q8_0 is for GGUF bases']);
    expectFail(w.dir, ['convert', '--adapter', 'adapter', '--base', 'model.safetensors', '--out', 'a.gguf'], 1, ['not a GGUF model']);
    expectFail(w.dir, ['convert', '--adapter', 'adapter', '--base', 'model.gguf', '--out', 'a.gguf', '--dtype', 'q4_0'], 2, ['--dtype for convert must be f32 or f16']);
    expectFail(w.dir, ['merge', '--base', 'model.gguf', '--adapter', 'adapter', '--out', 'model.gguf'], 1, ['is one of the inputs']);
    writeFileSync(w.at('taken.gguf'), 'x');
    expectFail(w.dir, ['merge', '--base', 'model.gguf', '--adapter', 'adapter', '--out', 'taken.gguf'], 1, ['exists; pass --force']);
    expectFail(w.dir, ['merge', '--base', 'model.gguf', '--adapter', 'adapter', '--out', 'x.gguf', '--prefix', 'm.'], 1, ['closest GGUF names']);
    expectFail(w.dir, ['convert', '--adapter', 'adapter', '--base', 'model.gguf', '--out', 'x.gguf', '--prefix', 'm.'], 1, ['closest GGUF names']);
    writeFileSync(w.at('fake.gguf'), new Uint8Array(64));
    expectFail(w.dir, ['merge', '--base', 'fake.gguf', '--adapter', 'adapter', '--out', 'x.gguf'], 1, ['fake.gguf: not a GGUF file']);
    expectFail(w.dir, ['inspect', 'fake.gguf'], 1, ['not a GGUF file']);
    assert.equal(hidden(w.dir), [], 'no temp left behind');
    assert.is(readFileSync(w.at('taken.gguf'), 'utf8'), 'x', 'an existing --out is not touched');
  } finally {
    w.done();
  }
});

test.run();
