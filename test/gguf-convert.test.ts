// PEFT adapter → llama.cpp LoRA adapter (src/adapters/convert-gguf.ts), against the real thing: a tiny
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
import { encodeGgufAdapter, planGgufAdapter } from '../src/adapters/convert-gguf.js';
import { GgufReader } from '../src/io/gguf.js';
import { encodeGguf, planGgufFrom, writeGguf } from '../src/io/gguf-write.js';
import { encodeSafetensors } from '../src/io/safetensors.js';
import { bytesSource } from '../src/io/source.js';
import { CASES, PEFT, closeLlama, distribution, f32bytes, ggufName, ggufRows, makePeft, mergedModel, naiveAdapter, open, tv } from './fixtures/peft-llama.js';
import { type TinyLlama, permuteRows, tinyLlama } from './fixtures/tiny-llama.js';
import { assertRejectsTyped, assertThrowsTyped, lwUnderTest, randomF32, rng } from './helpers.js';


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
  await closeLlama();
});

test.run();
