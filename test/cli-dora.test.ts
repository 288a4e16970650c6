// DoRA on the command line and DoRA → plain LoRA (lw.doraToLora; `convert` of a DoRA adapter): at full
// rank the plain adapter reproduces the DoRA weight W′ within the f32 bound of a float64 reference; at
// a lower rank the kept fraction of ‖W′ − W‖² is reported and matches the float64 spectrum; `merge`
// refusals (a multiplier other than 1, a module missing from the base, a non-finite result with
// --safe), an existing --out, and `inspect` naming DoRA with each magnitude's length and range.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { test } from 'uvu';
import { type DoraModule, doraModule } from './fixtures/dora.js';
import * as assert from 'uvu/assert';
import { type DType, LoRANonFiniteError, LoRAShapeError, type Matrix, encodeSafetensors } from '../src/index.js';
import { Adapter as AdapterClass } from '../src/adapters/adapter.js';
import { expectFail, hidden, run, workdir } from './fixtures/cli.js';
import { assertThrowsTyped, lwUnderTest, randomF32, rng } from './helpers.js';
import { U } from './reference.js';

const lw = await lwUnderTest();
const PEFT = 'base_model.model.';
const bytesOf = (x: Float32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
const f32t = (name: string, shape: number[], data: Float32Array) => ({ name, dtype: 'F32', shape, data: bytesOf(data) });
const ok = (r: ReturnType<typeof run>) => assert.is(r.status, 0, r.stderr);

type Mod = DoraModule;
const mod = doraModule;

const ALPHA = 2; // lora_alpha = 2·r: s = 2
const SHAPES: [string, number, number, number][] = [['layers.0.q_proj', 24, 20, 3], ['layers.0.v_proj', 12, 20, 2], ['layers.1.up_proj', 30, 12, 4]];
const modules = (seed: number) => {
  const g = rng(seed);
  return SHAPES.map(([n, o, i, r]) => mod(g, n, o, i, r));
};
/** A plain LoRA module (no magnitude) beside DoRA ones: a DoRA PEFT file has none (the loader refuses it), so the API test joins two adapters. */
const plainModule = (seed: number) => mod(rng(seed), 'layers.1.down_proj', 12, 30, 2, false);

function adapterFiles(mods: Mod[]) {
  const tensors = mods.flatMap((m) => [
    f32t(`${PEFT}${m.name}.lora_A.weight`, [m.r, m.inn], m.loraA),
    f32t(`${PEFT}${m.name}.lora_B.weight`, [m.out, m.r], m.loraB),
    ...(m.m ? [f32t(`${PEFT}${m.name}.lora_magnitude_vector`, [m.out], m.m)] : []),
  ]);
  const r = mods[0]!.r;
  return { weights: encodeSafetensors(tensors), config: { peft_type: 'LORA', r, lora_alpha: ALPHA * r, use_dora: mods.some((m) => m.m !== undefined), fan_in_fan_out: false, base_model_name_or_path: 'tiny', rank_pattern: Object.fromEntries(mods.filter((m) => m.r !== r).map((m) => [m.name, m.r])), alpha_pattern: Object.fromEntries(mods.filter((m) => m.r !== r).map((m) => [m.name, ALPHA * m.r])) } };
}

/** float64 W′ [out, in] of a DoRA module (PEFT merge_safe), and per element its magnitude for the bound. */
function reference(m: Mod): { ref: Float64Array; mag: Float64Array } {
  const { out, inn, r } = m;
  const s = ALPHA;
  const V = new Float64Array(out * inn), VM = new Float64Array(out * inn);
  for (let i = 0; i < out; i++) {
    for (let j = 0; j < inn; j++) {
      let d = 0, dm = 0;
      for (let k = 0; k < r; k++) {
        d += m.loraB[i * r + k]! * m.loraA[k * inn + j]!;
        dm += Math.abs(m.loraB[i * r + k]! * m.loraA[k * inn + j]!);
      }
      V[i * inn + j] = m.W[i * inn + j]! + s * d;
      VM[i * inn + j] = Math.abs(m.W[i * inn + j]!) + s * dm;
    }
  }
  const ref = new Float64Array(out * inn), mag = new Float64Array(out * inn);
  for (let i = 0; i < out; i++) {
    let n = 0;
    for (let j = 0; j < inn; j++) n += V[i * inn + j]! ** 2;
    const f = m.m![i]! / Math.sqrt(n);
    for (let j = 0; j < inn; j++) {
      ref[i * inn + j] = f * V[i * inn + j]!;
      mag[i * inn + j] = Math.abs(f) * VM[i * inn + j]!;
    }
  }
  return { ref, mag };
}

/** Singular values of a [rows, cols] float64 matrix, descending (one-sided Jacobi on the columns). */
function singularValues(a: Float64Array, rows: number, cols: number): number[] {
  const x = Float64Array.from(a);
  for (let sweep = 0; sweep < 60; sweep++) {
    let off = 0;
    for (let p = 0; p < cols; p++) {
      for (let q = p + 1; q < cols; q++) {
        let al = 0, be = 0, ga = 0;
        for (let i = 0; i < rows; i++) {
          const u = x[i * cols + p]!, v = x[i * cols + q]!;
          al += u * u; be += v * v; ga += u * v;
        }
        if (Math.abs(ga) <= 1e-15 * Math.sqrt(al * be)) continue;
        off = Math.max(off, Math.abs(ga) / Math.sqrt(al * be));
        const z = (be - al) / (2 * ga);
        const t = Math.sign(z || 1) / (Math.abs(z) + Math.sqrt(1 + z * z));
        const c = 1 / Math.sqrt(1 + t * t), sn = c * t;
        for (let i = 0; i < rows; i++) {
          const u = x[i * cols + p]!, v = x[i * cols + q]!;
          x[i * cols + p] = c * u - sn * v;
          x[i * cols + q] = sn * u + c * v;
        }
      }
    }
    if (off < 1e-14) break;
  }
  const sv: number[] = [];
  for (let j = 0; j < cols; j++) {
    let s = 0;
    for (let i = 0; i < rows; i++) s += x[i * cols + j]! ** 2;
    sv.push(Math.sqrt(s));
  }
  return sv.sort((p, q) => q - p);
}

/** The plain adapter's W + s·A·B in float64 (from the saved PEFT tensors: lora_B [out, r], lora_A [r, in], scale alpha/r). */
function plainMerged(W: Float32Array, out: number, inn: number, loraA: Float32Array, loraB: Float32Array, r: number, s: number): Float64Array {
  const y = new Float64Array(out * inn);
  for (let i = 0; i < out; i++) {
    for (let j = 0; j < inn; j++) {
      let d = 0;
      for (let k = 0; k < r; k++) d += loraB[i * r + k]! * loraA[k * inn + j]!;
      y[i * inn + j] = W[i * inn + j]! + s * d;
    }
  }
  return y;
}

/** Full rank: within the bound of float64 W′ (the extracted factors' error, a few f32 roundings per term of a rank-n product). */
function assertReproduces(got: Float64Array, m: Mod, label: string): void {
  const { ref, mag } = reference(m);
  const n = Math.min(m.out, m.inn);
  let scale = 0;
  for (let i = 0; i < ref.length; i++) scale = Math.max(scale, Math.abs(ref[i]!));
  for (let i = 0; i < ref.length; i++) {
    // W′ in f32 (r + 10 roundings, as test/dora.test.ts bounds it), then the SVD of W′ − W and its f32 factors (≈ n roundings of the largest value)
    const tol = (m.r + 10) * U * (mag[i]! + Math.abs(ref[i]!)) + 4 * (n + 4) * U * scale;
    if (!(Math.abs(got[i]! - ref[i]!) <= tol)) assert.unreachable(`${label}: [${Math.floor(i / m.inn)}, ${i % m.inn}] ${got[i]} vs ${ref[i]} (bound ${tol})`);
  }
}

const baseTensors = (mods: Mod[]) => [
  ...mods.map((m) => f32t(`model.${m.name}.weight`, [m.out, m.inn], m.W)),
  f32t('model.norm.weight', [8], new Float32Array(8).fill(1)),
];

async function loadDora(mods: Mod[]) {
  return lw.loadAdapter(adapterFiles(mods));
}

// ---------------------------------------------------------------- the API
test('lw.doraToLora at full rank: W + A·B of each new module equals W′ within the f32 bound; plain modules copied as they are', async () => {
  const mods = [...modules(1), plainModule(11)];
  const dora = await loadDora(mods.slice(0, 3));
  const plain = await loadDora(mods.slice(3));
  const adapter = new AdapterClass('peft', [...dora.modules, ...plain.modules], [], dora.config as Record<string, unknown>);
  const base: Record<string, Matrix<DType>> = {};
  for (const m of mods) base[`model.${m.name}.weight`] = lw.matrix(m.out, m.inn, m.W) as Matrix<DType>;
  const res = lw.doraToLora(adapter, base, { rank: 64, prefix: 'model.' });
  try {
    assert.is(res.modules.length, 3);
    for (const [k, m] of mods.entries()) {
      const x = res.adapter.modules[k]!;
      assert.is(x.name, m.name);
      assert.is(x.magnitude, undefined);
      if (!m.m) {
        assert.equal([x.r, x.alpha, x.scale], [m.r, ALPHA * m.r, ALPHA]);
        assert.equal(Array.from(x.A.toFloat32()), Array.from(m.loraB));
        assert.equal(Array.from(x.B.toFloat32()), Array.from(m.loraA));
        continue;
      }
      const rep = res.modules.find((r) => r.name === m.name)!;
      assert.is(rep.rank, Math.min(m.out, m.inn));
      assert.ok(rep.energy > 1 - 1e-6, `${m.name} keeps everything: ${rep.energy}`);
      assertReproduces(plainMerged(m.W, m.out, m.inn, x.B.toFloat32(), x.A.toFloat32(), x.r, x.scale), m, m.name);
    }
    assert.is(res.adapter.config.use_dora, false);
  } finally {
    res.adapter.dispose();
    dora.dispose();
    plain.dispose();
    for (const t of Object.values(base)) t.dispose();
  }
});

test('lw.doraToLora at rank k: the kept fraction of ‖W′ − W‖² is Σ_{i<k} σᵢ² / Σ σᵢ² of the float64 difference', async () => {
  const mods = modules(2).slice(0, 1);
  const adapter = await loadDora(mods);
  const m = mods[0]!;
  const W = lw.matrix(m.out, m.inn, m.W) as Matrix<DType>;
  const res = lw.doraToLora(adapter, { [`${m.name}.weight`]: W }, { rank: 2 });
  try {
    const { ref } = reference(m);
    const d = Float64Array.from(ref, (x, i) => x - m.W[i]!);
    const sv = singularValues(d, m.out, m.inn);
    const want = (sv[0]! ** 2 + sv[1]! ** 2) / sv.reduce((a, x) => a + x * x, 0);
    assert.is(res.modules[0]!.rank, 2);
    assert.ok(Math.abs(res.modules[0]!.energy - want) < 1e-5, `${res.modules[0]!.energy} vs ${want}`);
    assert.ok(want < 0.999, `rank 2 drops something (${want})`);
  } finally {
    res.adapter.dispose();
    adapter.dispose();
    W.dispose();
  }
});

test('lw.doraToLora refuses a DoRA module missing from the base (LoRAShapeError naming it) and a non-finite W′ (LoRANonFiniteError)', async () => {
  const mods = modules(3).slice(0, 2);
  const adapter = await loadDora(mods);
  const W = lw.matrix(mods[0]!.out, mods[0]!.inn, mods[0]!.W) as Matrix<DType>;
  try {
    assertThrowsTyped(() => lw.doraToLora(adapter, { [`${mods[0]!.name}.weight`]: W }, { rank: 2 }), LoRAShapeError, ['doraToLora', mods[1]!.name]);
  } finally {
    adapter.dispose();
    W.dispose();
  }
  // a zero row of V (W's row zero and lora_B's row zero): m/‖V‖ = m/0
  const z = modules(4).slice(0, 1);
  const zm = z[0]!;
  zm.W.fill(0, 0, zm.inn);
  zm.loraB.fill(0, 0, zm.r);
  const a2 = await loadDora(z);
  const W2 = lw.matrix(zm.out, zm.inn, zm.W) as Matrix<DType>;
  try {
    assertThrowsTyped(() => lw.doraToLora(a2, { [`${zm.name}.weight`]: W2 }, { rank: 2 }), LoRANonFiniteError, ['doraToLora', zm.name, 'NaN']);
  } finally {
    a2.dispose();
    W2.dispose();
  }
});

// ---------------------------------------------------------------- the CLI
function writeFixture(w: ReturnType<typeof workdir>, mods: Mod[], dir = 'dora_dir') {
  writeFileSync(w.at('base.safetensors'), encodeSafetensors(baseTensors(mods), { format: 'pt' }));
  const f = adapterFiles(mods);
  mkdirSync(w.at(dir));
  writeFileSync(w.at(`${dir}/adapter_model.safetensors`), f.weights);
  writeFileSync(w.at(`${dir}/adapter_config.json`), JSON.stringify(f.config));
}

/** The PEFT folder's modules: lora_A [r, in], lora_B [out, r] and the scale from its config. */
async function readPlain(dir: string) {
  const a = await lw.loadAdapter({ weights: new Uint8Array(readFileSync(`${dir}/adapter_model.safetensors`)), config: readFileSync(`${dir}/adapter_config.json`, 'utf8') });
  const mods = new Map(a.modules.map((m) => [m.name, { r: m.r, scale: m.scale, loraA: m.B.toFloat32(), loraB: m.A.toFloat32(), dora: m.magnitude !== undefined }]));
  a.dispose();
  return mods;
}

test('convert of a DoRA adapter at full rank: a plain PEFT folder whose W + s·A·B equals W′ within the f32 bound; kept fractions printed; a sharded base gives the same bytes', async () => {
  const w = workdir();
  try {
    const mods = modules(5);
    writeFixture(w, mods);
    const r = run(w.dir, 'convert', '--adapter', 'dora_dir', '--base', 'base.safetensors', '--prefix', 'model.', '--rank', '64', '--out', 'plain_dir');
    ok(r);
    for (const m of mods.filter((x) => x.m)) assert.match(r.stdout, new RegExp(`${m.name.replaceAll('.', '\\.')}  rank ${Math.min(m.out, m.inn)}  kept 1\\.0000`));
    assert.match(r.stdout, /converted 3 DoRA modules into plain LoRA .*worst 1\.0000.*mean 1\.0000/);
    const config = JSON.parse(readFileSync(w.at('plain_dir/adapter_config.json'), 'utf8'));
    assert.is(config.use_dora, false);
    assert.is(config.base_model_name_or_path, 'tiny');
    const got = await readPlain(w.at('plain_dir'));
    for (const m of mods) {
      const x = got.get(m.name)!;
      assert.is(x.dora, false);
      if (!m.m) {
        assert.equal(Array.from(x.loraA), Array.from(m.loraA));
        assert.is(x.scale, ALPHA);
        continue;
      }
      assertReproduces(plainMerged(m.W, m.out, m.inn, x.loraA, x.loraB, x.r, x.scale), m, `cli ${m.name}`);
    }
    assert.equal(hidden(w.dir), []);
    // the same base as two shards (a folder with an index): the same bytes
    const ts = baseTensors(mods);
    mkdirSync(w.at('sharded'));
    const weightMap: Record<string, string> = {};
    [ts.slice(0, 2), ts.slice(2)].forEach((part, k) => {
      const file = `model-0000${k + 1}-of-00002.safetensors`;
      writeFileSync(w.at(`sharded/${file}`), encodeSafetensors(part, { format: 'pt' }));
      for (const t of part) weightMap[t.name] = file;
    });
    writeFileSync(w.at('sharded/model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    ok(run(w.dir, 'convert', '--adapter', 'dora_dir', '--base', 'sharded', '--prefix', 'model.', '--rank', '64', '--out', 'plain2_dir', '--quiet'));
    assert.ok(readFileSync(w.at('plain2_dir/adapter_model.safetensors')).equals(readFileSync(w.at('plain_dir/adapter_model.safetensors'))), 'a sharded base gives the same adapter');
    // inspect of the result: plain LoRA
    const i = run(w.dir, 'inspect', 'plain_dir');
    ok(i);
    assert.match(i.stdout, /PEFT LoRA adapter/);
    assert.not.match(i.stdout, /DoRA/);
  } finally {
    w.done();
  }
});

test('convert of a DoRA adapter at --rank 2 and --energy: the worst and mean kept fractions, equal to the API\'s', async () => {
  const w = workdir();
  try {
    const mods = modules(6);
    writeFixture(w, mods);
    const r = run(w.dir, 'convert', '--adapter', 'dora_dir', '--base', 'base.safetensors', '--prefix', 'model.', '--rank', '2', '--out', 'r2_dir');
    ok(r);
    const kept = [...r.stdout.matchAll(/  (\S+)  rank 2  kept ([\d.]+)/g)].map((x) => [x[1], Number(x[2])] as const);
    assert.is(kept.length, 3);
    const adapter = await loadDora(mods);
    const base: Record<string, Matrix<DType>> = {};
    for (const m of mods) base[`model.${m.name}.weight`] = lw.matrix(m.out, m.inn, m.W) as Matrix<DType>;
    const api = lw.doraToLora(adapter, base, { rank: 2, prefix: 'model.' });
    try {
      for (const [name, e] of kept) assert.ok(Math.abs(api.modules.find((x) => x.name === name)!.energy - e) < 1e-6, `${name}: ${e}`);
      const worst = Math.min(...kept.map((k) => k[1]));
      assert.ok(worst < 0.9999, `rank 2 keeps less than all: ${worst}`);
      assert.match(r.stdout, new RegExp(`worst ${worst.toFixed(6).replace('.', '\\.')}`));
    } finally {
      api.adapter.dispose();
      adapter.dispose();
      for (const t of Object.values(base)) t.dispose();
    }
    const got = await readPlain(w.at('r2_dir'));
    assert.equal([...got.values()].map((x) => x.r), [2, 2, 2]);
    const e = run(w.dir, 'convert', '--adapter', 'dora_dir', '--base', 'base.safetensors', '--prefix', 'model.', '--energy', '0.5', '--out', 'e_dir');
    ok(e);
    assert.match(e.stdout, /converted 3 DoRA modules/);
    for (const x of e.stdout.matchAll(/kept ([\d.]+) of/g)) assert.ok(Number(x[1]) >= 0.5, x[0]);
  } finally {
    w.done();
  }
});

test('DoRA refusals on the command line: merge --multiplier 2 and -1, a module missing from the base, a non-finite result with --safe, an existing --out, no --rank', () => {
  const w = workdir();
  try {
    const mods = modules(7);
    writeFixture(w, mods);
    const merge = ['merge', '--base', 'base.safetensors', '--adapter', 'dora_dir', '--prefix', 'model.', '--out', 'merged.safetensors'];
    ok(run(w.dir, ...merge)); // multiplier 1 merges
    const m1 = ['merge', '--base', 'base.safetensors', '--adapter', 'dora_dir', '--prefix', 'model.', '--out', 'x.safetensors'];
    expectFail(w.dir, [...m1, '--multiplier', '2'], 1, ['DoRA', 'multiplier']);
    expectFail(w.dir, [...m1, '--multiplier', '-1'], 1, ['DoRA', 'multiplier']);
    assert.not.ok(existsSync(w.at('x.safetensors')));
    // a DoRA module whose tensor the base lacks (no --prefix: every name misses)
    expectFail(w.dir, ['merge', '--base', 'base.safetensors', '--adapter', 'dora_dir', '--out', 'x.safetensors'], 1, ['layers.0.q_proj']);
    expectFail(w.dir, ['convert', '--adapter', 'dora_dir', '--base', 'base.safetensors', '--rank', '2', '--out', 'y_dir'], 1, ['DoRA module', 'layers.0.q_proj', '--prefix']);
    assert.not.ok(existsSync(w.at('y_dir')));
    // an existing --out
    const conv = ['convert', '--adapter', 'dora_dir', '--base', 'base.safetensors', '--prefix', 'model.', '--rank', '2', '--out', 'done_dir'];
    ok(run(w.dir, ...conv));
    const before = readFileSync(w.at('done_dir/adapter_model.safetensors'));
    expectFail(w.dir, conv, 1, ['done_dir', 'exists', '--force']);
    assert.ok(before.equals(readFileSync(w.at('done_dir/adapter_model.safetensors'))), 'the existing --out is untouched');
    mkdirSync(w.at('taken_dir'));
    writeFileSync(w.at('taken_dir/adapter_config.json'), '{}');
    expectFail(w.dir, ['convert', '--adapter', 'dora_dir', '--base', 'base.safetensors', '--prefix', 'model.', '--rank', '2', '--out', 'taken_dir'], 1, ['taken_dir']);
    expectFail(w.dir, ['merge', ...merge.slice(1)], 1, ['merged.safetensors', 'exists', '--force']);
    // usage: neither --rank nor --energy
    expectFail(w.dir, ['convert', '--adapter', 'dora_dir', '--base', 'base.safetensors', '--prefix', 'model.', '--out', 'z_dir'], 2, ['--rank', '--energy']);
    // a zero row of V gives m/0: merge --safe refuses it, and so does convert (always)
    const z = modules(8).slice(0, 1);
    z[0]!.W.fill(0, 0, z[0]!.inn);
    z[0]!.loraB.fill(0, 0, z[0]!.r);
    const wz = workdir();
    try {
      writeFixture(wz, z);
      expectFail(wz.dir, ['merge', '--base', 'base.safetensors', '--adapter', 'dora_dir', '--prefix', 'model.', '--out', 'm.safetensors', '--safe'], 1, ['layers.0.q_proj', 'NaN', 'safe']);
      assert.not.ok(existsSync(wz.at('m.safetensors')));
      expectFail(wz.dir, ['convert', '--adapter', 'dora_dir', '--base', 'base.safetensors', '--prefix', 'model.', '--rank', '2', '--out', 'c_dir'], 1, ['layers.0.q_proj', 'NaN']);
      assert.not.ok(existsSync(wz.at('c_dir')));
      assert.equal(hidden(wz.dir), []);
    } finally {
      wz.done();
    }
    assert.equal(hidden(w.dir), []);
  } finally {
    w.done();
  }
});

test('inspect of a DoRA adapter says DoRA and shows each magnitude vector\'s length, min and max', () => {
  const w = workdir();
  try {
    const mods = modules(9);
    writeFixture(w, mods);
    const r = run(w.dir, 'inspect', 'dora_dir');
    ok(r);
    assert.match(r.stdout, /PEFT DoRA adapter for tiny/);
    assert.match(r.stdout, /3 of 3 modules carry a magnitude/);
    for (const m of mods.filter((x) => x.m)) {
      const lo = Math.min(...m.m!), hi = Math.max(...m.m!);
      assert.ok(r.stdout.includes(`  ${m.name}  ${m.out}  ${+lo.toPrecision(6)}  ${+hi.toPrecision(6)}  rows of W as stored`), `${m.name} in:\n${r.stdout}`);
    }
  } finally {
    w.done();
  }
});

test.run();
