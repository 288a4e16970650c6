// The command line, as a shell user meets it: inspect, merge (single file and sharded, --dtype,
// --force, atomic output), one-line errors with exit codes, and the numpy-only cross-check.
// Node only; runs the built CLI (bin/lora-wasm.mjs over dist/).
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { SafetensorsReader, bytesSource, encodeSafetensors } from '../src/index.js';
import { FIXTURE_ADAPTER, FIXTURE_CONFIG, readFixture } from './fixtures.js';
import { FLAVOUR, lwUnderTest, randomF32, rng } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = path.join(root, 'bin/lora-wasm.mjs');
const dir = mkdtempSync(path.join(os.tmpdir(), 'lora-wasm-cli-'));
// the CLI in this run's flavour (init() picks relaxed where the engine has it), so results compare bit for bit
const flags = FLAVOUR === 'relaxed' ? ['--experimental-wasm-relaxed-simd'] : [];
const run = (...args: string[]) => spawnSync(process.execPath, [...flags, cli, ...args], { cwd: dir, encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });

const lw = await lwUnderTest();
/** f16 bytes of x, encoded by the kernel (its RNE is checked exhaustively in convert.test.ts). */
const f16 = (x: Float32Array): Uint8Array => {
  const m = lw.matrix(1, x.length, x, { dtype: 'f16' });
  const bits = m.toArray();
  m.dispose();
  return new Uint8Array(bits.buffer);
};
/** A DistilBERT-shaped f16 base for the real adapter, from a seeded generator (the base model is not here). */
function baseTensors(opts: { qShape?: number[]; qDtype?: string; dropLayer5?: boolean } = {}) {
  const g = rng(3);
  const ts: { name: string; dtype: string; shape: number[]; data: Uint8Array }[] = [];
  for (let l = 0; l < 6; l++) {
    for (const m of ['q_lin', 'k_lin', 'v_lin']) {
      if (opts.dropLayer5 && l === 5 && m === 'q_lin') continue;
      const shape = m === 'q_lin' && l === 0 && opts.qShape ? opts.qShape : [768, 768];
      const n = shape[0]! * shape[1]!;
      const dtype = m === 'q_lin' && l === 0 && opts.qDtype ? opts.qDtype : 'F16';
      ts.push({ name: `distilbert.transformer.layer.${l}.attention.${m}.weight`, dtype, shape, data: dtype === 'F16' ? f16(randomF32(g, n, 0.05)) : new Uint8Array(n * 4) });
    }
  }
  ts.push({ name: 'pre_classifier.weight', dtype: 'F16', shape: [768, 768], data: f16(randomF32(g, 768 * 768, 0.05)) });
  ts.push({ name: 'pre_classifier.bias', dtype: 'F16', shape: [768], data: f16(randomF32(g, 768, 0.05)) });
  ts.push({ name: 'classifier.weight', dtype: 'F16', shape: [2, 768], data: f16(randomF32(g, 1536, 0.05)) });
  ts.push({ name: 'classifier.bias', dtype: 'F16', shape: [2], data: f16(randomF32(g, 2, 0.05)) });
  ts.push({ name: 'distilbert.embeddings.position_ids', dtype: 'I64', shape: [1, 4], data: new Uint8Array(32) });
  return ts;
}

async function setup(): Promise<boolean> {
  const [weights, config] = [await readFixture(FIXTURE_ADAPTER), await readFixture(FIXTURE_CONFIG)];
  if (!weights || !config) return false;
  mkdirSync(path.join(dir, 'adapter'), { recursive: true });
  writeFileSync(path.join(dir, 'adapter/adapter_model.safetensors'), weights);
  writeFileSync(path.join(dir, 'adapter/adapter_config.json'), config);
  writeFileSync(path.join(dir, 'base.safetensors'), encodeSafetensors(baseTensors(), { format: 'pt' }));
  return true;
}

const readFile = (p: string) => SafetensorsReader.open(bytesSource(new Uint8Array(readFileSync(path.join(dir, p))), p));

test('merge streams the real adapter into an f16 base: merged tensors equal lw.mergeAdapter bit for bit, the rest byte for byte', async () => {
  if (!(await setup())) return;
  const r = run('merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', 'merged.safetensors', '--quiet');
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /merged 12 modules and replaced 4 tensors into merged\.safetensors/);
  const baseBytes = new Uint8Array(readFileSync(path.join(dir, 'base.safetensors')));
  const base = await lw.loadTensors(baseBytes);
  assert.equal(base.skipped, ['distilbert.embeddings.position_ids (I64)'], 'non-float tensors are listed, not loaded');
  await assert.not.throws(async () => lw.loadTensors(baseBytes, { names: ['classifier.bias'] }));
  try {
    await lw.loadTensors(baseBytes, { names: ['distilbert.embeddings.position_ids'] });
    assert.unreachable('loaded an I64 tensor by name');
  } catch (e) {
    assert.match((e as Error).message, /"distilbert\.embeddings\.position_ids" is I64/);
  }
  const adapter = await lw.loadAdapter({ weights: new Uint8Array(readFileSync(path.join(dir, 'adapter/adapter_model.safetensors'))), config: readFileSync(path.join(dir, 'adapter/adapter_config.json'), 'utf8') });
  lw.mergeAdapter(base.tensors, adapter);
  const merged = await readFile('merged.safetensors');
  const orig = await readFile('base.safetensors');
  assert.equal(merged.tensors.map((t) => [t.name, t.dtype, t.shape]), orig.tensors.map((t) => [t.name, t.dtype, t.shape]), 'same tensors, dtypes, shapes, order');
  for (const t of merged.tensors) {
    const got = (await merged.read(t.name)).bytes;
    if (t.dtype === 'I64') {
      assert.equal(Array.from(got), Array.from((await orig.read(t.name)).bytes), 'non-float tensors copied');
      continue;
    }
    const want = base.tensors[t.name]!.toArray();
    assert.equal(Array.from(new Uint16Array(got.slice().buffer)), Array.from(want as Uint16Array), `${t.name} equals the in-memory merge`);
  }
  for (const m of Object.values(base.tensors)) m.dispose();
  adapter.dispose();
  // numpy, where it is installed: the merge recomputed in float64 with no lora-wasm code involved
  const py = spawnSync('python3', [path.join(root, 'test/fixtures/peft_numpy_check.py'), 'base.safetensors', 'adapter', 'merged.safetensors'], { cwd: dir, encoding: 'utf8' });
  if (py.status === null || /No module named 'numpy'/.test(py.stderr ?? '')) console.log('  (numpy cross-check skipped: no python3 with numpy)');
  else assert.is(py.status, 0, `numpy check: ${py.stdout}${py.stderr}`);
});

test('merge --threads 1, 2 and auto (the default) write byte-identical files', async () => {
  if (!existsSync(path.join(dir, 'adapter'))) return;
  const files = ['1', '2', 'auto'].map((t) => {
    const out = `threads-${t}.safetensors`;
    const r = run('merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', out, '--threads', t, '--quiet');
    assert.is(r.status, 0, r.stderr);
    return readFileSync(path.join(dir, out));
  });
  assert.ok(files[0]!.equals(files[1]!) && files[0]!.equals(files[2]!), 'the same bytes whatever the thread count');
});

test('merge --dtype f32 converts every float tensor; a sharded base is written sharded with its index', async () => {
  if (!existsSync(path.join(dir, 'adapter'))) return;
  const r = run('merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', 'merged32.safetensors', '--dtype', 'f32', '--quiet');
  assert.is(r.status, 0, r.stderr);
  const m32 = await readFile('merged32.safetensors');
  assert.ok(m32.tensors.every((t) => t.dtype === 'F32' || t.dtype === 'I64'), 'floats became F32');
  // two shards and an index
  const ts = baseTensors();
  const half = Math.ceil(ts.length / 2);
  mkdirSync(path.join(dir, 'sharded'), { recursive: true });
  const shards = [ts.slice(0, half), ts.slice(half)];
  const weightMap: Record<string, string> = {};
  shards.forEach((s, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    writeFileSync(path.join(dir, 'sharded', file), encodeSafetensors(s, { format: 'pt' }));
    for (const t of s) weightMap[t.name] = file;
  });
  writeFileSync(path.join(dir, 'sharded/model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
  const rs = run('merge', '--base', 'sharded', '--adapter', 'adapter', '--out', 'merged-sharded', '--quiet');
  assert.is(rs.status, 0, rs.stderr);
  assert.equal(readdirSync(path.join(dir, 'merged-sharded')).sort(), ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
  const index = JSON.parse(readFileSync(path.join(dir, 'merged-sharded/model.safetensors.index.json'), 'utf8'));
  assert.equal(index.weight_map, weightMap);
  const single = await readFile('merged.safetensors');
  for (const file of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']) {
    const shard = await readFile(`merged-sharded/${file}`);
    for (const t of shard.tensors) {
      assert.equal(Array.from((await shard.read(t.name)).bytes), Array.from((await single.read(t.name)).bytes), `${file}: ${t.name} as in the single-file merge`);
    }
  }
});

test('errors: one line that says what to do, exit 1 (2 for usage), and no output file left behind', async () => {
  if (!existsSync(path.join(dir, 'adapter'))) return;
  const expectFail = (args: string[], code: number, words: string[]) => {
    const r = run(...args);
    assert.is(r.status, code, `${args.join(' ')}: ${r.stderr}`);
    const first = r.stderr.split('\n')[0]!;
    assert.ok(first.startsWith('lora-wasm: '), first);
    for (const w of words) assert.ok(first.includes(w), `"${first}" should mention "${w}"`);
  };
  expectFail(['merge', '--base', 'missing.safetensors', '--adapter', 'adapter', '--out', 'x.safetensors'], 2, ['--base missing.safetensors', 'no such file']);
  expectFail(['merge', '--base', 'base.safetensors', '--adapter', 'adapter'], 2, ['merge needs --out']);
  expectFail(['frobnicate'], 2, ['unknown command']);
  expectFail(['merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', 'merged.safetensors'], 1, ['merged.safetensors exists', '--force']);
  expectFail(['merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', 'base.safetensors', '--force'], 1, ['is one of the inputs']);
  expectFail(['merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', 'y.safetensors', '--dtype', 'f8'], 2, ['--dtype must be']);
  expectFail(['merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', 'y.safetensors', '--threads', '0'], 2, ['--threads must be auto or a whole number']);
  for (const [name, tensors, words] of [
    ['nolayer5.safetensors', baseTensors({ dropLayer5: true }), ['no tensor "distilbert.transformer.layer.5.attention.q_lin.weight"', 'close names']],
    ['badshape.safetensors', baseTensors({ qShape: [768, 512] }), ['[768, 768] weight', '[768, 512]']],
    ['i32.safetensors', baseTensors({ qDtype: 'I32' }), ['is I32', 'F32, F16 and BF16']],
  ] as const) {
    writeFileSync(path.join(dir, name), encodeSafetensors(tensors));
    expectFail(['merge', '--base', name, '--adapter', 'adapter', '--out', `out-${name}`], 1, [...words]);
    assert.not.ok(existsSync(path.join(dir, `out-${name}`)), 'nothing written');
  }
  // a sharded base whose index is broken, a folder with no model, an adapter folder with no weights
  mkdirSync(path.join(dir, 'badindex'), { recursive: true });
  writeFileSync(path.join(dir, 'badindex/model.safetensors.index.json'), '{ nope');
  expectFail(['merge', '--base', 'badindex', '--adapter', 'adapter', '--out', 'o1'], 1, ['model.safetensors.index.json: not valid JSON']);
  writeFileSync(path.join(dir, 'badindex/model.safetensors.index.json'), '{"metadata": {}}');
  expectFail(['merge', '--base', 'badindex', '--adapter', 'adapter', '--out', 'o1'], 1, ['no "weight_map" object']);
  writeFileSync(path.join(dir, 'badindex/model.safetensors.index.json'), '{"weight_map": {"w": "../escape.safetensors"}}');
  expectFail(['merge', '--base', 'badindex', '--adapter', 'adapter', '--out', 'o1'], 1, ['bad shard name']);
  mkdirSync(path.join(dir, 'empty'), { recursive: true });
  expectFail(['merge', '--base', 'empty', '--adapter', 'adapter', '--out', 'o2.safetensors'], 1, ['no model.safetensors or model.safetensors.index.json']);
  expectFail(['merge', '--base', 'base.safetensors', '--adapter', 'empty', '--out', 'o3.safetensors'], 1, ['no adapter_model.safetensors in this folder']);
  expectFail(['inspect'], 2, ['inspect needs a path']);
  // the atomic writer itself refuses to replace a file without force, and abort leaves nothing
  const { atomicFile } = await import('../src/index.js');
  try {
    await atomicFile(path.join(dir, 'base.safetensors'));
    assert.unreachable('replaced an existing file without force');
  } catch (e) {
    assert.match((e as Error).message, /base\.safetensors exists; pass --force/);
  }
  const f = await atomicFile(path.join(dir, 'never.safetensors'));
  await f.write(new Uint8Array(4));
  await f.abort();
  assert.not.ok(existsSync(path.join(dir, 'never.safetensors')), 'abort: nothing appears');
  const good = readFileSync(path.join(dir, 'base.safetensors'));
  writeFileSync(path.join(dir, 'truncated.safetensors'), good.subarray(0, good.length - 10));
  expectFail(['merge', '--base', 'truncated.safetensors', '--adapter', 'adapter', '--out', 'out-trunc.safetensors'], 1, ['safetensors: truncated.safetensors', 'data bytes']);
  assert.not.ok(readdirSync(dir).some((f) => f.endsWith('.tmp')), 'no temp file left behind');
});

test('an adapter saved by lw.saveAdapter merges through the CLI and passes the numpy-only check', async () => {
  if (!existsSync(path.join(dir, 'adapter'))) return;
  const g = rng(9);
  const layers: Record<string, import('../src/index.js').LoRALinear> = {};
  for (const l of [0, 2]) {
    for (const m of ['q_lin', 'v_lin']) {
      const layer = lw.linear({ W: lw.matrix(768, 768), r: 4, alpha: 12, seed: l });
      layer.A.data.set(randomF32(g, 768 * 4, 0.05));
      layers[`distilbert.transformer.layer.${l}.attention.${m}`] = layer;
    }
  }
  const saved = lw.saveAdapter(layers, { baseModel: 'distilbert-base-uncased', taskType: 'SEQ_CLS' });
  mkdirSync(path.join(dir, 'mine'), { recursive: true });
  writeFileSync(path.join(dir, 'mine/adapter_model.safetensors'), saved.weights);
  writeFileSync(path.join(dir, 'mine/adapter_config.json'), JSON.stringify(saved.config, null, 2));
  const r = run('merge', '--base', 'base.safetensors', '--adapter', 'mine', '--out', 'mine-merged.safetensors', '--quiet');
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /merged 4 modules/);
  const py = spawnSync('python3', [path.join(root, 'test/fixtures/peft_numpy_check.py'), 'base.safetensors', 'mine', 'mine-merged.safetensors'], { cwd: dir, encoding: 'utf8' });
  if (py.status === null || /No module named 'numpy'/.test(py.stderr ?? '')) console.log('  (numpy cross-check skipped: no python3 with numpy)');
  else assert.is(py.status, 0, `numpy check: ${py.stdout}${py.stderr}`);
  for (const layer of Object.values(layers)) {
    layer.W.dispose();
    layer.dispose();
  }
});

test('inspect lists an adapter folder, a kohya file and a plain model', async () => {
  if (!existsSync(path.join(dir, 'adapter'))) return;
  const a = run('inspect', 'adapter');
  assert.is(a.status, 0, a.stderr);
  assert.match(a.stdout, /PEFT LoRA adapter for distilbert-base-uncased; task SEQ_CLS; r 8, lora_alpha 16/);
  assert.match(a.stdout, /12 modules, 147,456 parameters; 4 tensors replace base tensors/);
  assert.match(a.stdout, /distilbert\.transformer\.layer\.5\.attention\.v_lin {2}linear {2}8 {2}16 {2}2 {2}\[768, 768\] {2}f32/);
  const m = run('inspect', 'base.safetensors');
  assert.is(m.status, 0, m.stderr);
  assert.match(m.stdout, /23 tensors, [0-9.]+ MiB, dtypes (I64, F16|F16, I64)/);
  const g = rng(2);
  writeFileSync(path.join(dir, 'kohya.safetensors'), encodeSafetensors([
    { name: 'lora_unet_mid_block_attentions_0_proj_out.lora_down.weight', dtype: 'F16', shape: [4, 8], data: f16(randomF32(g, 32)) },
    { name: 'lora_unet_mid_block_attentions_0_proj_out.lora_up.weight', dtype: 'F16', shape: [8, 4], data: f16(randomF32(g, 32)) },
    { name: 'lora_unet_mid_block_attentions_0_proj_out.alpha', dtype: 'F32', shape: [], data: new Uint8Array(new Float32Array([2]).buffer) },
  ]));
  copyFileSync(path.join(dir, 'kohya.safetensors'), path.join(os.tmpdir(), `kohya-${process.pid}.safetensors`));
  const k = run('inspect', path.join(os.tmpdir(), `kohya-${process.pid}.safetensors`));
  assert.is(k.status, 0, k.stderr);
  assert.match(k.stdout, /kohya \/ sd-scripts LoRA/);
  assert.match(k.stdout, /lora_unet_mid_block_attentions_0_proj_out {2}linear {2}4 {2}2 {2}0\.5/);
  rmSync(path.join(os.tmpdir(), `kohya-${process.pid}.safetensors`));
  rmSync(dir, { recursive: true, force: true });
});

test.run();
