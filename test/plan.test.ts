// The adapter planner (src/adapters/plan.ts) and its two executors: lw.mergeAdapter on resident
// tensors and lw.mergeAdapterFiles on streamed safetensors. Every rule holds in both, and each case
// here failed on the code before the planner (issue 16).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  type Adapter, type DType, LoRAFormatError, LoRANonFiniteError, LoRARangeError, LoRAShapeError, LoRATypeError, type LoRAWasm, type Matrix,
  SafetensorsReader, bytesSource, encodeSafetensors,
} from '../src/index.js';
import { assertBitIdentical, assertRejectsTyped, assertThrowsTyped, lwUnderTest, randomF32, rng } from './helpers.js';
import { rankReference } from './reference.js';

const PEFT = 'base_model.model.';
const f32bytes = (x: Float32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
const t = (name: string, shape: number[], data: Float32Array) => ({ name, dtype: 'F32', shape, data: f32bytes(data) });
const config = (extra: Record<string, unknown> = {}) => ({ peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['q'], bias: 'none', ...extra });

/** A PEFT pair for module `m` changing a [out, inn] weight at rank r: lora_A [r, inn], lora_B [out, r]. */
function pair(g: () => number, m: string, out: number, inn: number, r = 2, amp = 0.5) {
  return [t(`${PEFT}${m}.lora_A.weight`, [r, inn], randomF32(g, r * inn, amp)), t(`${PEFT}${m}.lora_B.weight`, [out, r], randomF32(g, out * r, amp))];
}

/** Streams `adapter` over a one-file base made of `tensors`; returns the output file's tensors as f32 (or raw bytes). */
async function streamMerge(lw: LoRAWasm, tensors: ReturnType<typeof t>[], adapter: Adapter, opts: Record<string, unknown> = {}) {
  const reader = await SafetensorsReader.open(bytesSource(encodeSafetensors(tensors)));
  const parts: Uint8Array[] = [];
  await lw.mergeAdapterFiles({ base: reader, adapter, sink: () => ({ write: async (b) => void parts.push(b.slice()) }), ...opts });
  const bytes = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) bytes.set(p, (o += p.length) - p.length);
  return SafetensorsReader.open(bytesSource(bytes));
}

test('PEFT task types add their heads to modules_to_save (peft_model.py: SEQ_CLS/TOKEN_CLS classifier+score, QUESTION_ANS qa_outputs)', async () => {
  const lw = await lwUnderTest();
  const g = rng(1);
  const score = randomF32(g, 2 * 4);
  // a GPT-2 classifier adapter: task SEQ_CLS, modules_to_save null, and score.weight saved anyway
  const weights = encodeSafetensors([...pair(g, 'h.q', 3, 4), t(`${PEFT}score.weight`, [2, 4], score)]);
  const a = await lw.loadAdapter({ weights, config: config({ task_type: 'SEQ_CLS', modules_to_save: null }) });
  assert.equal(a.replacements.map((r) => r.name), ['score.weight']);
  const base: Record<string, Matrix<DType>> = { 'h.q.weight': lw.matrix(3, 4), 'score.weight': lw.matrix(2, 4) };
  assert.equal(lw.mergeAdapter(base, a).replaced, ['score.weight']);
  assertBitIdentical(base['score.weight']!.toFloat32(), score, 'score.weight replaced');
  a.dispose();
  const qa = await lw.loadAdapter({ weights: encodeSafetensors([...pair(g, 'h.q', 3, 4), t(`${PEFT}qa_outputs.weight`, [2, 4], score)]), config: config({ task_type: 'QUESTION_ANS' }) });
  assert.equal(qa.replacements.map((r) => r.name), ['qa_outputs.weight']);
  qa.dispose();
  // the same tensor with a task type that adds no heads is still refused, as is an unknown tensor with SEQ_CLS
  await assertRejectsTyped(lw.loadAdapter({ weights, config: config({ task_type: 'CAUSAL_LM' }) }), LoRAFormatError, ['score.weight', 'refusing to skip']);
  await assertRejectsTyped(
    lw.loadAdapter({ weights: encodeSafetensors([...pair(g, 'h.q', 3, 4), t(`${PEFT}mystery.weight`, [2], randomF32(g, 2))]), config: config({ task_type: 'SEQ_CLS' }) }),
    LoRAFormatError, ['mystery.weight'],
  );
});

test('rank_pattern/alpha_pattern keys match as PEFT\'s re.match(rf"(.*\\.)?({key})$") (utils/other.py, get_pattern_key)', async () => {
  const lw = await lwUnderTest();
  const g = rng(2);
  // without the group, "o_proj|v_proj" would match "x.dev_proj" (…v_proj$) and "o_proj_gate" (^o_proj…)
  const weights = encodeSafetensors([...pair(g, 'x.o_proj', 3, 4), ...pair(g, 'x.dev_proj', 3, 4), ...pair(g, 'x.o_proj_gate', 3, 4), ...pair(g, 'y.v_proj', 3, 4)]);
  const a = await lw.loadAdapter({ weights, config: config({ alpha_pattern: { 'o_proj|v_proj': 8 } }) });
  const scale = Object.fromEntries(a.modules.map((m) => [m.name, m.scale]));
  assert.equal(scale, { 'x.o_proj': 4, 'x.dev_proj': 2, 'x.o_proj_gate': 2, 'y.v_proj': 4 });
  a.dispose();
  // the first key in the config's order wins
  const b = await lw.loadAdapter({ weights, config: config({ alpha_pattern: { 'x\\..*': 6, o_proj: 8 } }) });
  assert.is(b.modules.find((m) => m.name === 'x.o_proj')!.scale, 3);
  b.dispose();
});

test('a hostile or invalid pattern key is a LoRAFormatError, and matching is linear in the name (RE2)', async () => {
  const lw = await lwUnderTest();
  const g = rng(3);
  const long = `m.${'a'.repeat(64)}`; // (a+)+b against 64 a's: backtracking engines take longer than the universe's age
  const weights = encodeSafetensors(pair(g, long, 3, 4));
  const a = await lw.loadAdapter({ weights, config: config({ alpha_pattern: { '(a+)+b': 2 } }) });
  assert.is(a.modules[0]!.scale, 2, 'no match, default alpha');
  a.dispose();
  await assertRejectsTyped(lw.loadAdapter({ weights, config: config({ alpha_pattern: { '(a': 2 } }) }), LoRAFormatError, ['alpha_pattern', '"(a"']);
  // lookarounds are not regular: RE2 refuses them (JavaScript's engine would accept this one)
  await assertRejectsTyped(lw.loadAdapter({ weights, config: config({ rank_pattern: { '(?<=m\\.)a+': 2 } }) }), LoRAFormatError, ['rank_pattern']);
});

test('two keys for one PEFT factor (x.lora_A.weight and x.lora_A.default.weight) are refused, not one dropped', async () => {
  const lw = await lwUnderTest();
  const g = rng(4);
  const [A, B] = pair(g, 'q', 3, 4);
  const twin = { ...A!, name: `${PEFT}q.lora_A.default.weight` };
  await assertRejectsTyped(lw.loadAdapter({ weights: encodeSafetensors([A!, B!, twin]), config: config() }), LoRAFormatError, ['q.lora_A.weight', 'q.lora_A.default.weight', 'same LoRA factor']);
  const saved = t(`${PEFT}head.weight`, [2, 4], randomF32(g, 8));
  await assertRejectsTyped(
    lw.loadAdapter({ weights: encodeSafetensors([A!, B!, saved, { ...saved, name: `${PEFT}head.modules_to_save.default.weight` }]), config: config({ modules_to_save: ['head'] }) }),
    LoRAFormatError, ['both replace "head.weight"'],
  );
});

test('kohya: a module with neither lora_down nor lora_up says so', async () => {
  const lw = await lwUnderTest();
  const one = new Float32Array([4]);
  await assertRejectsTyped(lw.loadAdapter({ weights: encodeSafetensors([{ name: 'lora_unet_x.alpha', dtype: 'F32', shape: [], data: f32bytes(one) }]) }), LoRAFormatError, ['has neither lora_up nor lora_down']);
});

test('two modules on one base tensor (kohya lora_te_x + lora_unet_x) are refused by both executors, nothing written', async () => {
  const lw = await lwUnderTest();
  const g = rng(5);
  const k = (m: string) => [t(`${m}.lora_down.weight`, [2, 4], randomF32(g, 8, 1e3)), t(`${m}.lora_up.weight`, [3, 2], randomF32(g, 6, 1e3))];
  const adapter = await lw.loadAdapter({ weights: encodeSafetensors([...k('lora_te_x'), ...k('lora_unet_x')]) });
  const W = randomF32(g, 12);
  const base: Record<string, Matrix<DType>> = { 'x.weight': lw.matrix(3, 4, W) };
  assertThrowsTyped(() => lw.mergeAdapter(base, adapter, { safe: true }), LoRAShapeError, ['"lora_te_x"', '"lora_unet_x"', 'both write "x.weight"']);
  assertBitIdentical(base['x.weight']!.toFloat32(), W, 'untouched');
  await assertRejectsTyped(streamMerge(lw, [t('x.weight', [3, 4], W)], adapter), LoRAShapeError, ['both write "x.weight"']);
  adapter.dispose();
});

test('a module and a replacement of one tensor are refused by both executors', async () => {
  const lw = await lwUnderTest();
  const g = rng(6);
  const adapter = await lw.loadAdapter({ weights: encodeSafetensors([...pair(g, 'q', 3, 4), t(`${PEFT}q.weight`, [3, 4], randomF32(g, 12))]), config: config({ modules_to_save: ['q'] }) });
  const W = randomF32(g, 12);
  assertThrowsTyped(() => lw.mergeAdapter({ 'q.weight': lw.matrix(3, 4, W) }, adapter), LoRAShapeError, ['module "q"', 'saved tensor', 'both write "q.weight"']);
  await assertRejectsTyped(streamMerge(lw, [t('q.weight', [3, 4], W)], adapter), LoRAShapeError, ['both write "q.weight"']);
  adapter.dispose();
});

test('lora_bias merges in both executors, bit for bit alike', async () => {
  const lw = await lwUnderTest();
  const g = rng(7);
  const bias = randomF32(g, 3);
  const adapter = await lw.loadAdapter({ weights: encodeSafetensors([...pair(g, 'q', 3, 4), t(`${PEFT}q.lora_B.bias`, [3], bias)]), config: config({ lora_bias: true }) });
  const W = randomF32(g, 12);
  const b0 = randomF32(g, 3);
  const base: Record<string, Matrix<DType>> = { 'q.weight': lw.matrix(3, 4, W), 'q.bias': lw.matrix(1, 3, b0) };
  lw.mergeAdapter(base, adapter, { multiplier: 0.5 });
  const want = b0.map((v, i) => Math.fround(v + Math.fround(0.5 * 2) * bias[i]!));
  assertBitIdentical(base['q.bias']!.toFloat32(), Float32Array.from(want), 'bias + m·s·lora_B.bias');
  const out = await streamMerge(lw, [t('q.weight', [3, 4], W), t('q.bias', [3], b0)], adapter, { multiplier: 0.5 });
  const read = async (n: string) => new Float32Array((await out.read(n)).bytes.slice().buffer);
  assertBitIdentical(await read('q.bias'), base['q.bias']!.toFloat32(), 'streamed bias');
  assertBitIdentical(await read('q.weight'), base['q.weight']!.toFloat32(), 'streamed weight');
  adapter.dispose();
});

test('safe bounds the type actually written: --dtype f16 with safe refuses Inf in merged and untouched tensors alike', async () => {
  const lw = await lwUnderTest();
  const g = rng(8);
  const adapter = await lw.loadAdapter({ weights: encodeSafetensors(pair(g, 'q', 3, 4)), config: config() });
  const small = randomF32(g, 12);
  const big = Float32Array.from(randomF32(g, 8), (v, i) => (i === 5 ? 1e5 : v)); // finite in f32, +Inf in f16
  // untouched tensor past f16's range
  await assertRejectsTyped(streamMerge(lw, [t('q.weight', [3, 4], small), t('other.weight', [2, 4], big)], adapter, { dtype: 'f16', safe: true }), LoRANonFiniteError, ['"other.weight"', '[1, 1]', 'f16']);
  // merged tensor past f16's range
  const nearMax = Float32Array.from(small, (v, i) => (i === 0 ? 65500 : v));
  const hot = await lw.loadAdapter({ weights: encodeSafetensors([t(`${PEFT}q.lora_A.weight`, [2, 4], new Float32Array(8).fill(10)), t(`${PEFT}q.lora_B.weight`, [3, 2], new Float32Array(6).fill(10))]), config: config() });
  await assertRejectsTyped(streamMerge(lw, [t('q.weight', [3, 4], nearMax)], hot, { dtype: 'f16', safe: true }), LoRANonFiniteError, ['"q.weight"', 'f16']);
  // without safe the same merge writes (and says nothing): safe is what bounds it
  const out = await streamMerge(lw, [t('q.weight', [3, 4], small), t('other.weight', [2, 4], big)], adapter, { dtype: 'f16' });
  assert.is(out.get('other.weight')!.dtype, 'F16');
  hot.dispose();
  adapter.dispose();
});

test('mergeAdapter safe: a replacement past the base tensor\'s type and NaN factors are refused, naming tensor and module', async () => {
  const lw = await lwUnderTest();
  const g = rng(9);
  const adapter = await lw.loadAdapter({ weights: encodeSafetensors([...pair(g, 'q', 3, 4), t(`${PEFT}head.weight`, [2, 4], new Float32Array(8).fill(1e6))]), config: config({ modules_to_save: ['head'] }) });
  const base: Record<string, Matrix<DType>> = { 'q.weight': lw.matrix(3, 4, randomF32(g, 12)), 'head.weight': lw.matrix(2, 4, undefined, { dtype: 'f16' }) };
  const before = base['q.weight']!.toFloat32();
  assertThrowsTyped(() => lw.mergeAdapter(base, adapter, { safe: true }), LoRANonFiniteError, ['"head.weight"', 'overflows f16']);
  assertBitIdentical(base['q.weight']!.toFloat32(), before, 'nothing written');
  adapter.dispose();
  const nan = pair(g, 'q', 3, 4);
  new Float32Array(nan[1]!.data.buffer)[3] = Number.NaN;
  const bad = await lw.loadAdapter({ weights: encodeSafetensors(nan), config: config() });
  assertThrowsTyped(() => lw.mergeAdapter(base, bad), LoRANonFiniteError, ['module "q" on "q.weight"']);
  bad.dispose();
});

test('mergeAdapter into: an output that shares memory with the base (or another output) is refused', async () => {
  const lw = await lwUnderTest();
  const g = rng(10);
  const adapter = await lw.loadAdapter({ weights: encodeSafetensors([...pair(g, 'q', 3, 4), ...pair(g, 'k', 3, 4)]), config: config() });
  const base: Record<string, Matrix<DType>> = { 'q.weight': lw.matrix(3, 4, randomF32(g, 12)), 'k.weight': lw.matrix(3, 4, randomF32(g, 12)) };
  const kBefore = base['k.weight']!.toFloat32();
  assertThrowsTyped(() => lw.mergeAdapter(base, adapter, { into: { 'q.weight': base['k.weight']!, 'k.weight': lw.matrix(3, 4) } }), LoRATypeError, ['options.into["q.weight"]', 'base["k.weight"]']);
  assertBitIdentical(base['k.weight']!.toFloat32(), kBefore, 'the base is untouched');
  const shared = lw.matrix(3, 4);
  assertThrowsTyped(() => lw.mergeAdapter(base, adapter, { into: { 'q.weight': shared, 'k.weight': shared } }), LoRATypeError, ['options.into["k.weight"]', 'options.into["q.weight"]']);
  // separate outputs: out = W0 + s·A·B, the base untouched
  const into = { 'q.weight': lw.matrix(3, 4), 'k.weight': lw.matrix(3, 4) };
  lw.mergeAdapter(base, adapter, { into });
  const q = adapter.modules.find((m) => m.name === 'q')!;
  const want = rankReference(base['q.weight']!.toFloat32(), q.A.toFloat32(), q.B.toFloat32(), 3, 2, 4, q.scale).value;
  for (let i = 0; i < 12; i++) assert.ok(Math.abs(into['q.weight'].toFloat32()[i]! - want[i]!) < 1e-5, `into holds W0 + s·A·B at ${i}`);
  adapter.dispose();
});

test('a tensor stored in two shards is refused, naming both', async () => {
  const lw = await lwUnderTest();
  const g = rng(11);
  const adapter = await lw.loadAdapter({ weights: encodeSafetensors(pair(g, 'q', 3, 4)), config: config() });
  const shard = async () => SafetensorsReader.open(bytesSource(encodeSafetensors([t('q.weight', [3, 4], randomF32(g, 12))]), 'shard.safetensors'));
  const writes: number[] = [];
  await assertRejectsTyped(
    lw.mergeAdapterFiles({ base: [await shard(), await shard()], adapter, sink: () => ({ write: async (b) => void writes.push(b.length) }) }),
    LoRAFormatError, ['"q.weight" is stored in both'],
  );
  assert.equal(writes, [], 'nothing written');
  adapter.dispose();
});

test('a multiplier that rounds to 0 in f32 is refused; 0 itself is allowed', async () => {
  const lw = await lwUnderTest();
  const g = rng(12);
  const adapter = await lw.loadAdapter({ weights: encodeSafetensors(pair(g, 'q', 3, 4)), config: config({ lora_alpha: 1 }) }); // s = 1/2
  const base = { 'q.weight': lw.matrix(3, 4, randomF32(g, 12)) };
  assertThrowsTyped(() => lw.mergeAdapter(base, adapter, { multiplier: 1e-50 }), LoRARangeError, ['options.multiplier', 'rounds to 0']);
  // 2^-149 (the least f32) is a fine multiplier, but 2^-149 · 1/2 is 0 in f32
  assertThrowsTyped(() => lw.mergeAdapter(base, adapter, { multiplier: 2 ** -149 }), LoRARangeError, ['module "q"', 'is 0 in f32']);
  const before = base['q.weight'].toFloat32();
  lw.mergeAdapter(base, adapter, { multiplier: 0 });
  assertBitIdentical(base['q.weight'].toFloat32(), before, 'multiplier 0 changes nothing');
  adapter.dispose();
});

test('zero-size base tensors pass through the file merge, with a type change too', async () => {
  const lw = await lwUnderTest();
  const g = rng(14);
  const adapter = await lw.loadAdapter({ weights: encodeSafetensors(pair(g, 'q', 3, 4)), config: config() });
  const empty = new Float32Array(0);
  for (const dtype of ['keep', 'f16'] as const) {
    const out = await streamMerge(lw, [t('q.weight', [3, 4], randomF32(g, 12)), t('e', [0, 4], empty), t('e2', [4, 0], empty), t('e3', [0], empty)], adapter, { dtype, safe: true });
    for (const n of ['e', 'e2', 'e3']) assert.is(out.get(n)!.end - out.get(n)!.begin, 0, `${n} (${dtype})`);
    assert.equal(out.get('e')!.shape, [0, 4]);
  }
  adapter.dispose();
});

test('a misspelled option is a LoRATypeError naming the known ones, never ignored (mergeAdapter, mergeAdapterFiles, loadAdapter, loadTensors)', async () => {
  const lw = await lwUnderTest();
  const g = rng(15);
  const weights = encodeSafetensors(pair(g, 'q', 3, 4));
  const adapter = await lw.loadAdapter({ weights, config: config() });
  const W = randomF32(g, 12);
  const base = { 'q.weight': lw.matrix(3, 4, W) };
  assertThrowsTyped(() => lw.mergeAdapter(base, adapter, { multipler: -1 } as never), LoRATypeError, ["unknown option 'multipler'", 'multiplier, prefix, safe, into']);
  assertThrowsTyped(() => lw.mergeAdapter(base, adapter, { into: { 'q.weight': lw.matrix(3, 4), zzz: lw.matrix(1, 1) } }), LoRATypeError, ['options.into["zzz"] names no base tensor']);
  assertBitIdentical(base['q.weight'].toFloat32(), W, 'untouched');
  const reader = await SafetensorsReader.open(bytesSource(encodeSafetensors([t('q.weight', [3, 4], W)])));
  await assertRejectsTyped(lw.mergeAdapterFiles({ base: reader, adapter, sink: () => ({ write: async () => {} }), Safe: true } as never), LoRATypeError, ["unknown option 'Safe'"]);
  await assertRejectsTyped(lw.loadAdapter({ weights, config: config(), prefix: 'model.' } as never), LoRATypeError, ["loadAdapter: unknown option 'prefix'"]);
  await assertRejectsTyped(lw.loadTensors(encodeSafetensors([t('q.weight', [3, 4], W)]), { name: ['q.weight'] } as never), LoRATypeError, ["loadTensors: unknown option 'name'"]);
  adapter.dispose();
});

test('adapter files: a zero-size factor, and a config with a key twice or a pattern key twice, are LoRAFormatErrors naming them', async () => {
  const lw = await lwUnderTest();
  const g = rng(16);
  const empty = [t(`${PEFT}q.lora_A.weight`, [2, 0], new Float32Array(0)), t(`${PEFT}q.lora_B.weight`, [3, 2], randomF32(g, 6))];
  await assertRejectsTyped(lw.loadAdapter({ weights: encodeSafetensors(empty), config: config() }), LoRAFormatError, ['"base_model.model.q.lora_A.weight"', '[2,0]', 'no elements']);
  const weights = encodeSafetensors(pair(g, 'q', 3, 4));
  const twice = '{"peft_type": "LORA", "r": 2, "lora_alpha": 2, "lora_alpha": 200}';
  await assertRejectsTyped(lw.loadAdapter({ weights, config: twice }), LoRAFormatError, ['adapter_config.json', '"lora_alpha"', 'twice']);
  const patternTwice = '{"peft_type": "LORA", "r": 2, "lora_alpha": 2, "rank_pattern": {"q": 2, "q": 3}}';
  await assertRejectsTyped(lw.loadAdapter({ weights, config: patternTwice }), LoRAFormatError, ['"q"', 'twice']);
});

test('a base tensor named __proto__ or constructor is a target like any other', async () => {
  const lw = await lwUnderTest();
  const g = rng(13);
  const adapter = await lw.loadAdapter({ weights: encodeSafetensors(pair(g, 'constructor', 3, 4)), config: config() });
  const base: Record<string, Matrix<DType>> = Object.create(null);
  base['constructor.weight'] = lw.matrix(3, 4);
  base.__proto__ = lw.matrix(1, 2);
  assert.equal(lw.mergeAdapter(base, adapter).merged, ['constructor.weight']);
  const missing = await lw.loadAdapter({ weights: encodeSafetensors(pair(g, 'toString', 3, 4)), config: config() });
  assertThrowsTyped(() => lw.mergeAdapter({ 'q.weight': lw.matrix(3, 4) }, missing), LoRAShapeError, ['no tensor "toString.weight"']);
  missing.dispose();
  adapter.dispose();
});

test.run();
