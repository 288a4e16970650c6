// PEFT adapter → llama.cpp LoRA adapter (src/gguf/convert-adapter.ts), against the real thing: a tiny
// llama GGUF, PEFT adapters with plain alpha/r, rsLoRA and rank/alpha patterns, converted, loaded by
// llama.cpp (node-llama-cpp) on the base, and compared with llama.cpp running a model merged in float64
// here (W + s·lora_B·lora_A, q/k rows permuted as the base stores them). A naive conversion (alpha
// copied from the config, nothing folded) must fail the same bound where the per-module scales differ.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Adapter } from '../src/adapters/adapter.js';
import { LoRAFormatError, LoRAShapeError, LoRATypeError } from '../src/errors.js';
import { encodeGgufAdapter, planGgufAdapter } from '../src/gguf/convert-adapter.js';
import { GgufReader } from '../src/io/gguf.js';
import { encodeGguf, planGgufFrom, writeGguf } from '../src/io/gguf-write.js';
import { encodeSafetensors } from '../src/io/safetensors.js';
import { bytesSource } from '../src/io/source.js';
import { type TinyLlama, permuteRows, tinyLlama } from './fixtures/tiny-llama.js';
import { assertRejectsTyped, assertThrowsTyped, lwUnderTest, randomF32, rng } from './helpers.js';

const PEFT = 'base_model.model.';
const f32bytes = (x: Float32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
const open = (bytes: Uint8Array, name = 'base.gguf') => GgufReader.open(bytesSource(bytes, name));
const MODULES = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'];
const GGUF_OF: Record<string, string> = {
  'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k', 'self_attn.v_proj': 'attn_v', 'self_attn.o_proj': 'attn_output',
  'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up', 'mlp.down_proj': 'ffn_down',
};

interface PeftCase {
  readonly name: string;
  readonly config: Record<string, unknown>;
  /** Each module's (r, alpha) as the test reads the config (independently of the loader). */
  readonly rank: (module: string) => number;
  readonly alpha: (module: string) => number;
  /** Also LoRAs on embed_tokens (lora_embedding_A/B → token_embd) and lm_head (→ output). */
  readonly ends?: boolean;
}

const CASES: PeftCase[] = [
  { name: 'plain alpha/r', config: { r: 8, lora_alpha: 16 }, rank: () => 8, alpha: () => 16 },
  { name: 'rsLoRA', config: { r: 8, lora_alpha: 4, use_rslora: true }, rank: () => 8, alpha: () => 4 },
  {
    name: 'rank_pattern + alpha_pattern',
    config: { r: 4, lora_alpha: 8, rank_pattern: { q_proj: 8, down_proj: 2 }, alpha_pattern: { v_proj: 32, 'layers.1.mlp.up_proj': 1 } },
    rank: (m) => (m.endsWith('q_proj') ? 8 : m.endsWith('down_proj') ? 2 : 4),
    alpha: (m) => (m.endsWith('v_proj') ? 32 : m.endsWith('layers.1.mlp.up_proj') ? 1 : 8),
  },
  {
    name: 'rsLoRA + rank_pattern',
    config: { r: 4, lora_alpha: 6, use_rslora: true, rank_pattern: { k_proj: 16, gate_proj: 2 } },
    rank: (m) => (m.endsWith('k_proj') ? 16 : m.endsWith('gate_proj') ? 2 : 4),
    alpha: () => 6,
  },
  {
    name: 'embed_tokens + lm_head, alpha_pattern',
    config: { r: 4, lora_alpha: 8, alpha_pattern: { embed_tokens: 2, o_proj: 12 } },
    rank: () => 4,
    alpha: (m) => (m === 'model.embed_tokens' ? 2 : m.endsWith('o_proj') ? 12 : 8),
    ends: true,
  },
];

interface PeftAdapter {
  readonly weights: Uint8Array;
  readonly config: Record<string, unknown>;
  /** HF module → lora_A [r, in], lora_B [out, r], s. */
  readonly modules: Map<string, { r: number; alpha: number; s: number; loraA: Float32Array; loraB: Float32Array; out: number; inn: number; embedding: boolean }>;
}

function makePeft(m: TinyLlama, c: PeftCase, seed: number): PeftAdapter {
  const g = rng(seed);
  const tensors = [];
  const modules: PeftAdapter['modules'] = new Map();
  const names = [...(c.ends ? ['model.embed_tokens', 'lm_head'] : []), ...Array.from({ length: m.config.layers }, (_, l) => MODULES.map((mod) => `model.layers.${l}.${mod}`)).flat()];
  for (const name of names) {
    const embedding = name === 'model.embed_tokens';
    const [out, inn] = m.hf.get(`${name}.weight`)!.shape as [number, number];
    const r = c.rank(name);
    const alpha = c.alpha(name);
    const s = c.config.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
    if (embedding) {
      // lora_embedding_A [r, num], lora_embedding_B [dim, r]: ΔW [num, dim] = s·(lora_embedding_B·lora_embedding_A)ᵀ
      const loraA = randomF32(g, r * out, 1);
      const loraB = randomF32(g, inn * r, 0.3 / Math.sqrt(r));
      modules.set(name, { r, alpha, s, loraA, loraB, out, inn, embedding });
      tensors.push({ name: `${PEFT}${name}.lora_embedding_A`, dtype: 'F32', shape: [r, out], data: f32bytes(loraA) });
      tensors.push({ name: `${PEFT}${name}.lora_embedding_B`, dtype: 'F32', shape: [inn, r], data: f32bytes(loraB) });
      continue;
    }
    const loraA = randomF32(g, r * inn, 0.5 / Math.sqrt(inn));
    const loraB = randomF32(g, out * r, 0.4 / Math.sqrt(r));
    modules.set(name, { r, alpha, s, loraA, loraB, out, inn, embedding });
    tensors.push({ name: `${PEFT}${name}.lora_A.weight`, dtype: 'F32', shape: [r, inn], data: f32bytes(loraA) });
    tensors.push({ name: `${PEFT}${name}.lora_B.weight`, dtype: 'F32', shape: [out, r], data: f32bytes(loraB) });
  }
  const config = { peft_type: 'LORA', target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], use_rslora: false, fan_in_fan_out: false, bias: 'none', ...c.config };
  return { weights: encodeSafetensors(tensors), config, modules };
}

/** Rows of lora_B in the base GGUF's order (q/k permuted as llama.cpp's converter permutes W). */
function ggufRows(m: TinyLlama, module: string, loraB: Float32Array, out: number, r: number): Float32Array {
  if (module.endsWith('q_proj')) return permuteRows(loraB, out, r, m.config.heads);
  if (module.endsWith('k_proj')) return permuteRows(loraB, out, r, m.config.headsKv);
  return loraB;
}
const ggufName = (module: string) => module === 'model.embed_tokens' ? 'token_embd.weight' : module === 'lm_head' ? 'output.weight' : `blk.${/layers\.(\d+)\./.exec(module)![1]}.${GGUF_OF[module.replace(/^model\.layers\.\d+\./, '')]}.weight`;

/** The base with W + s·lora_B·lora_A merged in float64 (W as the base stores it), as an F32 GGUF. */
async function mergedModel(m: TinyLlama, p: PeftAdapter): Promise<Uint8Array> {
  const merged = new Map<string, Float32Array>();
  for (const [module, { s, loraA, loraB, out, inn, r, embedding }] of p.modules) {
    const name = ggufName(module);
    const w = m.tensors.find((t) => t.gguf === name)!.values;
    const b = ggufRows(m, module, loraB, out, r);
    const res = new Float32Array(out * inn);
    for (let i = 0; i < out; i++) {
      for (let j = 0; j < inn; j++) {
        let d = 0;
        if (embedding) for (let k = 0; k < r; k++) d += loraB[j * r + k]! * loraA[k * out + i]!;
        else for (let k = 0; k < r; k++) d += b[i * r + k]! * loraA[k * inn + j]!;
        res[i * inn + j] = w[i * inn + j]! + s * d;
      }
    }
    merged.set(name, res);
  }
  const reader = await open(m.bytes);
  const plan = await planGgufFrom(reader);
  const outBytes = new Uint8Array(plan.fileSize);
  let at = 0;
  await writeGguf(plan, { write: (b) => { outBytes.set(b, at); at += b.length; } }, (t) => {
    const x = merged.get(t.name);
    return x ? f32bytes(x) : reader.read(t.from!);
  });
  return outBytes;
}

/** What convert_lora_to_gguf.py writes: lora_alpha from the config, factors as stored (q/k rows permuted). */
function naiveAdapter(m: TinyLlama, p: PeftAdapter): Promise<Uint8Array> {
  const tensors = [];
  for (const [module, { loraA, loraB, out, inn, r, embedding }] of p.modules) {
    const name = ggufName(module);
    if (embedding) {
      // convert_lora_to_gguf.py: token_embd's lora_a is lora_embedding_Aᵀ [num, r], lora_b lora_embedding_B [dim, r]
      const aT = new Float32Array(out * r);
      for (let k = 0; k < r; k++) for (let v = 0; v < out; v++) aT[v * r + k] = loraA[k * out + v]!;
      tensors.push({ name: `${name}.lora_a`, type: 'F32' as const, shape: [out, r], data: aT });
      tensors.push({ name: `${name}.lora_b`, type: 'F32' as const, shape: [inn, r], data: loraB });
      continue;
    }
    tensors.push({ name: `${name}.lora_a`, type: 'F32' as const, shape: [r, inn], data: loraA });
    tensors.push({ name: `${name}.lora_b`, type: 'F32' as const, shape: [out, r], data: ggufRows(m, module, loraB, out, r) });
  }
  return encodeGguf({
    metadata: [
      { key: 'general.architecture', type: 'STRING', value: 'llama' },
      { key: 'general.type', type: 'STRING', value: 'adapter' },
      { key: 'adapter.type', type: 'STRING', value: 'lora' },
      { key: 'adapter.lora.alpha', type: 'FLOAT32', value: p.config.lora_alpha as number },
    ],
    tensors,
  });
}

// ---- llama.cpp --------------------------------------------------------------------------------

type Llama = Awaited<ReturnType<typeof import('node-llama-cpp')['getLlama']>>;
let llama: Promise<Llama> | undefined;
const dir = mkdtempSync(join(tmpdir(), 'lora-wasm-gguf-convert-'));
let files = 0;

/** llama.cpp's full next-token distribution after a short prompt, for `model` (+ `adapter` at scale 1). */
async function distribution(model: Uint8Array, adapter?: Uint8Array): Promise<Float64Array> {
  const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
  llama ??= getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  const path = join(dir, `m${files++}.gguf`);
  writeFileSync(path, model);
  const loaded = await (await llama).loadModel({ modelPath: path });
  try {
    const lora = adapter && { adapters: [{ filePath: join(dir, `a${files++}.gguf`), scale: 1 }] };
    if (lora) writeFileSync(lora.adapters[0]!.filePath, adapter!);
    const context = await loaded.createContext({ contextSize: 64, ...(lora && { lora }) });
    try {
      const tokens = loaded.tokenize('the a is to');
      const out = await context.getSequence().controlledEvaluate([
        ...tokens.slice(0, -1),
        [tokens.at(-1)!, { generateNext: { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } } }],
      ]);
      const p = out.at(-1)!.next.probabilities! as Map<number, number>;
      const dist = new Float64Array(p.size);
      for (const [k, v] of p) dist[k] = v;
      return dist;
    } finally {
      await context.dispose();
    }
  } finally {
    await loaded.dispose();
  }
}

/** Total variation distance ½·Σ|p − q|. */
function tv(p: Float64Array, q: Float64Array): number {
  assert.is(p.length, q.length);
  let d = 0;
  for (let i = 0; i < p.length; i++) d += Math.abs(p[i]! - q[i]!);
  return d / 2;
}

const BOUND = 2e-3;
const measured: string[] = [];
let model: TinyLlama | undefined;
const base = async () => (model ??= await tinyLlama({ seed: 11 }));

for (const [k, c] of CASES.entries()) {
  test(`llama.cpp with the converted adapter (${c.name}) matches the float64-merged model within TV ${BOUND}`, async () => {
    const lw = await lwUnderTest();
    const m = await base();
    const peft = makePeft(m, c, 100 + k);
    const adapter = await lw.loadAdapter({ weights: peft.weights, config: peft.config });
    try {
      const reader = await open(m.bytes);
      const bytes = await encodeGgufAdapter(adapter, reader);
      const [pBase, pMerged, pConverted, pNaive] = [
        await distribution(m.bytes),
        await distribution(await mergedModel(m, peft)),
        await distribution(m.bytes, bytes),
        await distribution(m.bytes, await naiveAdapter(m, peft)),
      ];
      const moved = tv(pBase, pMerged);
      const converted = tv(pConverted, pMerged);
      const naive = tv(pNaive, pMerged);
      measured.push(`${c.name}: TV(converted, merged) = ${converted.toExponential(2)}, TV(naive, merged) = ${naive.toExponential(2)}, TV(base, merged) = ${moved.toExponential(2)}`);
      assert.ok(moved > 20 * BOUND, `${c.name}: the adapter moves the distribution (TV ${moved})`);
      assert.ok(converted <= BOUND, `${c.name}: converted TV ${converted} > ${BOUND}`);
      const uniform = [...peft.modules.values()].every((x) => x.s * x.r === (peft.config.lora_alpha as number));
      if (uniform) assert.ok(naive <= BOUND, `${c.name}: alpha/r everywhere, the naive conversion is right too (TV ${naive})`);
      else assert.ok(naive > 10 * BOUND, `${c.name}: the naive conversion must fail the bound (TV ${naive})`);
    } finally {
      adapter.dispose();
    }
  });
}

// ---- the file, without llama.cpp ---------------------------------------------------------------

const f32 = Math.fround;
/** The f32 values of a tensor of a file. */
async function values(r: GgufReader, name: string): Promise<Float32Array> {
  const t = r.get(name);
  assert.ok(t, `the file holds ${name}`);
  assert.is(t!.typeName, 'F32');
  return new Float32Array((await r.read(t!)).slice().buffer);
}

for (const k of [2, 3]) {
  const c = CASES[k]!;
  test(`the file (${c.name}): what llama.cpp checks, <base>.weight.lora_a/.lora_b with its shapes, one alpha; factors verbatim where λ = fl32(s), else lora_b = fl32(s/λ · lora_B)`, async () => {
    const lw = await lwUnderTest();
    const m = await base();
    const peft = makePeft(m, c, 100 + k);
    const adapter = await lw.loadAdapter({ weights: peft.weights, config: peft.config });
    try {
      const reader = await open(m.bytes);
      const plan = planGgufAdapter(adapter, reader);
      const file = await open(await encodeGgufAdapter(adapter, reader), 'adapter.gguf');
      assert.equal(file.metadata.map((e) => [e.key, e.type]), [['general.architecture', 'STRING'], ['general.type', 'STRING'], ['adapter.type', 'STRING'], ['adapter.lora.alpha', 'FLOAT32']]);
      assert.equal([file.value('general.architecture'), file.value('general.type'), file.value('adapter.type')], ['llama', 'adapter', 'lora']);
      // the value of s·r most modules share: (c) lora_alpha = 8 (rank_pattern alone needs no fold); (d) 6·√4 = 12
      const alpha = file.value('adapter.lora.alpha') as number;
      assert.is(alpha, k === 2 ? 8 : 12);
      assert.is(plan.alpha, alpha);
      assert.is(file.tensors.length, 2 * peft.modules.size);
      let folded = 0;
      for (const [module, x] of peft.modules) {
        const name = ggufName(module);
        assert.equal(file.get(`${name}.lora_a`)!.shape, [x.r, x.inn], `${name}.lora_a`);
        assert.equal(file.get(`${name}.lora_b`)!.shape, [x.out, x.r], `${name}.lora_b`);
        assert.equal(await values(file, `${name}.lora_a`), x.loraA, `${name}.lora_a: lora_A as stored`);
        const lambda = f32(f32(alpha) / x.r); // llama-adapter.h get_scale at user scale 1, in f32
        const rows = ggufRows(m, module, x.loraB, x.out, x.r);
        const want = lambda === f32(x.s) ? rows : rows.map((v) => f32((x.s / lambda) * v));
        if (lambda !== f32(x.s)) folded++;
        assert.equal(await values(file, `${name}.lora_b`), want, `${name}.lora_b`);
        const p = plan.modules.find((q) => q.target === name)!;
        assert.equal([p.loraA, p.loraB, p.llamaScale, p.fold], [`${name}.lora_a`, `${name}.lora_b`, lambda, lambda === f32(x.s) ? 1 : x.s / lambda]);
      }
      // (c): v_proj (α 32) in both layers and layers.1 up_proj (α 1); (d): k_proj and gate_proj in both layers
      assert.is(folded, k === 2 ? 3 : 4);
    } finally {
      adapter.dispose();
    }
  });
}

test('dtype f16: the factors rounded to f16 (round to nearest even) by the engine, and llama.cpp still matches the merged model', async () => {
  const { getFloat16, setFloat16 } = await import('@petamoriken/float16');
  const lw = await lwUnderTest();
  const m = await base();
  const c = CASES[3]!;
  const peft = makePeft(m, c, 103);
  const adapter = await lw.loadAdapter({ weights: peft.weights, config: peft.config });
  try {
    const reader = await open(m.bytes);
    assertThrowsTyped(() => planGgufAdapter(adapter, reader, { dtype: 'bf16' as 'f16' }), LoRATypeError, ['dtype', 'bf16']);
    await assertRejectsTyped(() => encodeGgufAdapter(adapter, reader, { dtype: 'f16' }), LoRATypeError, ['f16', 'engine']);
    const bytes16 = await encodeGgufAdapter(adapter, reader, { dtype: 'f16' }, lw);
    const f16 = await open(bytes16, 'adapter-f16.gguf');
    const f32file = await open(await encodeGgufAdapter(adapter, reader), 'adapter-f32.gguf');
    assert.equal(f16.metadata.map((e) => e.value), f32file.metadata.map((e) => e.value));
    const dv = new DataView(new ArrayBuffer(2));
    for (const t of f16.tensors) {
      assert.is(t.typeName, 'F16', t.name);
      const got = new Uint16Array((await f16.read(t)).slice().buffer);
      const want = await values(f32file, t.name);
      for (let i = 0; i < want.length; i++) {
        setFloat16(dv, 0, want[i]!, true);
        if (dv.getUint16(0, true) !== got[i]) assert.unreachable(`${t.name}[${i}]: ${want[i]} → 0x${got[i]!.toString(16)}, want ${getFloat16(dv, 0, true)}`);
      }
    }
    const converted = tv(await distribution(m.bytes, bytes16), await distribution(await mergedModel(m, peft)));
    measured.push(`${c.name}, f16 factors: TV(converted, merged) = ${converted.toExponential(2)}`);
    assert.ok(converted <= BOUND, `f16: TV ${converted}`);
  } finally {
    adapter.dispose();
  }
});

test('refuses what a llama.cpp adapter cannot carry (lora_bias, modules_to_save, DoRA, kohya, conv) and modules the base lacks or that do not fit; fan_in_fan_out and aLoRA tokens carried', async () => {
  const lw = await lwUnderTest();
  const m = await base();
  const reader = await open(m.bytes);
  const g = rng(9);
  const q = 'model.layers.0.self_attn.q_proj';
  const pair = (name: string, out: number, inn: number, r = 2) => [
    { name: `${PEFT}${name}.lora_A.weight`, dtype: 'F32', shape: [r, inn], data: f32bytes(randomF32(g, r * inn)) },
    { name: `${PEFT}${name}.lora_B.weight`, dtype: 'F32', shape: [out, r], data: f32bytes(randomF32(g, out * r)) },
  ];
  const config = { peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['q_proj'], bias: 'none' };
  const refused = async (weights: Uint8Array, cfg: Record<string, unknown>, cls: typeof LoRAFormatError | typeof LoRAShapeError, words: string[]) => {
    const adapter = await lw.loadAdapter({ weights, config: cfg });
    try {
      assertThrowsTyped(() => planGgufAdapter(adapter, reader), cls, words);
    } finally {
      adapter.dispose();
    }
  };
  await refused(encodeSafetensors([...pair(q, 64, 64), { name: `${PEFT}${q}.lora_B.bias`, dtype: 'F32', shape: [64], data: f32bytes(randomF32(g, 64)) }]), { ...config, lora_bias: true },
    LoRAFormatError, ['lora_bias', q, '.lora_a/.lora_b']);
  await refused(encodeSafetensors([...pair(q, 64, 64), { name: `${PEFT}lm_head.weight`, dtype: 'F32', shape: [m.config.vocab, 64], data: f32bytes(randomF32(g, m.config.vocab * 64)) }]), { ...config, modules_to_save: ['lm_head'] },
    LoRAFormatError, ['modules_to_save', 'lm_head.weight', 'cannot replace']);
  await refused(encodeSafetensors(pair('model.layers.0.self_attn.rotary', 64, 64)), config, LoRAShapeError, ['model.layers.0.self_attn.rotary']);
  await refused(encodeSafetensors(pair('model.layers.7.mlp.up_proj', 128, 64)), config, LoRAShapeError, ['blk.7.ffn_up.weight']);
  await refused(encodeSafetensors(pair('model.layers.0.mlp.up_proj', 64, 128)), config, LoRAShapeError, ['[64, 128]', '[128, 64]', 'blk.0.ffn_up.weight']);
  // fan_in_fan_out (GPT-2's Conv1D, W stored [in, out]; llama.cpp's converters store [out, in]): the
  // same lora_A/lora_B give the same file as without it
  const ffn = encodeSafetensors(pair('model.layers.0.mlp.up_proj', 128, 64));
  const files = [];
  for (const cfg of [config, { ...config, fan_in_fan_out: true }]) {
    const adapter = await lw.loadAdapter({ weights: ffn, config: cfg });
    try {
      assert.is(adapter.modules[0]!.fanInFanOut, cfg !== config);
      files.push(await encodeGgufAdapter(adapter, reader));
    } finally {
      adapter.dispose();
    }
  }
  assert.equal(files[1], files[0], 'fan_in_fan_out: the same file');
  // what the loader itself refuses cannot reach here; an Adapter made otherwise is refused by name
  const plain = await lw.loadAdapter({ weights: encodeSafetensors(pair(q, 64, 64)), config });
  try {
    for (const [made, words] of [
      [new Adapter('peft', [...plain.modules], [], { ...config, use_dora: true }), ['use_dora', 'DoRA']],
      [new Adapter('peft', [...plain.modules], [], { ...config, peft_type: 'LOHA' }), ['LOHA']],
      [new Adapter('kohya', [...plain.modules], [], {}), ['kohya']],
      [new Adapter('peft', [{ ...plain.modules[0]!, kind: 'conv1x1' }], [], config), ['1×1 conv']],
      [new Adapter('peft', [...plain.modules], [], { ...config, invocation_string: '<x>' }), ['invocation_string', 'alora_invocation_tokens']],
      [new Adapter('peft', [], [], config), ['no LoRA modules']],
    ] as const) assertThrowsTyped(() => planGgufAdapter(made, reader), LoRAFormatError, [...words]);
    assertThrowsTyped(() => planGgufAdapter({} as Adapter, reader), LoRATypeError, ['Adapter']);
    // an activated LoRA's invocation tokens go where llama.cpp reads them
    const alora = await open(await encodeGgufAdapter(new Adapter('peft', [...plain.modules], [], { ...config, alora_invocation_tokens: [5, 7] }), reader));
    assert.equal(alora.value('adapter.alora.invocation_tokens'), { type: 'UINT32', values: Uint32Array.of(5, 7) });
    // a prefix goes before the GGUF names (ggufTargetFor)
    assertThrowsTyped(() => planGgufAdapter(plain, reader, { prefix: 'text.' }), LoRAShapeError, ['text.blk.0.attn_q.weight']);
  } finally {
    plain.dispose();
  }
});

test.after(async () => {
  if (measured.length) console.log(`\n  ${measured.join('\n  ')}`);
  if (llama) await (await llama).dispose();
  rmSync(dir, { recursive: true, force: true });
});

test.run();
