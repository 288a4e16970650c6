// GGUF names: Hugging Face modules → GGUF tensors and the converter's row permutation
// (llama.cpp convert_hf_to_gguf.py / conversion/llama.py LlamaModel.permute, gguf-py tensor_mapping.py),
// checked bit for bit against tiny models written as the converter writes them; and GGUF LoRA
// adapters (llama.cpp src/llama-adapter.cpp) read into our Adapter value.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRAFormatError, LoRAShapeError } from '../src/errors.js';
import { GGUF_NAME_ARCHS, type GgufModelInfo, ggufModelInfo, ggufTargetFor, llamaRowPermutation } from '../src/gguf/names.js';
import { GgufReader } from '../src/io/gguf.js';
import { bytesSource } from '../src/io/source.js';
import { type TinyLlamaOptions, permuteRows, tinyLlama } from './fixtures/tiny-llama.js';
import { assertThrowsTyped } from './helpers.js';

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

test.run();
