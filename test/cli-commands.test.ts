// The adapter algebra on the command line: extract, resize, combine, and convert between kohya and PEFT.
// Each output is checked against an independent reference (extract: the optimal rank-k error of a
// difference with a known spectrum) or against the API's result bit for bit (resize, combine,
// convert), every refusal is one line with its exit code, and no run leaves a temp behind.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { type Adapter, encodeSafetensors } from '../src/index.js';
import { Adapter as AdapterClass } from '../src/adapters/adapter.js';
import { kohyaToPeft } from '../src/adapters/convert-kohya.js';
import { expectFail, hidden, root, run, workdir } from './fixtures/cli.js';
import { lwUnderTest, randomF32, rng } from './helpers.js';

const lw = await lwUnderTest();
type Tensor = { name: string; dtype: string; shape: number[]; data: Uint8Array };
const bytesOf = (x: Float32Array | Uint16Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
const f32 = (b: Uint8Array) => new Float32Array(b.slice().buffer);
const read = (file: string) => new Uint8Array(readFileSync(file));
const json = (file: string) => JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
const ok = (r: ReturnType<typeof run>) => assert.is(r.status, 0, r.stderr);

// ---------------------------------------------------------------- a base and a tuned model
/** Orthonormal columns [rows, n] (column-major f64), Gram–Schmidt twice on seeded vectors. */
function orthonormal(g: () => number, rows: number, n: number): Float64Array {
  const q = new Float64Array(rows * n);
  for (let j = 0; j < n; j++) {
    const c = q.subarray(j * rows, (j + 1) * rows);
    for (let i = 0; i < rows; i++) c[i] = g() - 0.5;
    for (let pass = 0; pass < 2; pass++) {
      for (let p = 0; p < j; p++) {
        const o = q.subarray(p * rows, (p + 1) * rows);
        let d = 0;
        for (let i = 0; i < rows; i++) d += o[i]! * c[i]!;
        for (let i = 0; i < rows; i++) c[i]! -= d * o[i]!;
      }
      const norm = Math.hypot(...c);
      for (let i = 0; i < rows; i++) c[i]! /= norm;
    }
  }
  return q;
}
/** ΔW = U·diag(σ)·Vᵀ with σᵢ = 0.5·0.7ⁱ: a known spectrum, so the optimal rank-k error is √Σ_{i≥k} σᵢ². */
const SIGMA = (n: number) => Float64Array.from({ length: n }, (_, i) => 0.5 * 0.7 ** i);
function knownDelta(seed: number, rows: number, cols: number): Float64Array {
  const g = rng(seed);
  const n = Math.min(rows, cols);
  const u = orthonormal(g, rows, n);
  const v = orthonormal(g, cols, n);
  const s = SIGMA(n);
  const d = new Float64Array(rows * cols);
  for (let k = 0; k < n; k++) for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) d[i * cols + j]! += u[k * rows + i]! * s[k]! * v[k * cols + j]!;
  return d;
}
const optimal = (rows: number, cols: number, k: number) => Math.sqrt(SIGMA(Math.min(rows, cols)).slice(k).reduce((a, x) => a + x * x, 0));

/** Changed modules (F32, known spectra), an unchanged one, a small one, a 1-D norm and an I64 tensor. */
const CHANGED: Record<string, [number, number]> = { 'layers.0.q_proj': [48, 40], 'layers.0.v_proj': [32, 40], 'layers.0.tiny': [6, 4] };
function models(opts: { tunedShape?: boolean; dropTuned?: string } = {}): { base: Tensor[]; tuned: Tensor[] } {
  const g = rng(5);
  const base: Tensor[] = [];
  const tuned: Tensor[] = [];
  let seed = 20;
  for (const [m, [rows, cols]] of Object.entries(CHANGED)) {
    const w = randomF32(g, rows * cols, 0.1);
    const d = knownDelta(seed++, rows, cols);
    const t = Float32Array.from(w, (x, i) => x + d[i]!);
    base.push({ name: `${m}.weight`, dtype: 'F32', shape: [rows, cols], data: bytesOf(w) });
    if (opts.dropTuned === m) continue;
    const shape = opts.tunedShape && m === 'layers.0.v_proj' ? [cols, rows] : [rows, cols];
    tuned.push({ name: `${m}.weight`, dtype: 'F32', shape, data: bytesOf(t) });
  }
  const same = bytesOf(randomF32(g, 24 * 40, 0.1));
  for (const ts of [base, tuned]) {
    ts.push({ name: 'layers.1.q_proj.weight', dtype: 'F32', shape: [24, 40], data: same });
    ts.push({ name: 'layers.0.norm.weight', dtype: 'F32', shape: [40], data: bytesOf(randomF32(g, 40, 1)) });
    ts.push({ name: 'position_ids', dtype: 'I64', shape: [2], data: new Uint8Array(16) });
  }
  return { base, tuned };
}
/** base.safetensors, and tuned/ as two shards with an index. */
function writeModels(at: (p: string) => string, opts: Parameters<typeof models>[0] = {}): void {
  const { base, tuned } = models(opts);
  writeFileSync(at('base.safetensors'), encodeSafetensors(base, { format: 'pt' }));
  mkdirSync(at('tuned'), { recursive: true });
  const shards = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
  const parts = [tuned.slice(0, 2), tuned.slice(2)];
  const weightMap: Record<string, string> = {};
  parts.forEach((p, i) => {
    writeFileSync(at(`tuned/${shards[i]}`), encodeSafetensors(p, { format: 'pt' }));
    for (const t of p) weightMap[t.name] = shards[i]!;
  });
  writeFileSync(at('tuned/model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
}

/** A PEFT adapter folder's Adapter. */
async function loadDir(dir: string): Promise<Adapter> {
  const cfg = path.join(dir, 'adapter_config.json');
  return lw.loadAdapter({ weights: read(path.join(dir, 'adapter_model.safetensors')), ...(existsSync(cfg) ? { config: readFileSync(cfg, 'utf8') } : {}) });
}
/** ‖(tuned − base) − s·A·B‖_F in f64, from the model tensors and the adapter's module. */
function residual(module: string, a: Adapter): number {
  const { base, tuned } = models();
  const w = f32(base.find((t) => t.name === `${module}.weight`)!.data);
  const t = f32(tuned.find((x) => x.name === `${module}.weight`)!.data);
  const m = a.modules.find((x) => x.name === module)!;
  const [A, B] = [m.A.toFloat32(), m.B.toFloat32()];
  const cols = m.B.cols;
  let e = 0;
  for (let i = 0; i < m.A.rows; i++) {
    for (let j = 0; j < cols; j++) {
      let s = 0;
      for (let k = 0; k < m.r; k++) s += A[i * m.r + k]! * B[k * cols + j]!;
      const x = t[i * cols + j]! - w[i * cols + j]! - m.scale * s;
      e += x * x;
    }
  }
  return Math.sqrt(e);
}

test('extract --rank k: a PEFT folder keyed by module, each within 1.05× of the optimal rank-k error; zero modules skipped and said; sharded tuned model', async () => {
  const w = workdir();
  try {
    writeModels(w.at);
    const r = run(w.dir, 'extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--rank', '5', '--out', 'extracted');
    ok(r);
    assert.match(r.stdout, /extracted 3 modules \(ranks 4–5; .*\) into extracted; skipped 1 with zero difference/);
    assert.match(r.stderr, /skipped 1 modules whose difference is zero: layers\.1\.q_proj/);
    assert.match(r.stderr, /--rank 5 exceeds min\(out, in\) of 1 modules; they keep their full rank: layers\.0\.tiny \(4\)/);
    const config = json(w.at('extracted/adapter_config.json'));
    assert.is(config.r, 5);
    assert.equal(config.rank_pattern, { 'layers\\.0\\.tiny': 4 });
    const a = await loadDir(w.at('extracted'));
    assert.equal(a.modules.map((m) => m.name).sort(), ['layers.0.q_proj', 'layers.0.tiny', 'layers.0.v_proj']);
    for (const m of a.modules) {
      const [rows, cols] = CHANGED[m.name]!;
      const k = Math.min(5, rows, cols);
      assert.is(m.r, k, m.name);
      const best = optimal(rows, cols, k);
      const got = residual(m.name, a);
      assert.ok(got <= 1.05 * best + 1e-5, `${m.name}: error ${got} vs optimal ${best}`);
    }
    a.dispose();
    assert.equal(hidden(w.dir), [], 'no temp left behind');
  } finally {
    w.done();
  }
});

test('extract --energy e and --modules: ranks differ per module (rank_pattern), only the modules the regex finds', async () => {
  const w = workdir();
  try {
    writeModels(w.at);
    ok(run(w.dir, 'extract', '--base', 'base.safetensors', '--tuned', 'tuned/model.safetensors.index.json', '--energy', '0.99', '--modules', 'q_proj|tiny', '--out', 'e', '--quiet'));
    const a = await loadDir(w.at('e'));
    assert.equal(a.modules.map((m) => m.name).sort(), ['layers.0.q_proj', 'layers.0.tiny']);
    // σᵢ = 0.5·0.7ⁱ: the fewest keeping 99 % of Σσ²
    const want = (n: number) => {
      const s = SIGMA(n).map((x) => x * x);
      const total = s.reduce((x, y) => x + y, 0);
      let acc = 0;
      for (let k = 0; k < n; k++) if ((acc += s[k]!) >= 0.99 * total * (1 - 1e-9)) return k + 1;
      return n;
    };
    for (const m of a.modules) assert.is(m.r, want(Math.min(...CHANGED[m.name]!)), m.name);
    assert.ok(Object.keys(json(w.at('e/adapter_config.json')).rank_pattern as object).length === 1);
    a.dispose();
    assert.equal(hidden(w.dir), []);
  } finally {
    w.done();
  }
});

test('extract refuses: a missing module, a shape mismatch, an existing --out, an input as --out, bad flags', () => {
  const w = workdir();
  try {
    writeModels(w.at, { dropTuned: 'layers.0.v_proj' });
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--rank', '2', '--out', 'x'], 1, ['tuned model has no tensor', 'layers.0.v_proj.weight']);
    writeModels(w.at, { tunedShape: true });
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--rank', '2', '--out', 'x'], 1, ['"layers.0.v_proj.weight" is [32, 40] in the base model but [40, 32]']);
    writeModels(w.at);
    mkdirSync(w.at('taken'));
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--rank', '2', '--out', 'taken'], 1, ['exists; pass --force']);
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--rank', '2', '--out', 'tuned'], 1, ['holds one of the inputs']);
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--rank', '2', '--out', 'base.safetensors'], 1, ['is one of the inputs']);
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--out', 'x'], 2, ['exactly one of --rank k', '--energy e']);
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--rank', '2', '--energy', '0.5', '--out', 'x'], 2, ['exactly one of --rank']);
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--rank', '0', '--out', 'x'], 2, ['--rank must be a whole number ≥ 1']);
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--energy', '1.5', '--out', 'x'], 2, ['--energy must be a fraction in (0, 1]']);
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--rank', '2', '--modules', '(', '--out', 'x'], 2, ['--modules must be a regular expression']);
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--rank', '2', '--modules', 'nothing_here', '--out', 'x'], 1, ['no 2-D float']);
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'nope', '--rank', '2', '--out', 'x'], 2, ['--tuned nope: no such file']);
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--rank', '2', '--out', 'x'], 2, ['extract needs --tuned']);
    expectFail(w.dir, ['extract', '--base', 'base.safetensors', '--tuned', 'tuned', '--rank', '2', '--out', 'x', '--bogus'], 2, ['--bogus']);
    assert.ok(!existsSync(w.at('x')));
    assert.equal(hidden(w.dir), [], 'no temp left behind');
  } finally {
    w.done();
  }
});

// ---------------------------------------------------------------- adapters for resize, combine, convert
const MODULES = { 'model.layers.0.self_attn.q_proj': [12, 10], 'model.layers.0.self_attn.v_proj': [8, 10] } as const;
/** A PEFT folder (written by lw.saveAdapter) with rank 4 (v_proj: rank_pattern 3), lora_alpha 8. */
async function peftDir(dir: string, seed: number, ranks: Record<string, number> = { 'model.layers.0.self_attn.v_proj': 3 }): Promise<void> {
  const g = rng(seed);
  const ts: Tensor[] = [];
  for (const [m, [out, inp]] of Object.entries(MODULES)) {
    const r = ranks[m] ?? 4;
    ts.push({ name: `base_model.model.${m}.lora_A.weight`, dtype: 'F32', shape: [r, inp], data: bytesOf(randomF32(g, r * inp, 0.5)) });
    ts.push({ name: `base_model.model.${m}.lora_B.weight`, dtype: 'F32', shape: [out, r], data: bytesOf(randomF32(g, out * r, 0.5)) });
  }
  const rank_pattern = Object.fromEntries(Object.entries(ranks).filter(([, r]) => r !== 4));
  const a = await lw.loadAdapter({ weights: encodeSafetensors(ts), config: { peft_type: 'LORA', r: 4, lora_alpha: 8, rank_pattern, base_model_name_or_path: 'tiny/base' } });
  const { config, weights } = lw.saveAdapter(a, { baseModel: 'tiny/base' });
  a.dispose();
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'adapter_model.safetensors'), weights);
  writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify(config));
}
/** The API's PEFT files for an adapter, as the CLI writes them (baseModel and task type from the first input). */
const apiFiles = (a: Adapter) => lw.saveAdapter(a, { baseModel: 'tiny/base', taskType: null });
function assertSameFolder(dir: string, a: Adapter): void {
  const { config, weights } = apiFiles(a);
  assert.ok(Buffer.from(read(path.join(dir, 'adapter_model.safetensors'))).equals(Buffer.from(weights)), `${dir}: the API's bytes`);
  assert.equal(json(path.join(dir, 'adapter_config.json')), config);
}
/** Every module's factors and scale equal, bit for bit (modules matched by name: a file stores them sorted). */
function assertSameAdapter(got: Adapter, want: Adapter): void {
  assert.equal(got.modules.map((m) => m.name).sort(), want.modules.map((m) => m.name).sort());
  got.modules.forEach((m) => {
    const w = want.modules.find((x) => x.name === m.name)!;
    assert.is(m.kind, w.kind, m.name);
    assert.is(m.scale, w.scale, m.name);
    assert.ok(Buffer.from(bytesOf(m.A.toArray())).equals(Buffer.from(bytesOf(w.A.toArray()))), `${m.name} A`);
    assert.ok(Buffer.from(bytesOf(m.B.toArray())).equals(Buffer.from(bytesOf(w.B.toArray()))), `${m.name} B`);
  });
}

test('resize --rank / --energy: the API\'s resizeAdapter + saveAdapter bytes; a kohya file resizes into a kohya file', async () => {
  const w = workdir();
  try {
    await peftDir(w.at('a'), 1);
    const a = await loadDir(w.at('a'));
    for (const [flag, value, opts] of [['--rank', '2', { rank: 2 }], ['--energy', '0.9', { energy: 0.9 }]] as const) {
      const out = `r${flag}`;
      const r = run(w.dir, 'resize', '--adapter', 'a', flag, value, '--out', out);
      ok(r);
      assert.match(r.stdout, /resized 2 modules/);
      const want = lw.resizeAdapter(a, opts);
      assertSameFolder(w.at(out), want.adapter);
      want.adapter.dispose();
    }
    copyFileSync(path.join(root, 'test/fixtures/adapters/kohya.safetensors'), w.at('kohya.safetensors'));
    ok(run(w.dir, 'resize', '--adapter', 'kohya.safetensors', '--rank', '1', '--out', 'k1.safetensors', '--quiet'));
    const k = await lw.loadAdapter({ weights: read(w.at('kohya.safetensors')) });
    const want = lw.resizeAdapter(k, { rank: 1 });
    const got = await lw.loadAdapter({ weights: read(w.at('k1.safetensors')) });
    assert.is(got.format, 'kohya');
    assertSameAdapter(got, want.adapter);
    for (const x of [a, k, got, want.adapter]) x.dispose();
    assert.equal(hidden(w.dir), []);
  } finally {
    w.done();
  }
});

test('resize refuses: no --rank/--energy, an existing --out, the adapter as --out, a file as a PEFT --out, a llama.cpp adapter', async () => {
  const w = workdir();
  try {
    await peftDir(w.at('a'), 1);
    expectFail(w.dir, ['resize', '--adapter', 'a', '--out', 'x'], 2, ['exactly one of --rank']);
    expectFail(w.dir, ['resize', '--adapter', 'a', '--rank', 'two', '--out', 'x'], 2, ['--rank must be a whole number']);
    expectFail(w.dir, ['resize', '--adapter', 'a', '--rank', '2'], 2, ['resize needs --out']);
    expectFail(w.dir, ['resize', '--adapter', 'missing', '--rank', '2', '--out', 'x'], 2, ['--adapter missing: no such file']);
    expectFail(w.dir, ['resize', '--adapter', 'a', '--rank', '2', '--out', 'a'], 1, ['holds one of the inputs']);
    expectFail(w.dir, ['resize', '--adapter', 'a', '--rank', '2', '--out', 'a/adapter_model.safetensors'], 1, ['is one of the inputs']);
    writeFileSync(w.at('file'), 'x');
    expectFail(w.dir, ['resize', '--adapter', 'a', '--rank', '2', '--out', 'file'], 2, ['a PEFT adapter is written to a folder']);
    mkdirSync(w.at('taken'));
    expectFail(w.dir, ['resize', '--adapter', 'a', '--rank', '2', '--out', 'taken'], 1, ['exists; pass --force']);
    mkdirSync(w.at('other'));
    writeFileSync(w.at('other/notes.txt'), 'keep');
    expectFail(w.dir, ['resize', '--adapter', 'a', '--rank', '2', '--out', 'other', '--force'], 1, ['not a PEFT adapter\'s files']);
    ok(run(w.dir, 'resize', '--adapter', 'a', '--rank', '2', '--out', 'taken', '--force', '--quiet'));
    assert.ok(existsSync(w.at('taken/adapter_config.json')));
    assert.equal(hidden(w.dir), []);
  } finally {
    w.done();
  }
});

const COMBINE: [string, string[], object][] = [
  ['cat', [], { method: 'cat' }],
  ['linear', [], { method: 'linear' }],
  ['svd', ['--rank', '3'], { method: 'svd', rank: 3 }],
  ['ties', ['--density', '0.5', '--rank', '2'], { method: 'ties', density: 0.5, rank: 2 }],
  ['dare_linear', ['--density', '0.7', '--seed', '9'], { method: 'dare_linear', density: 0.7, seed: 9 }],
  ['dare_ties', ['--density', '0.6', '--rank', '3', '--seed', '4'], { method: 'dare_ties', density: 0.6, rank: 3, seed: 4 }],
  ['magnitude_prune', ['--density', '0.3'], { method: 'magnitude_prune', density: 0.3 }],
];

test('combine, every method: the API\'s combineAdapters + saveAdapter bytes (a negative weight too)', async () => {
  const w = workdir();
  try {
    await peftDir(w.at('a'), 1);
    await peftDir(w.at('b'), 2);
    const [a, b] = [await loadDir(w.at('a')), await loadDir(w.at('b'))];
    for (const [method, extra, opts] of COMBINE) {
      const out = `c-${method}`;
      const r = run(w.dir, 'combine', 'a', 'b', '--weights', '-0.5,1.25', '--method', method, ...extra, '--out', out);
      ok(r);
      assert.match(r.stdout, new RegExp(`combined 2 adapters by ${method} \\(weights -0\\.5, 1\\.25\\): 2 modules`));
      const want = lw.combineAdapters([{ adapter: a, weight: -0.5 }, { adapter: b, weight: 1.25 }], opts as never);
      assertSameFolder(w.at(out), want);
      want.dispose();
    }
    a.dispose();
    b.dispose();
    assert.equal(hidden(w.dir), []);
  } finally {
    w.done();
  }
});

test('combine refuses: a method\'s missing or unused options, bad weights, unlike adapters, an input as --out, an existing --out', async () => {
  const w = workdir();
  try {
    await peftDir(w.at('a'), 1);
    await peftDir(w.at('b'), 2);
    await peftDir(w.at('r'), 3, { 'model.layers.0.self_attn.v_proj': 2 });
    const base = ['combine', 'a', 'b', '--weights', '1,1'];
    expectFail(w.dir, [...base, '--method', 'ties', '--out', 'x'], 2, ['--method ties needs --density']);
    expectFail(w.dir, [...base, '--method', 'cat', '--density', '0.5', '--out', 'x'], 2, ['--density applies to ties, dare_linear, dare_ties, magnitude_prune, not --method cat']);
    expectFail(w.dir, [...base, '--method', 'linear', '--rank', '2', '--out', 'x'], 2, ['--rank applies to svd']);
    expectFail(w.dir, [...base, '--method', 'svd', '--seed', '1', '--out', 'x'], 2, ['--seed applies to']);
    expectFail(w.dir, [...base, '--method', 'mean', '--out', 'x'], 2, ['--method must be one of cat, linear']);
    expectFail(w.dir, [...base, '--method', 'ties', '--density', '0', '--out', 'x'], 2, ['--density must be a fraction']);
    expectFail(w.dir, ['combine', 'a', 'b', '--weights', '1', '--method', 'cat', '--out', 'x'], 2, ['--weights has 1 values for 2 adapters']);
    expectFail(w.dir, ['combine', 'a', 'b', '--weights', '1,x', '--method', 'cat', '--out', 'x'], 2, ['--weights must be finite decimal numbers']);
    expectFail(w.dir, ['combine', '--weights', '1', '--method', 'cat', '--out', 'x'], 2, ['combine needs the adapters']);
    expectFail(w.dir, ['combine', 'a', 'b', '--method', 'cat', '--out', 'x'], 2, ['combine needs --weights']);
    expectFail(w.dir, ['combine', 'a', 'r', '--weights', '1,1', '--method', 'linear', '--out', 'x'], 1, ['\'linear\' needs equal ranks']);
    mkdirSync(w.at('one'));
    await peftDir(w.at('one'), 4);
    const only = await loadDir(w.at('one'));
    // an adapter with one module fewer
    const m0 = only.modules[0]!;
    const { config, weights } = lw.saveAdapter(new AdapterClass('peft', [m0], [], {}), { baseModel: 'tiny/base' });
    only.dispose();
    mkdirSync(w.at('fewer'));
    writeFileSync(w.at('fewer/adapter_model.safetensors'), weights);
    writeFileSync(w.at('fewer/adapter_config.json'), JSON.stringify(config));
    expectFail(w.dir, ['combine', 'a', 'fewer', '--weights', '1,1', '--method', 'cat', '--out', 'x'], 1, ['fewer has no module model.layers.0.self_attn.v_proj']);
    expectFail(w.dir, [...base, '--method', 'cat', '--out', 'b'], 1, ['holds one of the inputs']);
    mkdirSync(w.at('taken'));
    expectFail(w.dir, [...base, '--method', 'cat', '--out', 'taken'], 1, ['exists; pass --force']);
    assert.ok(!existsSync(w.at('x')));
    assert.equal(hidden(w.dir), []);
  } finally {
    w.done();
  }
});

// ---------------------------------------------------------------- convert: kohya ⇄ PEFT
/** A base model with every module's weight (names as in MODULES), for kohya → PEFT. */
function baseModel(extra: Tensor[] = []): Uint8Array {
  const ts: Tensor[] = Object.entries(MODULES).map(([m, [out, inp]]) => ({ name: `${m}.weight`, dtype: 'F32', shape: [out, inp], data: new Uint8Array(out * inp * 4) }));
  ts.push({ name: 'model.norm.weight', dtype: 'F32', shape: [10], data: new Uint8Array(40) }, ...extra);
  return encodeSafetensors(ts);
}

test('convert PEFT → kohya → PEFT: lora_te_<module with . as _>, the factors\' bits and scales kept; back to the API\'s PEFT bytes', async () => {
  const w = workdir();
  try {
    await peftDir(w.at('a'), 1);
    const r = run(w.dir, 'convert', '--adapter', 'a', '--out', 'k.safetensors');
    ok(r);
    assert.match(r.stdout, /converted 2 PEFT modules into the kohya file k\.safetensors/);
    const peft = await loadDir(w.at('a'));
    const k = await lw.loadAdapter({ weights: read(w.at('k.safetensors')) });
    assert.is(k.format, 'kohya');
    assert.equal(k.modules.map((m) => m.name), peft.modules.map((m) => `lora_te_${m.name.replaceAll('.', '_')}`));
    k.modules.forEach((m, i) => {
      const p = peft.modules[i]!;
      assert.is(m.scale, p.scale);
      assert.ok(Buffer.from(bytesOf(m.A.toArray())).equals(Buffer.from(bytesOf(p.A.toArray()))));
      assert.ok(Buffer.from(bytesOf(m.B.toArray())).equals(Buffer.from(bytesOf(p.B.toArray()))));
    });
    ok(run(w.dir, 'convert', '--adapter', 'a', '--out', 'k2.safetensors', '--kohya-prefix', 'lora_te2', '--quiet'));
    assert.ok((await lw.loadAdapter({ weights: read(w.at('k2.safetensors')) })).modules[0]!.name.startsWith('lora_te2_model_layers_0'));

    writeFileSync(w.at('base.safetensors'), baseModel());
    const back = run(w.dir, 'convert', '--adapter', 'k.safetensors', '--base', 'base.safetensors', '--out', 'p');
    ok(back);
    assert.match(back.stdout, /converted 2 kohya modules into the PEFT adapter p/);
    const want = kohyaToPeft(k, new Set(Object.keys(MODULES).map((m) => `${m}.weight`).concat('model.norm.weight')));
    const { weights, config } = lw.saveAdapter(want, { baseModel: 'base.safetensors' });
    assert.ok(Buffer.from(read(w.at('p/adapter_model.safetensors'))).equals(Buffer.from(weights)), 'the API\'s bytes');
    assert.equal(json(w.at('p/adapter_config.json')), config);
    // and the original PEFT tensors, bit for bit (module names, factors, r, alpha)
    assert.ok(Buffer.from(read(w.at('p/adapter_model.safetensors'))).equals(Buffer.from(read(w.at('a/adapter_model.safetensors')))), 'the round trip gives the PEFT file back');
    const c = json(w.at('p/adapter_config.json'));
    assert.is(c.r, 4);
    assert.is(c.lora_alpha, 8);
    assert.equal(c.rank_pattern, { 'model\\.layers\\.0\\.self_attn\\.v_proj': 3 });
    for (const x of [peft, k]) x.dispose();
    assert.equal(hidden(w.dir), []);
  } finally {
    w.done();
  }
});

test('convert refuses: kohya → PEFT without --base, an ambiguous or missing name, a shape mismatch, fan_in_fan_out, an input as --out, an existing --out, bad flags', async () => {
  const w = workdir();
  try {
    await peftDir(w.at('a'), 1);
    ok(run(w.dir, 'convert', '--adapter', 'a', '--out', 'k.safetensors', '--quiet'));
    expectFail(w.dir, ['convert', '--adapter', 'k.safetensors', '--out', 'p'], 2, ['needs --base model.safetensors']);
    writeFileSync(w.at('ambiguous.safetensors'), baseModel([{ name: 'model.layers.0.self_attn.q.proj.weight', dtype: 'F32', shape: [12, 10], data: new Uint8Array(480) }]));
    expectFail(w.dir, ['convert', '--adapter', 'k.safetensors', '--base', 'ambiguous.safetensors', '--out', 'p'], 1, ['matches several base tensors', 'self_attn.q.proj.weight']);
    writeFileSync(w.at('small.safetensors'), encodeSafetensors([{ name: 'model.layers.0.self_attn.q_proj.weight', dtype: 'F32', shape: [12, 10], data: new Uint8Array(480) }]));
    expectFail(w.dir, ['convert', '--adapter', 'k.safetensors', '--base', 'small.safetensors', '--out', 'p'], 1, ['no base tensor matches kohya module "lora_te_model_layers_0_self_attn_v_proj"']);
    writeFileSync(w.at('shape.safetensors'), encodeSafetensors([
      { name: 'model.layers.0.self_attn.q_proj.weight', dtype: 'F32', shape: [10, 12], data: new Uint8Array(480) },
      { name: 'model.layers.0.self_attn.v_proj.weight', dtype: 'F32', shape: [8, 10], data: new Uint8Array(320) },
    ]));
    expectFail(w.dir, ['convert', '--adapter', 'k.safetensors', '--base', 'shape.safetensors', '--out', 'p'], 1, ['changes a [12, 10] weight', 'is [10, 12]']);
    copyFileSync(path.join(root, 'test/fixtures/adapters/peft-fan-in-fan-out/adapter_model.safetensors'), w.at('fan.safetensors'));
    mkdirSync(w.at('fan'));
    for (const f of ['adapter_model.safetensors', 'adapter_config.json']) copyFileSync(path.join(root, 'test/fixtures/adapters/peft-fan-in-fan-out', f), w.at(`fan/${f}`));
    expectFail(w.dir, ['convert', '--adapter', 'fan', '--out', 'f.safetensors'], 1, ['fan_in_fan_out']);
    expectFail(w.dir, ['convert', '--adapter', 'a', '--out', 'k.txt'], 2, ['named *.safetensors']);
    expectFail(w.dir, ['convert', '--adapter', 'a', '--out', 'x.safetensors', '--kohya-prefix', 'lora_x'], 2, ['--kohya-prefix must be one of']);
    expectFail(w.dir, ['convert', '--adapter', 'a', '--out', 'x.safetensors', '--dtype', 'f16'], 2, ['--dtype is for a conversion into a llama.cpp adapter']);
    expectFail(w.dir, ['convert', '--adapter', 'a', '--out', 'a/adapter_model.safetensors'], 1, ['is one of the inputs']);
    expectFail(w.dir, ['convert', '--adapter', 'a', '--out', 'k.safetensors'], 1, ['exists; pass --force']);
    writeFileSync(w.at('base.safetensors'), baseModel());
    expectFail(w.dir, ['convert', '--adapter', 'k.safetensors', '--base', 'base.safetensors', '--out', 'k.safetensors'], 1, ['is one of the inputs']);
    expectFail(w.dir, ['convert', '--adapter', 'k.safetensors', '--base', 'base.safetensors', '--out', '.'], 1, ['holds one of the inputs']);
    expectFail(w.dir, ['convert', '--adapter', 'k.safetensors', '--base', 'base.safetensors', '--out', 'p', '--kohya-prefix', 'lora_te'], 2, ['--kohya-prefix is for a PEFT → kohya conversion']);
    assert.ok(!existsSync(w.at('p')));
    assert.equal(hidden(w.dir), []);
  } finally {
    w.done();
  }
});

test.run();
