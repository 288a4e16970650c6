// GGUF names: Hugging Face modules → GGUF tensors and the converter's row permutation
// (llama.cpp convert_hf_to_gguf.py / conversion/llama.py LlamaModel.permute, gguf-py tensor_mapping.py),
// checked bit for bit against tiny models written as the converter writes them; and GGUF LoRA
// adapters (llama.cpp src/llama-adapter.cpp) read into our Adapter value.
import { getFloat16, setFloat16 } from '@petamoriken/float16';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { isGguf, readGgufAdapter } from '../src/adapters/load-gguf.js';
import type { MakeMatrix } from '../src/adapters/load.js';
import { LoRAFormatError, LoRAShapeError } from '../src/errors.js';
import { GGUF_NAME_ARCHS, type GgufModelInfo, ggufModelInfo, ggufTargetFor, llamaRowPermutation } from '../src/gguf/names.js';
import { quantize } from '../src/gguf/quant.js';
import { type GgufKV, GgufReader } from '../src/io/gguf.js';
import { encodeGguf } from '../src/io/gguf-write.js';
import type { GgmlTypeName } from '../src/io/gguf-types.js';
import { bytesSource } from '../src/io/source.js';
import { createMatrix } from '../src/ops/create.js';
import { loadEngine } from '../src/runtime/load.js';
import { type TinyLlamaOptions, permuteRows, tinyLlama } from './fixtures/tiny-llama.js';
import { BUILD, assertRejectsTyped, assertThrowsTyped, randomF32, rng } from './helpers.js';

const open = (bytes: Uint8Array, name = 'model.gguf') => GgufReader.open(bytesSource(bytes, name));

/** The f32 rows of a GGUF F32 tensor. */
async function f32Of(reader: GgufReader, name: string): Promise<Float32Array> {
  const bytes = await reader.read(name);
  return new Float32Array(bytes.slice().buffer);
}

/** rows of hf gathered by perm (identity when absent). */
function gather(hf: Float32Array, cols: number, perm?: Int32Array): Float32Array {
  if (!perm) return hf;
  const out = new Float32Array(hf.length);
  for (let i = 0; i < perm.length; i++) out.set(hf.subarray(perm[i]! * cols, (perm[i]! + 1) * cols), i * cols);
  return out;
}

function sameBits(got: Float32Array, want: Float32Array, what: string): void {
  assert.is(got.length, want.length, `${what}: length`);
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const w = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < g.length; i++) if (g[i] !== w[i]) assert.unreachable(`${what}: element ${i} is ${got[i]}, want ${want[i]}`);
}

/** For every 2-D hf weight of the model: the GGUF target's data = hf rows gathered by the permutation. */
async function checkEveryWeight(options: TinyLlamaOptions, expectPermuted: boolean): Promise<number> {
  const m = await tinyLlama(options);
  const reader = await open(m.bytes);
  const info = ggufModelInfo(reader);
  let n = 0;
  for (const [hfName, w] of m.hf) {
    if (w.shape.length !== 2) continue;
    const module = hfName.replace(/\.weight$/, '');
    const t = ggufTargetFor(info, module);
    const fixture = m.tensors.find((x) => x.hf === hfName)!;
    assert.is(t.target, fixture.gguf, module);
    const permuted = /\.(q|k)_proj$/.test(module) && expectPermuted;
    assert.is(t.rowPermutation !== undefined, permuted, `${module}: permuted`);
    sameBits(await f32Of(reader, t.target), gather(w.data, w.shape[1]!, t.rowPermutation), `${options.arch ?? 'llama'} ${module}`);
    n++;
  }
  return n;
}

test('llamaRowPermutation is LlamaModel.permute: it maps the fixture\'s HF rows to its GGUF rows', () => {
  const rows = 12;
  const cols = 3;
  const w = Float32Array.from({ length: rows * cols }, (_, i) => i);
  for (const heads of [1, 2, 3, 6]) sameBits(gather(w, cols, llamaRowPermutation(rows, heads)), permuteRows(w, rows, cols, heads), `heads ${heads}`);
  // numpy: np.arange(8).reshape(2, 2, 2).swapaxes(1, 2).reshape(8) for 2 heads of 4 rows
  assert.equal([...llamaRowPermutation(8, 2)], [0, 2, 1, 3, 4, 6, 5, 7]);
  assertThrowsTyped(() => llamaRowPermutation(12, 4), LoRAShapeError, ['12 rows', '4 heads']);
});

test('llama: every weight of tinyLlama equals its HF weight with the rows permuted (q: n_head, k: n_head_kv), bit for bit', async () => {
  assert.is(await checkEveryWeight({}, true), 2 + 2 * 7);
  // grouped-query attention: k has fewer heads than q, and both are permuted per their own head count
  assert.is(await checkEveryWeight({ heads: 8, headsKv: 2, layers: 1, seed: 3 }, true), 2 + 7);
});

test('qwen2, gemma, phi3: the converter leaves every weight\'s rows alone (identity mapping, no permutation)', async () => {
  assert.is(await checkEveryWeight({ arch: 'qwen2', headsKv: 2 }, false), 2 + 2 * 7);
  assert.is(await checkEveryWeight({ arch: 'gemma' }, false), 1 + 2 * 7); // no lm_head: tied
  assert.is(await checkEveryWeight({ arch: 'phi3', headsKv: 2 }, false), 2 + 2 * 4); // qkv_proj, o_proj, gate_up_proj, down_proj
});

test('ggufModelInfo reads the architecture, head counts and head size from the metadata', async () => {
  const info = ggufModelInfo(await open((await tinyLlama({ heads: 8, headsKv: 2, layers: 1 })).bytes));
  assert.is(info.architecture, 'llama');
  assert.is(info.nHead, 8);
  assert.is(info.nHeadKv, 2);
  assert.is(info.headDim, 8);
  assert.ok(info.names.has('blk.0.attn_q.weight'));
  // head_count_kv absent: llama.cpp takes head_count
  const noKv = await tinyLlama({ layers: 1 });
  const r = await open(noKv.bytes);
  assert.is(ggufModelInfo(r).nHeadKv, 4);
  const adapter = await tinyLlama({ layers: 1, arch: 'qwen2', metadata: [{ key: 'general.type', type: 'STRING', value: 'adapter' }] });
  const ar = await open(adapter.bytes);
  assertThrowsTyped(() => ggufModelInfo(ar), LoRAFormatError, ['model.gguf', 'adapter']);
});

test('module names: with or without a leading model. or base_model.model., lm_head and embed_tokens, prefix', async () => {
  const info = ggufModelInfo(await open((await tinyLlama()).bytes));
  for (const name of ['model.layers.1.mlp.down_proj', 'layers.1.mlp.down_proj', 'base_model.model.model.layers.1.mlp.down_proj']) {
    assert.is(ggufTargetFor(info, name).target, 'blk.1.ffn_down.weight', name);
  }
  assert.is(ggufTargetFor(info, 'lm_head').target, 'output.weight');
  assert.is(ggufTargetFor(info, 'model.embed_tokens').target, 'token_embd.weight');
  const prefixed: GgufModelInfo = { ...info, names: new Set([...info.names].map((n) => `x.${n}`)) };
  assert.is(ggufTargetFor(prefixed, 'model.layers.0.self_attn.v_proj', 'x.').target, 'x.blk.0.attn_v.weight');
});

test('throws LoRAShapeError naming up to 3 closest GGUF names for a module the model does not have', async () => {
  const info = ggufModelInfo(await open((await tinyLlama()).bytes));
  // a layer the model does not have
  const e = assertThrowsTyped(() => ggufTargetFor(info, 'model.layers.7.self_attn.q_proj'), LoRAShapeError, ['model.layers.7.self_attn.q_proj', 'blk.7.attn_q.weight', 'closest GGUF names', '"blk.0.attn_q.weight"', '"blk.1.attn_q.weight"']);
  assert.is((e.message.match(/"blk\./g) ?? []).length <= 4, true, e.message);
  // a module no rule maps
  assertThrowsTyped(() => ggufTargetFor(info, 'model.layers.0.self_attn.rotary_emb'), LoRAShapeError, ['rotary_emb', 'no GGUF tensor', 'llama', 'closest GGUF names']);
  // phi3 has no gate_proj; gemma has no lm_head
  const phi3 = ggufModelInfo(await open((await tinyLlama({ arch: 'phi3', layers: 1 })).bytes));
  assertThrowsTyped(() => ggufTargetFor(phi3, 'model.layers.0.mlp.gate_proj'), LoRAShapeError, ['gate_proj', 'phi3', '"blk.0.ffn_']);
  const gemma = ggufModelInfo(await open((await tinyLlama({ arch: 'gemma', layers: 1 })).bytes));
  assertThrowsTyped(() => ggufTargetFor(gemma, 'lm_head'), LoRAShapeError, ['lm_head', 'gemma']);
});

test('throws LoRAFormatError naming an unsupported architecture and the supported ones', () => {
  const info: GgufModelInfo = { architecture: 'bert', nHead: 2, nHeadKv: 2, names: new Set(['blk.0.attn_q.weight']) };
  assertThrowsTyped(() => ggufTargetFor(info, 'model.layers.0.self_attn.q_proj'), LoRAFormatError, ['"bert"', ...GGUF_NAME_ARCHS]);
  for (const a of ['llama', 'qwen2', 'gemma', 'phi3']) assert.ok(GGUF_NAME_ARCHS.includes(a), a);
});

// ---- GGUF LoRA adapters -----------------------------------------------------------------------

const engine = await loadEngine({ build: BUILD, threads: 1 });
const make: MakeMatrix = (rows, cols, data, dtype) => createMatrix(engine, rows, cols, data, { dtype });
const ADAPTER = 'lora.gguf';

interface Factor { readonly name: string; readonly shape: readonly [number, number]; readonly type?: GgmlTypeName; readonly values?: Float32Array; readonly bytes?: Uint8Array }
const HEAD: GgufKV[] = [
  { key: 'general.architecture', type: 'STRING', value: 'llama' },
  { key: 'general.type', type: 'STRING', value: 'adapter' },
  { key: 'adapter.type', type: 'STRING', value: 'lora' },
];

/** A GGUF adapter as convert_lora_to_gguf.py lays it out; shapes outermost first (lora_a [r, in], lora_b [out, r]). */
function adapterFile(factors: readonly Factor[], metadata: readonly GgufKV[] = [...HEAD, { key: 'adapter.lora.alpha', type: 'FLOAT32', value: 4 }]): Promise<Uint8Array> {
  return encodeGguf({
    metadata,
    tensors: factors.map((f) => {
      const type = f.type ?? 'F32';
      let data = f.bytes;
      if (!data && type === 'F32') data = new Uint8Array(f.values!.buffer.slice(0));
      if (!data) {
        const v = new DataView(new ArrayBuffer(f.values!.length * 2));
        f.values!.forEach((x, i) => (type === 'F16' ? setFloat16(v, 2 * i, x, true) : v.setUint16(2 * i, new Uint32Array(new Float32Array([x]).buffer)[0]! >>> 16, true)));
        data = new Uint8Array(v.buffer);
      }
      return { name: f.name, type, shape: f.shape, data };
    }),
  });
}
const readAdapter = async (bytes: Uint8Array, withEngine = true) => readGgufAdapter(await open(bytes, ADAPTER), make, withEngine ? engine : undefined);
const r1 = rng(11);
const vals = (n: number) => randomF32(r1, n);

test('a GGUF LoRA adapter loads: A = lora_b [out, r], B = lora_a [r, in] as stored, scale alpha/r (r from lora_b ne[0])', async () => {
  const qa = vals(2 * 8), qb = vals(6 * 2), da = vals(4 * 16), db = vals(8 * 4);
  const bytes = await adapterFile([
    { name: 'blk.0.attn_q.weight.lora_a', shape: [2, 8], values: qa },
    { name: 'blk.0.attn_q.weight.lora_b', shape: [6, 2], values: qb },
    { name: 'blk.1.ffn_down.weight.lora_b', shape: [8, 4], values: db },
    { name: 'blk.1.ffn_down.weight.lora_a', shape: [4, 16], values: da },
  ]);
  assert.ok(isGguf(bytes));
  assert.not.ok(isGguf(new Uint8Array([0x7b, 0x22, 0x47, 0x47])));
  const a = await readAdapter(bytes);
  try {
    assert.is(a.format, 'gguf');
    assert.equal(a.modules.map((m) => m.name), ['blk.0.attn_q', 'blk.1.ffn_down']);
    const [q, d] = a.modules as [typeof a.modules[0], typeof a.modules[0]];
    assert.equal([q.A.rows, q.A.cols, q.B.rows, q.B.cols, q.r, q.alpha, q.scale, q.kind], [6, 2, 2, 8, 2, 4, 2, 'linear']);
    assert.equal([d.A.rows, d.A.cols, d.B.rows, d.B.cols, d.r, d.scale], [8, 4, 4, 16, 4, 1]);
    sameBits(q.A.toFloat32(), qb, 'A = lora_b');
    sameBits(q.B.toFloat32(), qa, 'B = lora_a');
    sameBits(d.A.toFloat32(), db, 'A = lora_b');
    sameBits(d.B.toFloat32(), da, 'B = lora_a');
    assert.is(a.config['adapter.lora.alpha'], 4);
    assert.is(a.config['general.architecture'], 'llama');
  } finally {
    a.dispose();
  }
});

test('alpha 0 or absent: llama.cpp scales by the user scale alone (scale 1; alpha reported as r)', async () => {
  const f: Factor[] = [{ name: 'blk.0.attn_v.weight.lora_a', shape: [3, 4], values: vals(12) }, { name: 'blk.0.attn_v.weight.lora_b', shape: [5, 3], values: vals(15) }];
  for (const md of [HEAD, [...HEAD, { key: 'adapter.lora.alpha', type: 'FLOAT32', value: 0 } as GgufKV]]) {
    const a = await readAdapter(await adapterFile(f, md));
    assert.equal([a.modules[0]!.scale, a.modules[0]!.alpha, a.modules[0]!.r], [1, 3, 3]);
    a.dispose();
  }
});

test('F16 and BF16 factors stay half precision, bits as stored', async () => {
  for (const type of ['F16', 'BF16'] as const) {
    const bytesA = vals(2 * 4), bytesB = vals(4 * 2);
    const file = await adapterFile([{ name: 'output.weight.lora_a', shape: [2, 4], type, values: bytesA }, { name: 'output.weight.lora_b', shape: [4, 2], type, values: bytesB }]);
    const r = await open(file, ADAPTER);
    const stored = new Uint16Array((await r.read('output.weight.lora_a')).slice().buffer);
    const a = await readGgufAdapter(r, make);
    assert.is(a.modules[0]!.B.dtype, type.toLowerCase());
    assert.equal([...(a.modules[0]!.B.data as Uint16Array)], [...stored], type);
    a.dispose();
  }
});

test('Q8_0 factors are dequantized to f32: d·q per block, as ggml decodes them', async () => {
  const values = vals(2 * 64);
  const src = engine.heap.alloc(values.length * 4, 'test');
  const dst = engine.heap.alloc(4 * 34, 'test');
  engine.heap.f32At(src.ptr, values.length).set(values);
  quantize(engine, 'Q8_0', dst.ptr, src.ptr, values.length);
  const q8 = new Uint8Array(engine.heap.memory.buffer, dst.ptr, 4 * 34).slice();
  engine.heap.free(src);
  engine.heap.free(dst);
  // reference decode: block = f16 d, 32 × int8
  const dv = new DataView(q8.buffer);
  const want = new Float32Array(values.length);
  for (let b = 0; b < 4; b++) for (let j = 0; j < 32; j++) want[b * 32 + j] = getFloat16(dv, b * 34, true) * dv.getInt8(b * 34 + 2 + j);
  const file = await adapterFile([{ name: 'blk.0.attn_k.weight.lora_a', shape: [2, 64], type: 'Q8_0', bytes: q8 }, { name: 'blk.0.attn_k.weight.lora_b', shape: [3, 2], values: vals(6) }]);
  const before = engine.heap.stats().liveBlocks;
  const a = await readAdapter(file);
  assert.is(a.modules[0]!.B.dtype, 'f32');
  sameBits(a.modules[0]!.B.toFloat32(), want, 'Q8_0 lora_a');
  a.dispose();
  assert.is(engine.heap.stats().liveBlocks, before, 'no block left behind');
  await assertRejectsTyped(() => readAdapter(file, false), LoRAFormatError, [ADAPTER, 'blk.0.attn_k.weight.lora_a', 'Q8_0', 'engine']);
});

test('token_embd: lora_a ne [r, n_vocab] is A as stored, lora_b ne [r, n_embd] transposed is B (llm_build_inp_embd)', async () => {
  const [vocab, embd, r] = [7, 5, 3];
  const la = vals(vocab * r); // shape [n_vocab, r]
  const lb = vals(embd * r); // shape [n_embd, r]
  const a = await readAdapter(await adapterFile([{ name: 'token_embd.weight.lora_a', shape: [vocab, r], values: la }, { name: 'token_embd.weight.lora_b', shape: [embd, r], values: lb }]));
  const m = a.modules[0]!;
  assert.equal([m.name, m.kind, m.A.rows, m.A.cols, m.B.rows, m.B.cols, m.r], ['token_embd', 'embedding', vocab, r, r, embd, r]);
  // llama.cpp: Δ(row t) = mul_mat(lora_b, get_rows(lora_a, t)) = lora_b[n_embd, r] · lora_a[t, :]; ours: (A·B)[t, :]
  const A = m.A.toFloat32(), B = m.B.toFloat32();
  for (let t = 0; t < vocab; t++) {
    for (let e = 0; e < embd; e++) {
      let want = 0, got = 0;
      for (let k = 0; k < r; k++) {
        want += lb[e * r + k]! * la[t * r + k]!;
        got += A[t * r + k]! * B[k * embd + e]!;
      }
      assert.is(got, want, `Δ[${t}, ${e}]`);
    }
  }
  a.dispose();
});

test('refuses with a LoRAFormatError naming the file and the tensor: a missing pair, shapes that disagree, other tensors', async () => {
  const before = engine.heap.stats().liveBlocks;
  const ok = (base: string): Factor[] => [{ name: `${base}.lora_a`, shape: [2, 4], values: vals(8) }, { name: `${base}.lora_b`, shape: [4, 2], values: vals(8) }];
  const cases: [Factor[], string[]][] = [
    [[...ok('blk.0.attn_q.weight'), { name: 'blk.0.attn_k.weight.lora_a', shape: [2, 4], values: vals(8) }], ['"blk.0.attn_k.weight.lora_a"', 'no pair', 'blk.0.attn_k.weight.lora_b']],
    [[{ name: 'blk.0.attn_k.weight.lora_b', shape: [4, 2], values: vals(8) }], ['"blk.0.attn_k.weight.lora_b"', 'no pair', 'blk.0.attn_k.weight.lora_a']],
    [[...ok('blk.0.attn_q.weight'), { name: 'blk.1.attn_q.weight.lora_a', shape: [3, 4], values: vals(12) }, { name: 'blk.1.attn_q.weight.lora_b', shape: [4, 2], values: vals(8) }], ['blk.1.attn_q.weight.lora_a', 'ne [4, 3]', 'ne [2, 4]', 'rank']],
    // the "finetune" example's untransposed lora_a: ne [r, in]
    [[{ name: 'blk.0.attn_q.weight.lora_a', shape: [4, 2], values: vals(8) }, { name: 'blk.0.attn_q.weight.lora_b', shape: [4, 2], values: vals(8) }], ['blk.0.attn_q.weight.lora_a', 'not transposed']],
    [[{ name: 'token_embd.weight.lora_a', shape: [7, 3], values: vals(21) }, { name: 'token_embd.weight.lora_b', shape: [5, 2], values: vals(10) }], ['token_embd.weight.lora_a', 'rank']],
    [[...ok('blk.0.attn_q.weight'), { name: 'blk.0.attn_norm.weight', shape: [1, 4], values: vals(4) }], ['"blk.0.attn_norm.weight"', 'norm']],
    [[...ok('blk.0.attn_q.weight'), { name: 'blk.0.attn_q.weight.lora_c', shape: [1, 4], values: vals(4) }], ['"blk.0.attn_q.weight.lora_c"', 'lora_a', 'lora_b']],
    [[...ok('blk.0.attn_q'), ...ok('blk.0.attn_k.weight')], ['"blk.0.attn_q"', '.weight']],
    [[{ name: 'blk.0.attn_q.weight.lora_a', shape: [2, 4], type: 'I32', bytes: new Uint8Array(32) }, { name: 'blk.0.attn_q.weight.lora_b', shape: [4, 2], values: vals(8) }], ['blk.0.attn_q.weight.lora_a', 'I32']],
    [[], ['no LoRA tensors']],
  ];
  for (const [factors, words] of cases) await assertRejectsTyped(async () => readAdapter(await adapterFile(factors)), LoRAFormatError, [ADAPTER, ...words]);
  assert.is(engine.heap.stats().liveBlocks, before, 'factors read before the error are freed');
});

test('refuses files that are not plain LoRA adapters: base models, another adapter.type, aLoRA, a non-f32 alpha', async () => {
  const f: Factor[] = [{ name: 'blk.0.attn_q.weight.lora_a', shape: [2, 4], values: vals(8) }, { name: 'blk.0.attn_q.weight.lora_b', shape: [4, 2], values: vals(8) }];
  const arch: GgufKV = { key: 'general.architecture', type: 'STRING', value: 'llama' };
  const cases: [GgufKV[], string[]][] = [
    [[arch], ['general.type is missing']],
    [[arch, { key: 'general.type', type: 'STRING', value: 'model' }], ['general.type is "model"', 'not a LoRA adapter']],
    [[arch, { key: 'general.type', type: 'STRING', value: 'adapter' }], ['adapter.type is missing']],
    [[arch, { key: 'general.type', type: 'STRING', value: 'adapter' }, { key: 'adapter.type', type: 'STRING', value: 'alora' }], ['adapter.type is "alora"', '"lora"']],
    [[...HEAD, { key: 'adapter.alora.invocation_tokens', type: 'ARRAY', value: { type: 'UINT32', values: new Uint32Array([5, 6]) } }], ['adapter.alora.invocation_tokens', 'aLoRA']],
    [[...HEAD, { key: 'adapter.lora.alpha', type: 'UINT32', value: 16 }], ['adapter.lora.alpha', 'FLOAT32', 'UINT32']],
    [[...HEAD, { key: 'adapter.lora.alpha', type: 'FLOAT32', value: Number.NaN }], ['adapter.lora.alpha', 'NaN']],
  ];
  for (const [md, words] of cases) await assertRejectsTyped(async () => readAdapter(await adapterFile(f, md)), LoRAFormatError, [ADAPTER, ...words]);
  // a base model is not an adapter
  await assertRejectsTyped(async () => readAdapter((await tinyLlama({ layers: 1 })).bytes), LoRAFormatError, [ADAPTER, 'general.type is missing']);
});

test.run();
