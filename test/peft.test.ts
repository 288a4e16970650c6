// Adapters from files: the real PEFT adapter trained by someone else (../shared/fixtures), generated
// PEFT and kohya adapters for every rule (f16/bf16, rank/alpha patterns, rsLoRA, fan_in_fan_out,
// embeddings, modules_to_save, lora_bias), everything refused, and export round trips.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { type Adapter, type DType, LoRAFormatError, LoRANonFiniteError, LoRAShapeError, LoRATypeError, type LoRAWasm, type Matrix, SafetensorsReader, bytesSource, encodeSafetensors } from '../src/index.js';
import { FIXTURE_ADAPTER, FIXTURE_CONFIG, readFixture, readLocalFixture } from './fixtures.js';
import { assertBitIdentical, lwUnderTest, randomF32, rng } from './helpers.js';
import { assertWithinBound, rankReference } from './reference.js';

const f32bytes = (x: Float32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
const t = (name: string, shape: number[], data: Float32Array) => ({ name, dtype: 'F32', shape, data: f32bytes(data) });
const PEFT = 'base_model.model.';
const baseConfig = { peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['q'], use_rslora: false, fan_in_fan_out: false, bias: 'none' };

async function expectFormatError(p: Promise<unknown>, words: string[]): Promise<void> {
  try {
    const a = await p;
    (a as Adapter | undefined)?.dispose?.();
  } catch (e) {
    assert.instance(e, LoRAFormatError, (e as Error).message);
    for (const w of words) assert.ok((e as Error).message.includes(w), `"${(e as Error).message}" should mention "${w}"`);
    return;
  }
  assert.unreachable(`accepted; expected an error with ${words.join(', ')}`);
}

test('the real DistilBERT PEFT adapter: every module, shape, scale and modules_to_save tensor', async () => {
  const [weights, config] = [await readFixture(FIXTURE_ADAPTER), await readFixture(FIXTURE_CONFIG)];
  if (!weights || !config) return;
  const lw = await lwUnderTest();
  const live = lw.memoryStats().liveBlocks;
  const adapter = await lw.loadAdapter({ weights, config: new TextDecoder().decode(config) });
  assert.is(adapter.format, 'peft');
  assert.is(adapter.modules.length, 12);
  const names = adapter.modules.map((m) => m.name).sort();
  const want = [0, 1, 2, 3, 4, 5].flatMap((l) => ['q_lin', 'v_lin'].map((m) => `distilbert.transformer.layer.${l}.attention.${m}`)).sort();
  assert.equal(names, want);
  for (const m of adapter.modules) {
    assert.equal([m.kind, m.r, m.alpha, m.scale, m.fanInFanOut], ['linear', 8, 16, 2, false], m.name);
    assert.equal([m.A.rows, m.A.cols, m.B.rows, m.B.cols, m.A.dtype], [768, 8, 8, 768, 'f32'], `${m.name}: A = lora_B [768, 8], B = lora_A [8, 768]`);
  }
  const reps = Object.fromEntries(adapter.replacements.map((r) => [r.name, r.shape]));
  assert.equal(reps, { 'pre_classifier.weight': [768, 768], 'pre_classifier.bias': [768], 'classifier.weight': [2, 768], 'classifier.bias': [2] });
  assert.is(adapter.parameters, 12 * 8 * (768 + 768));
  adapter.dispose();
  assert.is(lw.memoryStats().liveBlocks, live, 'dispose frees every factor and tensor');
});

/** A base "model" with DistilBERT's tensor names and shapes for what the adapter touches, from a seeded generator. */
function distilbertBase(lw: LoRAWasm, g: () => number): Record<string, Matrix<DType>> {
  const base: Record<string, Matrix<DType>> = {};
  for (let l = 0; l < 6; l++) {
    for (const m of ['q_lin', 'v_lin', 'k_lin', 'out_lin']) base[`distilbert.transformer.layer.${l}.attention.${m}.weight`] = lw.matrix(768, 768, randomF32(g, 768 * 768, 0.05));
  }
  base['pre_classifier.weight'] = lw.matrix(768, 768, randomF32(g, 768 * 768, 0.05));
  base['pre_classifier.bias'] = lw.matrix(1, 768, randomF32(g, 768, 0.05));
  base['classifier.weight'] = lw.matrix(2, 768, randomF32(g, 2 * 768, 0.05));
  base['classifier.bias'] = lw.matrix(1, 2, randomF32(g, 2, 0.05));
  return base;
}

test('merging the real adapter into a DistilBERT-shaped base matches W + 2·lora_B·lora_A in float64; saved tensors replace the base ones', async () => {
  const [weights, config] = [await readFixture(FIXTURE_ADAPTER), await readFixture(FIXTURE_CONFIG)];
  if (!weights || !config) return;
  const lw = await lwUnderTest();
  const base = distilbertBase(lw, rng(8));
  const before = Object.fromEntries(Object.entries(base).map(([k, m]) => [k, m.toFloat32()]));
  const adapter = await lw.loadAdapter({ weights, config: JSON.parse(new TextDecoder().decode(config)) });
  const report = lw.mergeAdapter(base, adapter, { safe: true });
  assert.is(report.merged.length, 12);
  assert.equal(report.replaced.sort(), ['classifier.bias', 'classifier.weight', 'pre_classifier.bias', 'pre_classifier.weight']);
  const reader = await SafetensorsReader.open(bytesSource(weights));
  const f32 = async (name: string) => { const b = (await reader.read(name)).bytes; return new Float32Array(b.slice().buffer); };
  for (const l of [0, 3, 5]) {
    for (const m of ['q_lin', 'v_lin']) {
      const mod = `distilbert.transformer.layer.${l}.attention.${m}`;
      const loraA = await f32(`${PEFT}${mod}.lora_A.weight`), loraB = await f32(`${PEFT}${mod}.lora_B.weight`);
      const ref = rankReference(before[`${mod}.weight`]!, loraB, loraA, 768, 8, 768, 2);
      assertWithinBound(base[`${mod}.weight`]!.toFloat32(), ref, 8, `${mod}.weight`);
    }
  }
  assertBitIdentical(base['distilbert.transformer.layer.0.attention.k_lin.weight']!.toFloat32(), before['distilbert.transformer.layer.0.attention.k_lin.weight']!, 'untargeted modules untouched');
  assertBitIdentical(base['classifier.weight']!.toFloat32(), await f32(`${PEFT}classifier.weight`), 'classifier.weight replaced');
  assertBitIdentical(base['pre_classifier.bias']!.toFloat32(), await f32(`${PEFT}pre_classifier.bias`), 'pre_classifier.bias replaced');
  // exact swap: into separate matrices, base untouched
  const out = Object.fromEntries(Object.entries(base).map(([k, m]) => [k, lw.matrix(m.rows, m.cols)]));
  const snapshot = base['distilbert.transformer.layer.1.attention.q_lin.weight']!.toArray();
  lw.mergeAdapter(base, adapter, { into: out });
  assertBitIdentical(base['distilbert.transformer.layer.1.attention.q_lin.weight']!.data as Float32Array, snapshot as Float32Array, 'into: base untouched');
  adapter.dispose();
  for (const m of [...Object.values(base), ...Object.values(out)]) m.dispose();
});

/** The committed adapter's tensors, decoded to f32 (the values the checks below recompute from). */
async function rawTensors(lw: LoRAWasm, weights: Uint8Array): Promise<Record<string, Float32Array>> {
  const set = await lw.loadTensors(weights);
  const out = Object.fromEntries(Object.entries(set.tensors).map(([k, m]) => [k.replace(/^base_model\.model\./, ''), m.toFloat32()]));
  for (const m of Object.values(set.tensors)) m.dispose();
  return out;
}

test('generated PEFT adapters (committed, test/fixtures/adapters): f16/bf16 factors, rank/alpha patterns, rsLoRA, embeddings, lora_bias, modules_to_save, fan_in_fan_out', async () => {
  const [weights, configBytes] = [await readLocalFixture('adapters/peft-mixed/adapter_model.safetensors'), await readLocalFixture('adapters/peft-mixed/adapter_config.json')];
  if (!weights || !configBytes) return;
  const lw = await lwUnderTest();
  const raw = await rawTensors(lw, weights);
  const adapter = await lw.loadAdapter({ weights, config: new TextDecoder().decode(configBytes) });
  const by = Object.fromEntries(adapter.modules.map((m) => [m.name, m]));
  assert.equal([by['m.q']!.r, by['m.q']!.alpha, by['m.q']!.scale, by['m.q']!.A.dtype], [2, 4, 4 / Math.sqrt(2), 'f16'], 'rsLoRA scale, F16 factors');
  assert.equal([by['m.k']!.r, by['m.k']!.alpha, by['m.k']!.scale, by['m.k']!.B.dtype], [3, 9, 9 / Math.sqrt(3), 'bf16'], 'rank_pattern, alpha_pattern, BF16');
  assert.equal([by['m.emb']!.kind, by['m.emb']!.A.rows, by['m.emb']!.A.cols, by['m.emb']!.B.rows, by['m.emb']!.B.cols], ['embedding', 7, 2, 2, 4]);
  assert.equal(adapter.replacements.map((r) => [r.name, r.shape]), [['head.weight', [2, 6]]], 'modules_to_save');
  const g = rng(21);
  const f = (n: number) => randomF32(g, n, 0.5);
  const base: Record<string, Matrix<DType>> = {
    'm.q.weight': lw.matrix(6, 5, f(30), { dtype: 'bf16' }), 'm.k.weight': lw.matrix(6, 5, f(30)), 'm.emb.weight': lw.matrix(7, 4, f(28)),
    'm.o.weight': lw.matrix(6, 5, f(30)), 'm.o.bias': lw.matrix(1, 6, f(6)), 'head.weight': lw.matrix(2, 6),
  };
  const w0 = Object.fromEntries(Object.entries(base).map(([k, m]) => [k, m.toFloat32()]));
  lw.mergeAdapter(base, adapter);
  // linear (F16 factors, W in bf16): one rounding to bf16 of W + s·lora_B·lora_A
  const q = base['m.q.weight']!.toFloat32();
  const refQ = rankReference(w0['m.q.weight']!, raw['m.q.lora_B.weight']!, raw['m.q.lora_A.weight']!, 6, 2, 5, by['m.q']!.scale);
  for (let i = 0; i < 30; i++) assert.ok(Math.abs(q[i]! - refQ.value[i]!) <= 2 ** -8 * Math.abs(refQ.value[i]!) + 1e-6, `q[${i}]: ${q[i]} vs ${refQ.value[i]}`);
  assertWithinBound(base['m.k.weight']!.toFloat32(), rankReference(w0['m.k.weight']!, raw['m.k.lora_B.weight']!, raw['m.k.lora_A.weight']!, 6, 3, 5, by['m.k']!.scale), 3, 'k (rank and alpha patterns)');
  // embedding: ΔW = s·(lora_embedding_B·lora_embedding_A)ᵀ, [7, 4]
  const eA = raw['m.emb.lora_embedding_A']!, eB = raw['m.emb.lora_embedding_B']!, emb = base['m.emb.weight']!.toFloat32();
  for (let i = 0; i < 7; i++) for (let j = 0; j < 4; j++) {
    let d = 0;
    for (let k = 0; k < 2; k++) d += eB[j * 2 + k]! * eA[k * 7 + i]!;
    assert.ok(Math.abs(emb[i * 4 + j]! - (w0['m.emb.weight']![i * 4 + j]! + by['m.emb']!.scale * d)) < 1e-5, `embedding [${i}, ${j}]`);
  }
  // lora_bias: bias += s·lora_B.bias; modules_to_save: head replaced
  const bias = base['m.o.bias']!.toFloat32();
  for (let j = 0; j < 6; j++) assert.ok(Math.abs(bias[j]! - (w0['m.o.bias']![j]! + by['m.o']!.scale * raw['m.o.lora_B.bias']![j]!)) < 1e-5, `bias ${j}`);
  assertBitIdentical(base['head.weight']!.toFloat32(), raw['head.weight']!, 'head.weight replaced');
  adapter.dispose();
  for (const m of Object.values(base)) m.dispose();

  // fan_in_fan_out: W stored [in, out] = [5, 6]; ΔW = s·(lora_B·lora_A)ᵀ
  const fanW = (await readLocalFixture('adapters/peft-fan-in-fan-out/adapter_model.safetensors'))!;
  const fanRaw = await rawTensors(lw, fanW);
  const fan = await lw.loadAdapter({ weights: fanW, config: new TextDecoder().decode((await readLocalFixture('adapters/peft-fan-in-fan-out/adapter_config.json'))!) });
  assert.equal([fan.modules[0]!.A.rows, fan.modules[0]!.B.cols, fan.modules[0]!.fanInFanOut], [5, 6, true]);
  using Wc = lw.matrix(5, 6, f(30));
  const wc = Wc.toFloat32();
  lw.mergeAdapter({ 'h.c_attn.weight': Wc }, fan);
  const lA = fanRaw['h.c_attn.lora_A.weight']!, lB = fanRaw['h.c_attn.lora_B.weight']!;
  for (let i = 0; i < 5; i++) for (let j = 0; j < 6; j++) {
    let d = 0;
    for (let k = 0; k < 2; k++) d += lB[j * 2 + k]! * lA[k * 5 + i]!;
    assert.ok(Math.abs(Wc.data[i * 6 + j]! - (wc[i * 6 + j]! + 2 * d)) < 1e-5, `fan_in_fan_out [${i}, ${j}]`);
  }
  assert.throws(() => lw.mergeAdapter({ 'h.c_attn.weight': lw.matrix(6, 5) }, fan), (e: Error) => e instanceof LoRAShapeError && /fan_in_fan_out/.test(e.message));
  fan.dispose();
});

test('the committed kohya file: linear and 1×1-conv modules, alpha (default r), names matched to the base by underscores', async () => {
  const weights = await readLocalFixture('adapters/kohya.safetensors');
  if (!weights) return;
  const lw = await lwUnderTest();
  const raw = await rawTensors(lw, weights);
  const adapter = await lw.loadAdapter({ weights });
  assert.is(adapter.format, 'kohya');
  const by = Object.fromEntries(adapter.modules.map((m) => [m.name, m]));
  assert.equal([by['lora_unet_down_blocks_0_attentions_0_proj_in']!.alpha, by['lora_unet_down_blocks_0_attentions_0_proj_in']!.scale], [2, 0.5]);
  assert.equal([by['lora_te_text_model_encoder_layers_0_mlp_fc1']!.kind, by['lora_te_text_model_encoder_layers_0_mlp_fc1']!.scale, by['lora_te_text_model_encoder_layers_0_mlp_fc1']!.A.dtype], ['conv1x1', 1, 'f16']);
  const g = rng(33);
  const base = { 'down_blocks.0.attentions.0.proj_in.weight': lw.matrix(6, 8, randomF32(g, 48)), 'text_model.encoder.layers.0.mlp.fc1.weight': lw.matrix(5, 3, randomF32(g, 15)), 'other.weight': lw.matrix(2, 2) };
  const w0 = base['down_blocks.0.attentions.0.proj_in.weight'].toFloat32();
  const report = lw.mergeAdapter(base, adapter, { multiplier: 0.5 });
  assert.equal(report.merged.sort(), ['down_blocks.0.attentions.0.proj_in.weight', 'text_model.encoder.layers.0.mlp.fc1.weight']);
  const up = raw['lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight']!, down = raw['lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight']!;
  assertWithinBound(base['down_blocks.0.attentions.0.proj_in.weight'].toFloat32(), rankReference(w0, up, down, 6, 4, 8, 0.25), 4, 'kohya linear, multiplier 0.5');
  assert.throws(() => lw.mergeAdapter({ 'proj_in.weight': lw.matrix(6, 8) }, adapter), (e: Error) => e instanceof LoRAShapeError && /no base tensor matches kohya module/.test(e.message));
  adapter.dispose();
  for (const m of Object.values(base)) m.dispose();
});

test('refused with a clear LoRAFormatError: DoRA, PiSSA/OLoRA/CorDA inits, other peft types, conv kernels, unknown or unpaired tensors, rank mismatches, 3×3 kohya convs', async () => {
  const lw = await lwUnderTest();
  const g = rng(5);
  const pair = (m: string, r = 2) => [t(`${PEFT}${m}.lora_A.weight`, [r, 4], randomF32(g, r * 4)), t(`${PEFT}${m}.lora_B.weight`, [3, r], randomF32(g, 3 * r))];
  const ok = encodeSafetensors(pair('q'));
  await expectFormatError(lw.loadAdapter({ weights: ok, config: { ...baseConfig, use_dora: true } }), ['use_dora', 'DoRA']);
  for (const init of ['pissa', 'pissa_niter_4', 'olora', 'corda']) await expectFormatError(lw.loadAdapter({ weights: ok, config: { ...baseConfig, init_lora_weights: init } }), ['init_lora_weights', init]);
  await expectFormatError(lw.loadAdapter({ weights: ok, config: { ...baseConfig, peft_type: 'PREFIX_TUNING' } }), ['peft_type', 'PREFIX_TUNING']);
  await expectFormatError(lw.loadAdapter({ weights: ok, config: { ...baseConfig, layer_replication: [[0, 4]] } }), ['layer_replication']);
  await expectFormatError(lw.loadAdapter({ weights: ok, config: '{not json' }), ['adapter_config.json', 'not valid JSON']);
  await expectFormatError(lw.loadAdapter({ weights: ok }), ['needs its adapter_config.json']);
  await expectFormatError(lw.loadAdapter({ weights: ok, config: { ...baseConfig, r: 3 } }), ['module "q" has rank 2', 'says 3']);
  await expectFormatError(lw.loadAdapter({ weights: encodeSafetensors([...pair('q'), t(`${PEFT}q.lora_magnitude_vector`, [3], randomF32(g, 3))]), config: baseConfig }), ['DoRA']);
  await expectFormatError(lw.loadAdapter({ weights: encodeSafetensors([pair('q')[0]!]), config: baseConfig }), ['module "q" has lora_A but not lora_B']);
  await expectFormatError(lw.loadAdapter({ weights: encodeSafetensors([...pair('q'), t(`${PEFT}mystery.weight`, [2], randomF32(g, 2))]), config: baseConfig }), ['"base_model.model.mystery.weight"', 'modules_to_save', 'refusing to skip']);
  await expectFormatError(lw.loadAdapter({ weights: encodeSafetensors([t(`${PEFT}c.lora_A.weight`, [2, 4, 3, 3], randomF32(g, 72)), t(`${PEFT}c.lora_B.weight`, [3, 2, 1, 1], randomF32(g, 6))]), config: baseConfig }), ['conv kernels are not supported']);
  await expectFormatError(lw.loadAdapter({ weights: encodeSafetensors([t('lora_unet_x.lora_down.weight', [2, 4, 3, 3], randomF32(g, 72)), t('lora_unet_x.lora_up.weight', [3, 2, 1, 1], randomF32(g, 6))]) }), ['3×3 conv', 'only linear and 1×1-conv']);
  await expectFormatError(lw.loadAdapter({ weights: encodeSafetensors([t('lora_unet_x.lora_down.weight', [2, 4], randomF32(g, 8)), t('lora_unet_x.hada_w1_a', [2, 4], randomF32(g, 8))]) }), ['hada_w1_a', 'LyCORIS']);
  await expectFormatError(lw.loadAdapter({ weights: encodeSafetensors([t(`${PEFT}q.lora_A.weight`, [2, 4], randomF32(g, 8)), { name: `${PEFT}q.lora_B.weight`, dtype: 'F64', shape: [3, 2], data: new Uint8Array(48) }]), config: baseConfig }), ['F64', 'does not support']);
  const live = lw.memoryStats().liveBlocks;
  await expectFormatError(lw.loadAdapter({ weights: encodeSafetensors([...pair('a'), ...pair('b', 3)]), config: baseConfig }), ['module "b" has rank 3']);
  assert.is(lw.memoryStats().liveBlocks, live, 'a failed load frees what it had read');
});

test('the remaining error paths of mergeAdapter, mergeAdapterFiles, saveAdapter and adapter_config.json are typed and named', async () => {
  const lw = await lwUnderTest();
  const mixed = (await readLocalFixture('adapters/peft-mixed/adapter_model.safetensors'))!;
  const mixedConfig = new TextDecoder().decode((await readLocalFixture('adapters/peft-mixed/adapter_config.json'))!);
  if (!mixed) return;
  const adapter = await lw.loadAdapter({ weights: mixed, config: mixedConfig });
  const g = rng(61);
  const base: Record<string, Matrix<DType>> = {
    'm.q.weight': lw.matrix(6, 5, randomF32(g, 30)), 'm.k.weight': lw.matrix(6, 5), 'm.emb.weight': lw.matrix(7, 4),
    'm.o.weight': lw.matrix(6, 5), 'm.o.bias': lw.matrix(1, 6),
  };
  const before = base['m.q.weight']!.toArray();
  const typed = (fn: () => unknown, cls: abstract new (...a: never[]) => Error, words: string[]) => {
    try {
      fn();
      assert.unreachable(`no error; expected ${words.join(', ')}`);
    } catch (e) {
      assert.instance(e, cls, (e as Error).message);
      for (const w of words) assert.ok((e as Error).message.includes(w), `"${(e as Error).message}" should mention "${w}"`);
    }
  };
  typed(() => lw.mergeAdapter(base, adapter), LoRAShapeError, ['mergeAdapter:', 'replaces "head.weight" but the base model has no such tensor']);
  base['head.weight'] = 'not a matrix' as never;
  typed(() => lw.mergeAdapter(base, adapter), LoRATypeError, ['mergeAdapter:', 'base["head.weight"] must be a Matrix']);
  assertBitIdentical(base['m.q.weight']!.data as Float32Array, before as Float32Array, 'nothing merged before the error');
  base['head.weight'] = lw.matrix(2, 6);
  const into = Object.fromEntries(Object.entries(base).map(([k, m]) => [k, lw.matrix(m.rows, m.cols)]));
  into['m.q.weight'] = lw.matrix(5, 6);
  typed(() => lw.mergeAdapter(base, adapter, { into }), LoRAShapeError, ['options.into["m.q.weight"] is [5, 6]', '[6, 5]']);
  typed(() => lw.mergeAdapter(base, {} as Adapter), LoRATypeError, ['adapter must be an Adapter']);
  typed(() => lw.mergeAdapter(base, adapter, { multiplier: Number.NaN }), LoRANonFiniteError, ['options.multiplier']);
  typed(() => lw.mergeAdapter(base, adapter, { prefix: 3 as never }), LoRATypeError, ['options.prefix']);
  // saveAdapter refusals
  const kohya = await lw.loadAdapter({ weights: (await readLocalFixture('adapters/kohya.safetensors'))! });
  typed(() => lw.saveAdapter(kohya, { baseModel: 'x' }), LoRATypeError, ['kohya adapter has no PEFT module names']);
  typed(() => lw.saveAdapter({ a: base['m.q.weight'] as never }, { baseModel: 'x' }), LoRATypeError, ['layers["a"] must be a LoRALinear']);
  typed(() => lw.saveAdapter({}, { baseModel: 'x' }), LoRAShapeError, ['nothing to save']);
  typed(() => lw.saveAdapter(adapter, {} as never), LoRATypeError, ['baseModel']);
  using W = lw.matrix(4, 4);
  const plain = lw.linear({ W, r: 2 }), rs = lw.linear({ W, r: 2, rslora: true });
  typed(() => lw.saveAdapter({ a: plain, b: rs }, { baseModel: 'x' }), LoRATypeError, ['cannot mix rsLoRA']);
  // adapter_config.json fields of the wrong kind
  const ok = encodeSafetensors([
    { name: `${PEFT}q.lora_A.weight`, dtype: 'F32', shape: [2, 4], data: new Uint8Array(32) },
    { name: `${PEFT}q.lora_B.weight`, dtype: 'F32', shape: [3, 2], data: new Uint8Array(24) },
  ]);
  for (const [patch, words] of [
    [{ bias: 'some' }, ['"bias" must be']], [{ r: 0 }, ['"r" must be a positive integer']], [{ lora_alpha: '4' }, ['"lora_alpha" must be a number']],
    [{ modules_to_save: 'head' }, ['"modules_to_save" must be a list']], [{ rank_pattern: { q: 'x' } }, ['"rank_pattern" "q" must be a positive integer']], [{ rank_pattern: [] }, ['"rank_pattern" must be an object of numbers']],
    [{ use_rslora: 'yes' }, ['"use_rslora" must be true or false']], [{ use_qalora: true }, ['QA-LoRA']], [{ target_parameters: ['w'] }, ['target_parameters']],
  ] as const) {
    await expectFormatError(lw.loadAdapter({ weights: ok, config: { ...baseConfig, ...patch } }), ['adapter_config.json', ...words]);
  }
  // arguments of the wrong kind
  for (const [call, words] of [
    [() => lw.loadAdapter(null as never), ['loadAdapter: options must be { weights, config }']],
    [() => lw.loadAdapter({ weights: 42 as never }), ['loadAdapter: weights must be bytes', '42']],
    [() => lw.loadTensors({} as never), ['loadTensors: source must be bytes']],
  ] as const) {
    try {
      await call();
      assert.unreachable(`no error; expected ${words.join(', ')}`);
    } catch (e) {
      assert.instance(e, LoRATypeError, (e as Error).message);
      for (const w of words) assert.ok((e as Error).message.includes(w), `"${(e as Error).message}" should mention "${w}"`);
    }
  }
  for (const a of [adapter, kohya, plain, rs]) a.dispose();
  for (const m of [...Object.values(base), ...Object.values(into)]) m.dispose();
});

test('saveAdapter: layers and Adapters save as PEFT files that load back identical, with a config PEFT accepts', async () => {
  const lw = await lwUnderTest();
  const g = rng(44);
  using W1 = lw.matrix(6, 5, randomF32(g, 30));
  using W2 = lw.matrix(4, 6, randomF32(g, 24));
  const l1 = lw.linear({ W: W1, r: 2, alpha: 8, seed: 1 }), l2 = lw.linear({ W: W2, r: 3, alpha: 8, seed: 2 });
  l1.A.data.set(randomF32(g, 12));
  l2.A.data.set(randomF32(g, 12));
  const saved = lw.saveAdapter({ 'model.layers.0.q_proj': l1, 'model.layers.0.v_proj': l2 }, { baseModel: 'my/base', taskType: 'CAUSAL_LM' });
  assert.equal([saved.config.peft_type, saved.config.base_model_name_or_path, saved.config.task_type, saved.config.use_rslora], ['LORA', 'my/base', 'CAUSAL_LM', false]);
  assert.equal(saved.config.target_modules, ['q_proj', 'v_proj']);
  const back = await lw.loadAdapter({ weights: saved.weights, config: JSON.stringify(saved.config) });
  const by = Object.fromEntries(back.modules.map((m) => [m.name, m]));
  assertBitIdentical(by['model.layers.0.q_proj']!.A.data as Float32Array, l1.A.data, 'lora_B == A');
  assertBitIdentical(by['model.layers.0.v_proj']!.B.data as Float32Array, l2.B.data, 'lora_A == B');
  assert.equal([by['model.layers.0.q_proj']!.scale, by['model.layers.0.v_proj']!.scale, by['model.layers.0.v_proj']!.r], [l1.scale, l2.scale, 3]);
  // an Adapter round trip, through the fan_in_fan_out / embedding transposes
  const again = lw.saveAdapter(back, { baseModel: 'my/base' });
  const third = await lw.loadAdapter({ weights: again.weights, config: again.config });
  assert.equal(third.modules.map((m) => [m.name, m.r, m.scale]), back.modules.map((m) => [m.name, m.r, m.scale]));
  for (const a of [back, third]) a.dispose();
  l1.dispose();
  l2.dispose();
});

test.run();
