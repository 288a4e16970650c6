// The command line, as a shell user meets it: inspect, merge (single file and sharded, --dtype,
// --force, --multiplier), one-line errors with exit codes, and that no run loses data: inputs are never
// outputs, outputs appear whole or not at all (sharded too), runs without --force never replace each
// other, and signals leave nothing behind. Node only; runs the built CLI (bin/lora-wasm.mjs over dist/)
// as a child process. Every test makes what it needs in its own temp folder.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRAEnvironmentError, LoRAError, SafetensorsReader, bytesSource, encodeSafetensors } from '../src/index.js';
import { atomicFile, atomicFolder, clearStaleTemps } from '../src/io/node-file.js';
import { FIXTURE_ADAPTER, FIXTURE_CONFIG, readFixture } from './fixtures.js';
import { BUILD, assertRejectsTyped, assertResolves, lwUnderTest, randomF32, rng } from './helpers.js';
import { cli, env, expectFail, flags, hidden, root, run, workdir } from './fixtures/cli.js';

const readST = (file: string) => SafetensorsReader.open(bytesSource(new Uint8Array(readFileSync(file)), file));
/** The real PEFT adapter of ../shared/fixtures: a test that needs it fails (never passes) without it. */
async function realAdapter(dir: string): Promise<void> {
  const [weights, config] = [await readFixture(FIXTURE_ADAPTER), await readFixture(FIXTURE_CONFIG)];
  assert.ok(weights && config, `this test needs ../shared/fixtures/${FIXTURE_ADAPTER} (always present in CI)`);
  mkdirSync(path.join(dir, 'adapter'), { recursive: true });
  writeFileSync(path.join(dir, 'adapter/adapter_model.safetensors'), weights!);
  writeFileSync(path.join(dir, 'adapter/adapter_config.json'), config!);
}

const lw = await lwUnderTest();
/** f16 bytes of x, encoded by the kernel (its RNE is checked exhaustively in convert.test.ts). */
const f16 = (x: Float32Array): Uint8Array => {
  const m = lw.matrix(1, x.length, x, { dtype: 'f16' });
  const bits = m.toArray();
  m.dispose();
  return new Uint8Array(bits.buffer);
};
const bytesOf = (x: Float32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
type Tensor = { name: string; dtype: string; shape: number[]; data: Uint8Array };

/** A DistilBERT-shaped f16 base for the real adapter, from a seeded generator (the base model is not here). */
function distilbert(opts: { qShape?: number[]; qDtype?: string; dropLayer5?: boolean } = {}): Tensor[] {
  const g = rng(3);
  const ts: Tensor[] = [];
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

// ---------------------------------------------------------------- a tiny model and adapter
// adapter/: PEFT, r 2, lora_alpha 4 (scale 2) on m.q and m.k ([6, 5] each); lora_A [2, 5], lora_B [6, 2]
const TINY = { r: 2, alpha: 4, dOut: 6, dIn: 5 };
const tinyFactors = (seed: number) => {
  const g = rng(seed);
  return { loraA: randomF32(g, TINY.r * TINY.dIn, 0.5), loraB: randomF32(g, TINY.dOut * TINY.r, 0.5) };
};
/** Writes dir/adapter (targets: the modules, each `m.<x>`). */
function tinyAdapter(dir: string, modules = ['q', 'k'], folder = 'adapter'): void {
  mkdirSync(path.join(dir, folder), { recursive: true });
  const ts: Tensor[] = [];
  modules.forEach((m, i) => {
    const { loraA, loraB } = tinyFactors(10 + i);
    ts.push({ name: `base_model.model.m.${m}.lora_A.weight`, dtype: 'F32', shape: [TINY.r, TINY.dIn], data: bytesOf(loraA) });
    ts.push({ name: `base_model.model.m.${m}.lora_B.weight`, dtype: 'F32', shape: [TINY.dOut, TINY.r], data: bytesOf(loraB) });
  });
  writeFileSync(path.join(dir, folder, 'adapter_model.safetensors'), encodeSafetensors(ts, { format: 'pt' }));
  writeFileSync(path.join(dir, folder, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: TINY.r, lora_alpha: TINY.alpha, target_modules: modules }));
}
/** The tiny base: m.q.weight, m.k.weight ([6, 5] F32), m.pos (I64); `fill` adds filler tensors (to make a run slow). */
function tinyTensors(opts: { kValue?: number; filler?: number } = {}): Tensor[] {
  const g = rng(4);
  const k = randomF32(g, 30, 0.5);
  if (opts.kValue !== undefined) k[7] = opts.kValue;
  const ts: Tensor[] = [
    { name: 'm.q.weight', dtype: 'F32', shape: [6, 5], data: bytesOf(randomF32(g, 30, 0.5)) },
    { name: 'm.k.weight', dtype: 'F32', shape: [6, 5], data: bytesOf(k) },
    { name: 'm.pos', dtype: 'I64', shape: [2], data: new Uint8Array(16) },
  ];
  for (let i = 0; i < (opts.filler ?? 0); i++) ts.push({ name: `filler.${i}`, dtype: 'F32', shape: [512, 512], data: new Uint8Array(512 * 512 * 4) });
  return ts;
}
const SHARDS = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
/** Writes dir/<folder>: m.q in shard 1, m.k and m.pos (and the filler) in shard 2, and the index. */
function tinySharded(dir: string, opts: { kValue?: number; filler?: number } = {}, folder = 'sharded'): Record<string, string> {
  const ts = tinyTensors(opts);
  mkdirSync(path.join(dir, folder), { recursive: true });
  const parts = [ts.slice(0, 1), ts.slice(1)];
  const weightMap: Record<string, string> = {};
  parts.forEach((p, i) => {
    writeFileSync(path.join(dir, folder, SHARDS[i]!), encodeSafetensors(p, { format: 'pt' }));
    for (const t of p) weightMap[t.name] = SHARDS[i]!;
  });
  writeFileSync(path.join(dir, folder, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
  return weightMap;
}
/** m.<x>.weight after the merge, in float64: W + multiplier · 2 · lora_B · lora_A. */
function tinyMerged(module: 'q' | 'k', multiplier: number): Float64Array {
  const W = new Float32Array(tinyTensors().find((t) => t.name === `m.${module}.weight`)!.data.slice().buffer);
  const { loraA, loraB } = tinyFactors(module === 'q' ? 10 : 11);
  const out = Float64Array.from(W);
  for (let i = 0; i < TINY.dOut; i++) {
    for (let j = 0; j < TINY.dIn; j++) {
      let s = 0;
      for (let k = 0; k < TINY.r; k++) s += loraB[i * TINY.r + k]! * loraA[k * TINY.dIn + j]!;
      out[i * TINY.dIn + j]! += multiplier * (TINY.alpha / TINY.r) * s;
    }
  }
  return out;
}
async function assertTinyMerged(file: string, module: 'q' | 'k', multiplier: number): Promise<void> {
  const got = new Float32Array((await (await readST(file)).read(`m.${module}.weight`)).bytes.slice().buffer);
  const want = tinyMerged(module, multiplier);
  for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i]! - want[i]!) <= 1e-6 * (1 + Math.abs(want[i]!)), `${file} m.${module}.weight[${i}]: ${got[i]} vs ${want[i]}`);
}

/**
 * Starts the CLI and stops it (SIGSTOP) the moment an entry matching `re` appears in `dir`: the test
 * then acts while the run is frozen mid-way, and `resume()` lets it go on.
 */
async function startAndFreeze(dir: string, args: string[], re: RegExp) {
  const child: ChildProcess = spawn(process.execPath, [...flags, cli, ...args], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  child.stdout!.resume();
  let ended = false;
  // the exit status as a shell reports it: 128 + the signal's number when the CLI ends by its signal
  const exit = new Promise<number | null>((resolve) => child.on('close', (code, sig) => {
    ended = true;
    resolve(code ?? (sig ? 128 + os.constants.signals[sig] : null));
  }));
  for (;;) {
    const hit = readdirSync(dir).find((e) => re.test(e));
    if (hit) {
      process.kill(child.pid!, 'SIGSTOP');
      break;
    }
    if (ended) assert.unreachable(`the run ended before ${re} appeared: ${stderr}`);
    await new Promise((r) => setTimeout(r, 1));
  }
  return {
    signal: (s: NodeJS.Signals) => process.kill(child.pid!, s),
    resume: () => process.kill(child.pid!, 'SIGCONT'),
    exit,
    stderr: () => stderr,
  };
}

// ---------------------------------------------------------------- merging

test('merge streams the real adapter into an f16 base: merged tensors equal lw.mergeAdapter bit for bit, the rest byte for byte', async () => {
  const w = workdir();
  await realAdapter(w.dir);
  writeFileSync(w.at('base.safetensors'), encodeSafetensors(distilbert(), { format: 'pt' }));
  const r = run(w.dir, 'merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', 'merged.safetensors', '--quiet');
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /merged 12 modules and replaced 4 tensors into merged\.safetensors/);
  const baseBytes = new Uint8Array(readFileSync(w.at('base.safetensors')));
  const base = await lw.loadTensors(baseBytes);
  assert.equal(base.skipped, ['distilbert.embeddings.position_ids (I64)'], 'non-float tensors are listed, not loaded');
  const one = await assertResolves(lw.loadTensors(baseBytes, { names: ['classifier.bias'] }), 'loading one tensor by name');
  assert.equal(Object.keys(one.tensors), ['classifier.bias']);
  for (const m of Object.values(one.tensors)) m.dispose();
  await assertRejectsTyped(lw.loadTensors(baseBytes, { names: ['distilbert.embeddings.position_ids'] }), LoRAError, ['"distilbert.embeddings.position_ids" is I64']);
  const adapter = await lw.loadAdapter({ weights: new Uint8Array(readFileSync(w.at('adapter/adapter_model.safetensors'))), config: readFileSync(w.at('adapter/adapter_config.json'), 'utf8') });
  lw.mergeAdapter(base.tensors, adapter);
  const merged = await readST(w.at('merged.safetensors'));
  const orig = await readST(w.at('base.safetensors'));
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
  const py = spawnSync('python3', [path.join(root, 'test/fixtures/peft_numpy_check.py'), 'base.safetensors', 'adapter', 'merged.safetensors'], { cwd: w.dir, encoding: 'utf8' });
  if (py.status === null || /No module named 'numpy'/.test(py.stderr ?? '')) console.log('  (numpy cross-check skipped: no python3 with numpy)');
  else assert.is(py.status, 0, `numpy check: ${py.stdout}${py.stderr}`);
  w.done();
});

test('merge --threads 1, 2 and auto (the default) write byte-identical files', async () => {
  const w = workdir();
  await realAdapter(w.dir);
  writeFileSync(w.at('base.safetensors'), encodeSafetensors(distilbert(), { format: 'pt' }));
  const files = ['1', '2', 'auto'].map((t) => {
    const out = `threads-${t}.safetensors`;
    const r = run(w.dir, 'merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', out, '--threads', t, '--quiet');
    assert.is(r.status, 0, r.stderr);
    return readFileSync(w.at(out));
  });
  assert.ok(files[0]!.equals(files[1]!) && files[0]!.equals(files[2]!), 'the same bytes whatever the thread count');
  w.done();
});

test('merge matches a float64 reference; --dtype f32 converts every float tensor; a sharded base is written sharded with its index', async () => {
  const w = workdir();
  tinyAdapter(w.dir);
  writeFileSync(w.at('base.safetensors'), encodeSafetensors(tinyTensors(), { format: 'pt' }));
  const r = run(w.dir, 'merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', 'merged.safetensors', '--quiet');
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /merged 2 modules and replaced 0 tensors into merged\.safetensors/);
  await assertTinyMerged(w.at('merged.safetensors'), 'q', 1);
  await assertTinyMerged(w.at('merged.safetensors'), 'k', 1);
  writeFileSync(w.at('base16.safetensors'), encodeSafetensors(tinyTensors().map((t) => (t.dtype === 'F32' ? { ...t, dtype: 'F16', data: f16(new Float32Array(t.data.slice().buffer)) } : t))));
  const r32 = run(w.dir, 'merge', '--base', 'base16.safetensors', '--adapter', 'adapter', '--out', 'merged32.safetensors', '--dtype', 'f32', '--quiet');
  assert.is(r32.status, 0, r32.stderr);
  assert.equal((await readST(w.at('merged32.safetensors'))).tensors.map((t) => t.dtype).sort(), ['F32', 'F32', 'I64'], 'floats became F32');
  const weightMap = tinySharded(w.dir);
  const rs = run(w.dir, 'merge', '--base', 'sharded', '--adapter', 'adapter', '--out', 'merged-sharded', '--quiet');
  assert.is(rs.status, 0, rs.stderr);
  assert.equal(readdirSync(w.at('merged-sharded')).sort(), [...SHARDS, 'model.safetensors.index.json']);
  const index = JSON.parse(readFileSync(w.at('merged-sharded/model.safetensors.index.json'), 'utf8'));
  assert.equal(index.weight_map, weightMap);
  assert.is(index.metadata.total_size, 2 * 30 * 4 + 16);
  const single = await readST(w.at('merged.safetensors'));
  for (const file of SHARDS) {
    const shard = await readST(w.at(`merged-sharded/${file}`));
    for (const t of shard.tensors) {
      assert.equal(Array.from((await shard.read(t.name)).bytes), Array.from((await single.read(t.name)).bytes), `${file}: ${t.name} as in the single-file merge`);
    }
  }
  assert.equal(hidden(w.dir), [], 'no temp left');
  w.done();
});

test('--multiplier: -1 works as "--multiplier -1" and "--multiplier=-1"; "", 1e-50, 1e39, NaN and words are refused; 0 writes the base with a note', async () => {
  const w = workdir();
  tinyAdapter(w.dir);
  writeFileSync(w.at('base.safetensors'), encodeSafetensors(tinyTensors(), { format: 'pt' }));
  const base = ['merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--quiet'];
  for (const [out, args] of [['neg1.safetensors', ['--multiplier', '-1']], ['neg2.safetensors', ['--multiplier=-1']]] as const) {
    const r = run(w.dir, ...base, '--out', out, ...args);
    assert.is(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
    await assertTinyMerged(w.at(out), 'q', -1);
  }
  assert.ok(readFileSync(w.at('neg1.safetensors')).equals(readFileSync(w.at('neg2.safetensors'))), 'both spellings write the same file');
  const half = run(w.dir, ...base, '--out', 'half.safetensors', '--multiplier', '-0.5');
  assert.is(half.status, 0, half.stderr);
  await assertTinyMerged(w.at('half.safetensors'), 'k', -0.5);
  expectFail(w.dir, [...base, '--out', 'x.safetensors', '--multiplier', ''], 2, ['--multiplier needs a number', 'empty']);
  expectFail(w.dir, [...base, '--out', 'x.safetensors', '--multiplier', '1e-50'], 2, ['1e-50', 'rounds to 0 in f32']);
  expectFail(w.dir, [...base, '--out', 'x.safetensors', '--multiplier', '-1e-50'], 2, ['rounds to 0 in f32']);
  expectFail(w.dir, [...base, '--out', 'x.safetensors', '--multiplier', '1e39'], 2, ['rounds to Infinity in f32']);
  expectFail(w.dir, [...base, '--out', 'x.safetensors', '--multiplier', '3e38'], 1, ['--multiplier 3e38 times the scale 2 of module', 'rounds to Infinity in f32']);
  for (const bad of ['NaN', 'Infinity', '-Infinity', 'two', '0x10', '0b11', '1,5']) expectFail(w.dir, [...base, '--out', 'x.safetensors', `--multiplier=${bad}`], 2, ['--multiplier must be a finite decimal number', bad]);
  expectFail(w.dir, [...base, '--out', 'x.safetensors', '--multiplier', '1', '--multiplier', '16'], 2, ['--multiplier is given twice']);
  assert.not.ok(existsSync(w.at('x.safetensors')), 'nothing written');
  const zero = run(w.dir, ...base, '--out', 'zero.safetensors', '--multiplier', '0');
  assert.is(zero.status, 0, zero.stderr);
  assert.match(zero.stderr, /--multiplier 0: the LoRA modules change nothing/);
  assert.ok(readFileSync(w.at('zero.safetensors')).equals(readFileSync(w.at('base.safetensors'))), 'multiplier 0: the base, byte for byte');
  w.done();
});

test('hostile names are shown escaped: no control character (ESC, NUL) reaches the terminal', async () => {
  const w = workdir();
  const name = 'base_model.model.q\u001b[31mRED\u001b[0m';
  const g = rng(3);
  writeFileSync(w.at('evil.safetensors'), encodeSafetensors([{ name: `${name}.lora_A.weight`, dtype: 'F32', shape: [2, 4], data: bytesOf(randomF32(g, 8)) }]));
  writeFileSync(w.at('adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 2, lora_alpha: 2 }));
  const r = run(w.dir, 'inspect', 'evil.safetensors');
  assert.is(r.status, 1, r.stderr);
  assert.not.match(r.stderr + r.stdout, /\u001b/, 'no raw ESC');
  assert.match(r.stderr, /\\u001b\[31mRED/);
  w.done();
});

test('an adapter saved by lw.saveAdapter merges through the CLI and passes the numpy-only check', async () => {
  const w = workdir();
  writeFileSync(w.at('base.safetensors'), encodeSafetensors(distilbert(), { format: 'pt' }));
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
  mkdirSync(w.at('mine'), { recursive: true });
  writeFileSync(w.at('mine/adapter_model.safetensors'), saved.weights);
  writeFileSync(w.at('mine/adapter_config.json'), JSON.stringify(saved.config, null, 2));
  const r = run(w.dir, 'merge', '--base', 'base.safetensors', '--adapter', 'mine', '--out', 'mine-merged.safetensors', '--quiet');
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /merged 4 modules/);
  const py = spawnSync('python3', [path.join(root, 'test/fixtures/peft_numpy_check.py'), 'base.safetensors', 'mine', 'mine-merged.safetensors'], { cwd: w.dir, encoding: 'utf8' });
  if (py.status === null || /No module named 'numpy'/.test(py.stderr ?? '')) console.log('  (numpy cross-check skipped: no python3 with numpy)');
  else assert.is(py.status, 0, `numpy check: ${py.stdout}${py.stderr}`);
  for (const layer of Object.values(layers)) {
    layer.W.dispose();
    layer.dispose();
  }
  w.done();
});

test('inspect lists an adapter folder, a kohya file and a plain model', async () => {
  const w = workdir();
  const a = run(w.dir, 'inspect', path.join(root, 'test/fixtures/adapters/peft-mixed'));
  assert.is(a.status, 0, a.stderr);
  assert.match(a.stdout, /PEFT LoRA adapter for generated\/tiny; task -; r 2, lora_alpha 4, rsLoRA/);
  assert.match(a.stdout, /4 modules, 99 parameters; 1 tensors replace base tensors/);
  assert.match(a.stdout, /m\.k {2}linear {2}3 {2}9 {2}5\.19615 {2}\[6, 5\] {2}bf16/);
  assert.match(a.stdout, /head\.weight {2}replaces the base tensor {2}\[2, 6\] {2}f32/);
  writeFileSync(w.at('base.safetensors'), encodeSafetensors(tinyTensors(), { format: 'pt' }));
  const m = run(w.dir, 'inspect', 'base.safetensors');
  assert.is(m.status, 0, m.stderr);
  assert.match(m.stdout, /3 tensors, 256 B, dtypes (I64, F32|F32, I64)/);
  assert.match(m.stdout, /m\.q\.weight {2}F32 {2}\[6, 5\]/);
  copyFileSync(path.join(root, 'test/fixtures/adapters/kohya.safetensors'), w.at('kohya.safetensors'));
  const k = run(w.dir, 'inspect', 'kohya.safetensors');
  assert.is(k.status, 0, k.stderr);
  assert.match(k.stdout, /kohya \/ sd-scripts LoRA/);
  assert.match(k.stdout, /lora_unet_down_blocks_0_attentions_0_proj_in {2}linear {2}4 {2}2 {2}0\.5/);
  assert.match(k.stdout, /lora_te_text_model_encoder_layers_0_mlp_fc1 {2}conv1x1 {2}2 {2}2 {2}1/);
  w.done();
});

// ---------------------------------------------------------------- errors

test('errors: one line that says what to do, exit 1 (2 for usage), and no output file left behind', async () => {
  const w = workdir();
  tinyAdapter(w.dir);
  writeFileSync(w.at('base.safetensors'), encodeSafetensors(tinyTensors(), { format: 'pt' }));
  writeFileSync(w.at('merged.safetensors'), 'an earlier output');
  const m = (out: string, ...more: string[]) => ['merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', out, ...more];
  expectFail(w.dir, ['merge', '--base', 'missing.safetensors', '--adapter', 'adapter', '--out', 'x.safetensors'], 2, ['--base missing.safetensors', 'no such file']);
  expectFail(w.dir, ['merge', '--base', 'base.safetensors', '--adapter', 'adapter'], 2, ['merge needs --out']);
  expectFail(w.dir, ['frobnicate'], 2, ['unknown command']);
  expectFail(w.dir, m('merged.safetensors'), 1, ['merged.safetensors exists', '--force']);
  assert.is(readFileSync(w.at('merged.safetensors'), 'utf8'), 'an earlier output');
  expectFail(w.dir, m('y.safetensors', '--dtype', 'f8'), 2, ['--dtype must be']);
  expectFail(w.dir, m('y.safetensors', '--threads', '0'), 2, ['--threads must be auto or a whole number']);
  const q = tinyTensors();
  for (const [name, tensors, words] of [
    ['noq.safetensors', q.slice(1), ['no tensor "m.q.weight"']],
    ['badshape.safetensors', [{ ...q[0]!, shape: [5, 6] }, ...q.slice(1)], ['[6, 5]', '[5, 6]']],
    ['i32.safetensors', [{ ...q[0]!, dtype: 'I32' }, ...q.slice(1)], ['"m.q.weight" is I32']],
  ] as const) {
    writeFileSync(w.at(name), encodeSafetensors(tensors as Tensor[]));
    expectFail(w.dir, ['merge', '--base', name, '--adapter', 'adapter', '--out', `out-${name}`], 1, [...words]);
    assert.not.ok(existsSync(w.at(`out-${name}`)), 'nothing written');
  }
  mkdirSync(w.at('empty'), { recursive: true });
  expectFail(w.dir, ['merge', '--base', 'empty', '--adapter', 'adapter', '--out', 'o2.safetensors'], 1, ['no model.safetensors or model.safetensors.index.json']);
  expectFail(w.dir, ['merge', '--base', 'base.safetensors', '--adapter', 'empty', '--out', 'o3.safetensors'], 1, ['no adapter_model.safetensors in this folder']);
  expectFail(w.dir, ['inspect'], 2, ['inspect needs a path']);
  const good = readFileSync(w.at('base.safetensors'));
  writeFileSync(w.at('truncated.safetensors'), good.subarray(0, good.length - 10));
  expectFail(w.dir, ['merge', '--base', 'truncated.safetensors', '--adapter', 'adapter', '--out', 'out-trunc.safetensors'], 1, ['safetensors: truncated.safetensors', 'data bytes']);
  assert.equal(hidden(w.dir), [], 'no temp file left behind');
  w.done();
});

test('errors: --out in a missing folder names the folder; --out a folder for a single-file base fails before any work', () => {
  const w = workdir();
  tinyAdapter(w.dir);
  writeFileSync(w.at('base.safetensors'), encodeSafetensors(tinyTensors(), { format: 'pt' }));
  const m = (out: string, ...more: string[]) => ['merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', out, ...more];
  const first = expectFail(w.dir, m('nodir/x.safetensors'), 1, ['--out nodir/x.safetensors', 'the folder nodir does not exist']);
  assert.not.match(first, /\.tmp/, 'names the folder, not a temp file');
  mkdirSync(w.at('outdir'));
  writeFileSync(w.at('outdir/keep.txt'), 'mine');
  const r = run(w.dir, ...m('outdir', '--force'));
  assert.is(r.status, 1, r.stderr);
  assert.match(r.stderr, /^lora-wasm: --out outdir is a folder, but a single-file base is merged into one file; name it, e\.g\. --out outdir\/model\.safetensors\n$/);
  assert.equal(readdirSync(w.at('outdir')), ['keep.txt']);
  expectFail(w.dir, m('outdir'), 1, ['--out outdir is a folder']);
  assert.equal(hidden(w.dir), []);
  w.done();
});

test('errors: a NUL byte in any path argument is a one-line error (exit 1), not a TypeError', () => {
  const w = workdir();
  tinyAdapter(w.dir);
  writeFileSync(w.at('base.safetensors'), encodeSafetensors(tinyTensors(), { format: 'pt' }));
  // argv cannot carry a NUL through exec: the child sets process.argv itself, then runs the CLI
  const runArgv = (...args: string[]) => spawnSync(process.execPath, [...flags, '--input-type=module', '-e',
    `process.argv = [process.execPath, ${JSON.stringify(cli)}, ...${JSON.stringify(args)}]; await import(${JSON.stringify(pathToFileURL(cli).href)});`,
  ], { cwd: w.dir, encoding: 'utf8', env });
  for (const [flag, args] of [
    ['--out', ['merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', 'a\0b.safetensors']],
    ['--base', ['merge', '--base', 'base.safetensors\0', '--adapter', 'adapter', '--out', 'x.safetensors']],
    ['--adapter', ['merge', '--base', 'base.safetensors', '--adapter', 'adapter\0/x', '--out', 'x.safetensors']],
    ['inspect', ['inspect', 'base.safetensors\0']],
  ] as const) {
    const r = runArgv(...args);
    assert.is(r.status, 1, `${flag}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^lora-wasm: ${flag} ".*\\\\u0000.*": a path cannot contain a NUL byte\\n$`), r.stderr);
  }
  assert.equal(readdirSync(w.dir).sort(), ['adapter', 'base.safetensors']);
  w.done();
});

test('errors: a broken shard index (shard names, weight_map, missing shards, headers that disagree) is a LoRAFormatError line', () => {
  const w = workdir();
  tinyAdapter(w.dir);
  tinySharded(w.dir);
  const idx = w.at('sharded/model.safetensors.index.json');
  const original = readFileSync(idx, 'utf8');
  const withIndex = (json: string, out: string, words: string[]) => {
    writeFileSync(idx, json);
    expectFail(w.dir, ['merge', '--base', 'sharded', '--adapter', 'adapter', '--out', out], 1, ['sharded/model.safetensors.index.json', ...words]);
    assert.not.ok(existsSync(w.at(out)), `${json}: nothing written`);
  };
  const map = (wm: unknown) => JSON.stringify({ metadata: {}, weight_map: wm });
  withIndex('{ nope', 'o1', ['not valid JSON']);
  withIndex('{"metadata": {}}', 'o1', ['no "weight_map" object']);
  withIndex(map(null), 'o1', ['no "weight_map" object']);
  withIndex(map([SHARDS[0]]), 'o1', ['no "weight_map" object']);
  withIndex(map({}), 'o1', ['"weight_map" is empty']);
  withIndex(map({ 'm.q.weight': 3 }), 'o1', ['weight_map["m.q.weight"] must be a shard file name (a string), got 3']);
  for (const bad of ['.', '..', '', 'a\0b.safetensors', '../escape.safetensors', 'sub/x.safetensors', 'sub\\x.safetensors', 'model.safetensors.index.json']) {
    withIndex(map({ 'm.q.weight': bad }), 'o1', ['bad shard name', JSON.stringify(bad)]);
  }
  withIndex(map({ 'm.q.weight': 'model-00009-of-00009.safetensors' }), 'o1', ['names the shard model-00009-of-00009.safetensors, but there is no file']);
  // the index against the shards' headers
  const wm = JSON.parse(original).weight_map as Record<string, string>;
  withIndex(map({ 'm.q.weight': SHARDS[1], 'm.k.weight': SHARDS[0], 'm.pos': SHARDS[1] }), 'o1', ['"m.q.weight"', `in ${SHARDS[1]}, but it is stored in ${SHARDS[0]}`]);
  withIndex(map({ ...wm, 'm.v.weight': SHARDS[1] }), 'o1', ['"m.v.weight"', SHARDS[1]!, 'no shard stores it']);
  writeFileSync(idx, original);
  const ts = tinyTensors();
  writeFileSync(w.at(`sharded/${SHARDS[1]}`), encodeSafetensors([ts[0]!, ...ts.slice(1)])); // m.q in both shards
  withIndex(original, 'o1', ['"m.q.weight" is stored in two shards', SHARDS[0]!, SHARDS[1]!]);
  assert.equal(hidden(w.dir), []);
  w.done();
});

// ---------------------------------------------------------------- no data lost

test('inputs are never outputs: the adapter\'s weights and config, the base, its shards and index, through symlinks and hard links', () => {
  const w = workdir();
  tinyAdapter(w.dir);
  writeFileSync(w.at('base.safetensors'), encodeSafetensors(tinyTensors(), { format: 'pt' }));
  tinySharded(w.dir);
  const snapshot = () => ['adapter/adapter_config.json', 'adapter/adapter_model.safetensors', 'base.safetensors', `sharded/${SHARDS[0]}`, `sharded/${SHARDS[1]}`, 'sharded/model.safetensors.index.json']
    .map((f) => readFileSync(w.at(f)).toString('base64'));
  const before = snapshot();
  symlinkSync('base.safetensors', w.at('link.safetensors'));
  symlinkSync('adapter', w.at('adapter-link'));
  symlinkSync('sharded', w.at('sharded-link'));
  linkSync(w.at('adapter/adapter_config.json'), w.at('hard.json'));
  const single = (out: string) => ['merge', '--base', 'base.safetensors', '--adapter', 'adapter', '--out', out, '--force'];
  expectFail(w.dir, single('adapter/adapter_config.json'), 1, ['--out adapter/adapter_config.json is one of the inputs (the adapter\'s adapter_config.json)', 'inputs are never overwritten']);
  expectFail(w.dir, single('adapter-link/adapter_config.json'), 1, ['is one of the inputs (the adapter\'s adapter_config.json)']);
  expectFail(w.dir, single('hard.json'), 1, ['is one of the inputs (the adapter\'s adapter_config.json)']);
  expectFail(w.dir, single('adapter/adapter_model.safetensors'), 1, ['is one of the inputs (the adapter\'s weights)']);
  expectFail(w.dir, single('base.safetensors'), 1, ['is one of the inputs (the base model)']);
  expectFail(w.dir, single('link.safetensors'), 1, ['is one of the inputs (the base model)']);
  // an adapter given as its .safetensors file: its adapter_config.json beside it is an input too
  expectFail(w.dir, ['merge', '--base', 'base.safetensors', '--adapter', 'adapter/adapter_model.safetensors', '--out', 'adapter/adapter_config.json', '--force'], 1, ['is one of the inputs (the adapter\'s adapter_config.json)']);
  // a sharded base: --out is a folder, and may not be or hold an input
  const sharded = (base: string, out: string) => ['merge', '--base', base, '--adapter', 'adapter', '--out', out, '--force'];
  expectFail(w.dir, sharded('sharded', 'sharded'), 1, ['--out sharded holds one of the inputs']);
  expectFail(w.dir, sharded('sharded', 'sharded-link'), 1, ['--out sharded-link holds one of the inputs']);
  expectFail(w.dir, sharded('sharded/model.safetensors.index.json', '.'), 1, ['--out . holds one of the inputs']);
  expectFail(w.dir, sharded('sharded', 'adapter'), 1, ['--out adapter holds one of the inputs (the adapter\'s']);
  assert.equal(snapshot(), before, 'every input as it was');
  assert.equal(hidden(w.dir), []);
  w.done();
});

test('sharded output is atomic: a failed run leaves no --out folder; --force swaps the whole folder in, or leaves the old one whole', () => {
  const w = workdir();
  tinyAdapter(w.dir);
  tinySharded(w.dir);
  // a failed plan: the adapter targets a tensor the base does not have
  tinyAdapter(w.dir, ['q', 'v'], 'adapter-v');
  expectFail(w.dir, ['merge', '--base', 'sharded', '--adapter', 'adapter-v', '--out', 'out'], 1, ['no tensor "m.v.weight"']);
  assert.not.ok(existsSync(w.at('out')), 'no --out folder after a failed plan');
  // a failure midway, in the second shard (a NaN in m.k under --safe), over an earlier output with --force
  tinySharded(w.dir, { kValue: Number.NaN }, 'sharded-nan');
  const first = run(w.dir, 'merge', '--base', 'sharded', '--adapter', 'adapter', '--out', 'out', '--quiet');
  assert.is(first.status, 0, first.stderr);
  writeFileSync(w.at('out/model-00003-of-00003.safetensors'), 'a shard of an older output');
  const old = Object.fromEntries(readdirSync(w.at('out')).map((f) => [f, readFileSync(w.at(`out/${f}`)).toString('base64')]));
  const r = run(w.dir, 'merge', '--base', 'sharded-nan', '--adapter', 'adapter', '--out', 'out', '--force', '--safe', '--quiet');
  assert.is(r.status, 1, r.stderr);
  assert.equal(Object.fromEntries(readdirSync(w.at('out')).map((f) => [f, readFileSync(w.at(`out/${f}`)).toString('base64')])), old, 'the old output, whole');
  assert.equal(hidden(w.dir), [], 'no temp folder left');
  // --force succeeds: the folder is exactly the new output (no shard of the older one mixed in)
  const ok = run(w.dir, 'merge', '--base', 'sharded', '--adapter', 'adapter', '--out', 'out', '--force', '--multiplier', '-1', '--quiet');
  assert.is(ok.status, 0, ok.stderr);
  assert.equal(readdirSync(w.at('out')).sort(), [...SHARDS, 'model.safetensors.index.json']);
  assert.equal(hidden(w.dir), [], 'the old folder is gone');
  // --force replaces only a folder of shards
  writeFileSync(w.at('out/notes.txt'), 'mine');
  expectFail(w.dir, ['merge', '--base', 'sharded', '--adapter', 'adapter', '--out', 'out', '--force'], 1, ['--out out holds notes.txt, not model shards']);
  assert.is(readFileSync(w.at('out/notes.txt'), 'utf8'), 'mine');
  w.done();
});

test('without --force a run never replaces an output that appeared while it ran (file and folder); the temp is removed', async () => {
  const w = workdir();
  tinyAdapter(w.dir);
  writeFileSync(w.at('big.safetensors'), encodeSafetensors(tinyTensors({ filler: 48 })));
  tinySharded(w.dir, { filler: 48 }, 'big-sharded');
  const file = await startAndFreeze(w.dir, ['merge', '--base', 'big.safetensors', '--adapter', 'adapter', '--out', 'out.safetensors', '--dtype', 'f16', '--threads', '1', '--quiet'], /^\.out\.safetensors\.\d+\.[0-9a-z]+\.tmp$/);
  writeFileSync(w.at('out.safetensors'), 'the other run\'s output');
  file.resume();
  assert.is(await file.exit, 1, file.stderr());
  assert.match(file.stderr(), /^lora-wasm: \S*\/out\.safetensors appeared while this output was being written; it was not replaced/);
  assert.is(readFileSync(w.at('out.safetensors'), 'utf8'), 'the other run\'s output');
  const dir = await startAndFreeze(w.dir, ['merge', '--base', 'big-sharded', '--adapter', 'adapter', '--out', 'out', '--dtype', 'f16', '--threads', '1', '--quiet'], /^\.out\.\d+\.[0-9a-z]+\.tmp$/);
  mkdirSync(w.at('out'));
  writeFileSync(w.at('out/theirs.safetensors'), 'the other run\'s shard');
  dir.resume();
  assert.is(await dir.exit, 1, dir.stderr());
  assert.match(dir.stderr(), /^lora-wasm: \S*\/out appeared while this output was being written; it was not replaced/);
  assert.equal(readdirSync(w.at('out')), ['theirs.safetensors']);
  assert.equal(hidden(w.dir), [], 'no temp left');
  w.done();
});

test('SIGTERM and SIGINT mid-run remove the unfinished output and exit 143 and 130; stale temps of dead runs are cleared', async () => {
  const w = workdir();
  tinyAdapter(w.dir);
  writeFileSync(w.at('big.safetensors'), encodeSafetensors(tinyTensors({ filler: 48 })));
  tinySharded(w.dir, { filler: 48 }, 'big-sharded');
  for (const [signal, code, args, re] of [
    ['SIGTERM', 143, ['--base', 'big.safetensors', '--out', 'out.safetensors'], /^\.out\.safetensors\.\d+\.[0-9a-z]+\.tmp$/],
    ['SIGINT', 130, ['--base', 'big-sharded', '--out', 'out'], /^\.out\.\d+\.[0-9a-z]+\.tmp$/],
  ] as const) {
    const child = await startAndFreeze(w.dir, ['merge', ...args, '--adapter', 'adapter', '--dtype', 'f16', '--threads', '1', '--quiet'], re);
    assert.ok(hidden(w.dir).some((e) => re.test(e)), 'the temp is there mid-run');
    child.signal(signal);
    child.resume();
    assert.is(await child.exit, code, child.stderr());
    assert.match(child.stderr(), new RegExp(`lora-wasm: stopped by ${signal}; the unfinished output was removed`));
    assert.equal(hidden(w.dir), [], `${signal}: no temp left`);
    assert.not.ok(existsSync(w.at(args[3])), `${signal}: no output`);
  }
  // what a killed run left (its pid is dead), what a live run has open, and files not ours
  const dead = 999_999_999; // above any pid_max
  writeFileSync(w.at(`.out.safetensors.${dead}.k1.tmp`), 'left by a killed run');
  mkdirSync(w.at(`.out.${dead}.k2.tmp`));
  writeFileSync(w.at(`.out.safetensors.${process.pid}.k3.tmp`), 'a live run\'s temp');
  writeFileSync(w.at('.out.safetensors.bak'), 'not ours');
  writeFileSync(w.at(`.other.safetensors.${dead}.k4.tmp`), 'another target\'s');
  const r = run(w.dir, 'merge', '--base', 'big.safetensors', '--adapter', 'adapter', '--out', 'out.safetensors');
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stderr, /cleared what a stopped run left beside --out: \.out\.safetensors\.999999999\.k1\.tmp/);
  const rs = run(w.dir, 'merge', '--base', 'big-sharded', '--adapter', 'adapter', '--out', 'out', '--quiet');
  assert.is(rs.status, 0, rs.stderr);
  assert.equal(hidden(w.dir).sort(), ['.other.safetensors.999999999.k4.tmp', '.out.safetensors.bak', `.out.safetensors.${process.pid}.k3.tmp`].sort());
  w.done();
});

test('atomicFile and atomicFolder: no replace without force, a swap with force, stale temps cleared and a cut-short swap put back', async () => {
  const w = workdir();
  // a file: refused up front, and at commit when the target appeared meanwhile (the temp is removed)
  writeFileSync(w.at('taken'), 'theirs');
  await assertRejectsTyped(atomicFile(w.at('taken')), LoRAEnvironmentError, ['taken exists; pass --force']);
  const f = await atomicFile(w.at('late'));
  await f.write(new Uint8Array([1, 2]));
  writeFileSync(w.at('late'), 'theirs');
  await assertRejectsTyped(f.commit(), LoRAEnvironmentError, ['late appeared while this output was being written']);
  assert.is(readFileSync(w.at('late'), 'utf8'), 'theirs');
  const g = await atomicFile(w.at('late'), true);
  await g.write(new Uint8Array([3]));
  await assertResolves(g.commit(), 'a forced commit');
  assert.equal([...readFileSync(w.at('late'))], [3]);
  const never = await atomicFile(w.at('never'));
  await never.write(new Uint8Array(4));
  await never.abort();
  assert.not.ok(existsSync(w.at('never')), 'abort: nothing appears');
  // a folder: appears whole; a forced commit swaps; without force, an appeared folder is not replaced
  const d = await atomicFolder(w.at('dir'));
  const a = await d.file('a');
  await a.write(new Uint8Array([1]));
  await a.commit();
  assert.not.ok(existsSync(w.at('dir')), 'nothing at the target before commit');
  await assertResolves(d.commit(), 'a folder commit');
  assert.equal(readdirSync(w.at('dir')), ['a']);
  const d2 = await atomicFolder(w.at('dir'), true);
  await (await d2.file('b')).commit();
  await assertResolves(d2.commit(), 'a forced folder commit');
  assert.equal(readdirSync(w.at('dir')), ['b']);
  const d3 = await atomicFolder(w.at('dir2'));
  mkdirSync(w.at('dir2'));
  await assertRejectsTyped(d3.commit(), LoRAEnvironmentError, ['dir2 appeared while this output was being written']);
  assert.equal(hidden(w.dir), []);
  // stale temps: removed if their pid is dead; a forced swap cut short between its renames is put back
  const dead = 999_999_999;
  mkdirSync(w.at(`.gone.${dead}.x1.old`));
  writeFileSync(w.at(`.gone.${dead}.x1.old/shard.safetensors`), 'the old output');
  writeFileSync(w.at(`.dir.${dead}.x2.tmp`), '');
  mkdirSync(w.at(`.dir.${dead}.x3.old`));
  assert.equal(await clearStaleTemps(w.at('gone')), [`.gone.${dead}.x1.old`]);
  assert.is(readFileSync(w.at('gone/shard.safetensors'), 'utf8'), 'the old output');
  assert.equal((await clearStaleTemps(w.at('dir'))).sort(), [`.dir.${dead}.x2.tmp`, `.dir.${dead}.x3.old`]);
  assert.equal(readdirSync(w.at('dir')), ['b'], 'the committed output is kept');
  assert.equal(hidden(w.dir), []);
  w.done();
});

test.run();
