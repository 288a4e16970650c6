// Merging into GGUF models (src/adapters/apply-gguf.ts) against the real thing: a tiny llama in F32,
// F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K, a PEFT adapter on every linear module, merged by
// lw.mergeAdapterFiles; then
//   - the metadata, the types and every untouched tensor's bytes are the input's;
//   - F32 merged tensors are within the f32 bound of the float64 merge, F16/BF16 ones are rounded
//     once from it, quantized ones equal ggml's quantization of it (the quantizer is byte-exact with
//     libggml, test/gguf-quants.test.ts) in ≥ 99 % of blocks;
//   - llama.cpp's next-token distribution of the merged file is within TV 2e-3 of the exact merge's
//     (the float64 merge stored in the same types).
// Also: a llama.cpp adapter (.gguf) merges to what llama.cpp applies at run time, --dtype, refusals.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Adapter } from '../src/adapters/adapter.js';
import { LoRAFormatError, LoRANonFiniteError, LoRAShapeError, LoRATypeError } from '../src/errors.js';
import { encodeGgufAdapter } from '../src/adapters/convert-gguf.js';
import { encodeKohyaAdapter } from '../src/adapters/convert-kohya.js';
import { GgufReader } from '../src/io/gguf.js';
import { GGML_TYPE, type GgmlTypeName, ggmlType } from '../src/io/gguf-types.js';
import { encodeGguf, planGgufFrom, writeGguf } from '../src/io/gguf-write.js';
import { bytesSource } from '../src/io/source.js';
import type { FileSink, LoRAWasm } from '../src/index.js';
import { decodeGgml, encodeGgml, tinyLlamaOf } from './fixtures/ggml.js';
import { type PeftAdapter, type PeftCase, closeLlama, distribution, ggufName, ggufRows, makePeft, tv } from './fixtures/peft-llama.js';
import type { TinyLlama } from './fixtures/tiny-llama.js';
import { assertRejectsTyped, lwUnderTest } from './helpers.js';

const BOUND = 2e-3;
const measured: string[] = [];
const encode = encodeGgml;

/** An in-memory positioned sink, like a Node file. */
function memorySink(): { sink: FileSink; bytes: () => Uint8Array } {
  let buf = new Uint8Array(1 << 16);
  let size = 0;
  const sink: FileSink = {
    write: async () => assert.unreachable('a positioned sink is written with writeAt'),
    writeAt: async (o, b) => {
      if (o + b.length > buf.length) {
        const next = new Uint8Array(Math.max(2 * buf.length, o + b.length));
        next.set(buf.subarray(0, size));
        buf = next;
      }
      buf.set(b, o);
      size = Math.max(size, o + b.length);
    },
  };
  return { sink, bytes: () => buf.slice(0, size) };
}

const open = (bytes: Uint8Array, name = 'model.gguf') => GgufReader.open(bytesSource(bytes, name));

async function merge(lw: LoRAWasm, model: Uint8Array, adapter: Adapter, opts: object = {}) {
  const reader = await open(model);
  const out = memorySink();
  const report = await lw.mergeAdapterFiles({ base: reader, adapter, sink: () => out.sink, ...opts });
  return { report, bytes: out.bytes() };
}

const CASE: PeftCase = { name: 'rsLoRA + rank_pattern', config: { r: 4, lora_alpha: 6, use_rslora: true, rank_pattern: { k_proj: 8 } }, rank: (m) => (m.endsWith('k_proj') ? 8 : 4), alpha: () => 6 };

/** The float64 merge in the base's layout, by GGUF name (f32 values of the stored W plus s·ΔW). */
function exactMerge(m: TinyLlama, p: PeftAdapter): Map<string, Float64Array> {
  const merged = new Map<string, Float64Array>();
  for (const [module, { s, loraA, loraB, out, inn, r }] of p.modules) {
    const name = ggufName(module);
    const w = m.tensors.find((t) => t.gguf === name)!.values;
    const b = ggufRows(m, module, loraB, out, r);
    const res = new Float64Array(out * inn);
    for (let i = 0; i < out; i++) {
      for (let j = 0; j < inn; j++) {
        let d = 0;
        for (let k = 0; k < r; k++) d += b[i * r + k]! * loraA[k * inn + j]!;
        res[i * inn + j] = w[i * inn + j]! + s * d;
      }
    }
    merged.set(name, res);
  }
  return merged;
}

/** The model with `exact` stored in each tensor's own type (the reference a merge is compared with). */
async function storedExact(m: TinyLlama, exact: Map<string, Float64Array>): Promise<Uint8Array> {
  const reader = await open(m.bytes);
  const plan = await planGgufFrom(reader);
  const out = new Uint8Array(plan.fileSize);
  let at = 0;
  await writeGguf(plan, { write: (b) => { out.set(b, at); at += b.length; } }, async (t) => {
    const x = exact.get(t.name);
    return x ? (await encode(t.typeName, Float32Array.from(x))).bytes : reader.read(t.from!);
  });
  return out;
}

const TYPES: GgmlTypeName[] = ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_K', 'Q6_K'];
const models = new Map<GgmlTypeName, Promise<TinyLlama>>();
const model = (type: GgmlTypeName) => {
  if (!models.has(type)) models.set(type, tinyLlamaOf(type, { seed: 5, embd: 256, ff: 512, heads: 4, headsKv: 2 }));
  return models.get(type)!;
};

for (const type of TYPES) {
  test(`a PEFT adapter merged into a ${type} llama: metadata, types and untouched bytes kept; merged tensors as the exact merge stored in ${type}; llama.cpp within TV ${BOUND}`, async () => {
    const lw = await lwUnderTest();
    const m = await model(type);
    const peft = makePeft(m, CASE, 31);
    const adapter = await lw.loadAdapter({ weights: peft.weights, config: peft.config });
    try {
      const { report, bytes } = await merge(lw, m.bytes, adapter);
      assert.is(report.merged, peft.modules.size);
      const [a, b] = [await open(m.bytes), await open(bytes)];
      assert.equal(await b.headerBytes(), await a.headerBytes(), 'the same header: metadata, tensor infos, offsets');
      const exact = exactMerge(m, peft);
      let blocks = 0, equal = 0;
      for (const t of a.tensors) {
        const [x, y] = [await a.read(t), await b.read(b.get(t.name)!)];
        const want = exact.get(t.name);
        if (!want) {
          assert.ok(Buffer.from(x).equals(Buffer.from(y)), `${t.name}: untouched, byte for byte`);
          continue;
        }
        const info = ggmlType(type)!;
        if (type === 'F32' || type === 'F16' || type === 'BF16') {
          const got = await decode(type, y);
          const ref = (await encode(type, Float32Array.from(want))).values; // the exact merge rounded once
          let off = 0;
          for (let i = 0; i < got.length; i++) if (got[i] !== ref[i]) off++;
          // f32: the kernel's sum is not the float64 one, so a few values differ in the last bit; halves round once from it
          assert.ok(off <= (type === 'F32' ? got.length : got.length / 100), `${t.name}: ${off} of ${got.length} values differ from the exact merge in ${type}`);
          if (type === 'F32') for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i]! - want[i]!) <= 2 ** -20 * (Math.abs(want[i]!) + 1), `${t.name}[${i}]`);
        } else {
          const ref = (await encode(type, Float32Array.from(want))).bytes;
          for (let k = 0; k < y.length; k += info.typeSize) {
            blocks++;
            if (Buffer.from(y.subarray(k, k + info.typeSize)).equals(Buffer.from(ref.subarray(k, k + info.typeSize)))) equal++;
          }
        }
      }
      if (blocks) {
        measured.push(`${type}: ${equal} of ${blocks} merged blocks equal ggml's quantization of the exact merge`);
        assert.ok(equal >= 0.99 * blocks, `${type}: ${equal} of ${blocks} blocks`);
      }
      const [pBase, pExact, pMerged] = [await distribution(m.bytes), await distribution(await storedExact(m, exact)), await distribution(bytes)];
      const d = tv(pMerged, pExact);
      measured.push(`${type}: TV(merged, exact merge in ${type}) = ${d.toExponential(2)}, TV(base, exact) = ${tv(pBase, pExact).toExponential(2)}`);
      assert.ok(tv(pBase, pExact) > 20 * BOUND, `${type}: the adapter moves the distribution`);
      assert.ok(d <= BOUND, `${type}: TV ${d}`);
    } finally {
      adapter.dispose();
    }
  });
}

const decode = decodeGgml;

test('a kohya adapter (lora_te_<module with _ for .>) merges into a GGUF model as its PEFT twin does, byte for byte', async () => {
  const lw = await lwUnderTest();
  const m = await model('Q8_0');
  const peft = makePeft(m, { name: 'plain', config: { r: 4, lora_alpha: 8 }, rank: () => 4, alpha: () => 8 }, 81);
  const fromPeft = await lw.loadAdapter({ weights: peft.weights, config: peft.config });
  const kohya = await lw.loadAdapter({ weights: encodeKohyaAdapter(fromPeft) });
  try {
    assert.is(kohya.format, 'kohya');
    assert.ok(kohya.modules[0]!.name.startsWith('lora_te_model_layers_'), kohya.modules[0]!.name);
    const [a, b] = [await merge(lw, m.bytes, fromPeft), await merge(lw, m.bytes, kohya)];
    assert.is(b.report.merged, peft.modules.size);
    assert.ok(Buffer.from(b.bytes).equals(Buffer.from(a.bytes)), 'the same file');
  } finally {
    fromPeft.dispose();
    kohya.dispose();
  }
});

test('a llama.cpp adapter (.gguf) merges into its model to what llama.cpp applies at run time', async () => {
  const lw = await lwUnderTest();
  const m = await model('F16');
  const peft = makePeft(m, CASE, 41);
  const fromPeft = await lw.loadAdapter({ weights: peft.weights, config: peft.config });
  const ggufBytes = await encodeGgufAdapter(fromPeft, await open(m.bytes));
  fromPeft.dispose();
  const adapter = await lw.loadAdapter({ weights: ggufBytes });
  try {
    assert.is(adapter.format, 'gguf');
    const { bytes } = await merge(lw, m.bytes, adapter);
    const [pRuntime, pMerged] = [await distribution(m.bytes, ggufBytes), await distribution(bytes)];
    const d = tv(pRuntime, pMerged);
    measured.push(`llama.cpp adapter: TV(merged, applied at run time) = ${d.toExponential(2)}`);
    assert.ok(d <= BOUND, `TV ${d}`);
  } finally {
    adapter.dispose();
  }
});

test('a quantized tensor larger than a band is merged in bands of rows: every block equals ggml\'s quantization of the exact merge', async () => {
  const lw = await lwUnderTest();
  const [rows, cols, r] = [20000, 64, 2]; // Q8_0 rows of 68 bytes, 256 bytes of f32 work: two bands of 16384 rows
  const g = (await import('./helpers.js')).rng(12);
  const w0 = Float32Array.from({ length: rows * cols }, () => g() - 0.5);
  const stored = await encode('Q8_0', w0);
  const arch = { key: 'general.architecture', type: 'STRING' as const, value: 'llama' };
  const model = await encodeGguf({ metadata: [arch], tensors: [{ name: 'blk.0.attn_v.weight', type: 'Q8_0', shape: [rows, cols], data: stored.bytes }] });
  const la = Float32Array.from({ length: r * cols }, () => g() - 0.5), lb = Float32Array.from({ length: rows * r }, () => g() - 0.5);
  const adapter = await lw.loadAdapter({
    weights: await encodeGguf({
      metadata: [arch, { key: 'general.type', type: 'STRING', value: 'adapter' }, { key: 'adapter.type', type: 'STRING', value: 'lora' }, { key: 'adapter.lora.alpha', type: 'FLOAT32', value: 1 }],
      tensors: [
        { name: 'blk.0.attn_v.weight.lora_a', type: 'F32', shape: [r, cols], data: la },
        { name: 'blk.0.attn_v.weight.lora_b', type: 'F32', shape: [rows, r], data: lb },
      ],
    }),
  });
  try {
    const { bytes } = await merge(lw, model, adapter);
    const exact = new Float64Array(rows * cols);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        let d = 0;
        for (let k = 0; k < r; k++) d += lb[i * r + k]! * la[k * cols + j]!;
        exact[i * cols + j] = stored.values[i * cols + j]! + 0.5 * d;
      }
    }
    const want = (await encode('Q8_0', Float32Array.from(exact))).bytes;
    const got = await (await open(bytes)).read('blk.0.attn_v.weight');
    assert.ok(Buffer.from(got).equals(Buffer.from(want)), 'byte for byte');
  } finally {
    adapter.dispose();
  }
});

test('dtype: merged 2-D tensors written as f16 or q8_0, 1-D tensors and untouched ones as they were', async () => {
  const lw = await lwUnderTest();
  const m = await model('Q4_K');
  const peft = makePeft(m, CASE, 51);
  const adapter = await lw.loadAdapter({ weights: peft.weights, config: peft.config });
  try {
    for (const dtype of ['f16', 'q8_0'] as const) {
      const { report, bytes } = await merge(lw, m.bytes, adapter, { dtype });
      const r = await open(bytes);
      const exact = exactMerge(m, peft);
      for (const t of r.tensors) {
        assert.is(t.typeName, exact.has(t.name) ? (dtype === 'f16' ? 'F16' : 'Q8_0') : (await open(m.bytes)).get(t.name)!.typeName, t.name);
        if (exact.has(t.name)) assert.is(report.retyped[t.name], t.typeName);
      }
      const want = exact.get('blk.0.attn_v.weight')!;
      const got = await decode(dtype === 'f16' ? 'F16' : 'Q8_0', await r.read('blk.0.attn_v.weight'));
      const ref = (await encode(dtype === 'f16' ? 'F16' : 'Q8_0', Float32Array.from(want))).values;
      let off = 0;
      for (let i = 0; i < got.length; i++) if (got[i] !== ref[i]) off++;
      assert.ok(off <= got.length / 100, `${dtype}: ${off} values off`);
    }
  } finally {
    adapter.dispose();
  }
});

test('a PEFT DoRA adapter merges into F32 and Q8_0 GGUF: W′ = m/‖V‖ ⊙ V per output row, q/k rows and magnitudes in the converter\'s order', async () => {
  const lw = await lwUnderTest();
  for (const type of ['F32', 'Q8_0'] as const) {
    const m = await model(type);
    const peft = makePeft(m, { name: 'dora', config: { r: 4, lora_alpha: 8 }, rank: () => 4, alpha: () => 8 }, 71);
    // magnitudes: each W row's norm (PEFT's initial value) ×0.8–1.2, as training moves them
    const st = await import('../src/io/safetensors.js');
    const reader = await st.SafetensorsReader.open(bytesSource(peft.weights));
    const tensors = [];
    for (const t of reader.tensors) tensors.push({ name: t.name, dtype: t.dtype, shape: [...t.shape], data: (await reader.read(t.name)).bytes });
    const mags = new Map<string, Float32Array>();
    for (const [module, { out, inn }] of peft.modules) {
      const w = m.hf.get(`${module}.weight`)!.data;
      const mag = new Float32Array(out);
      for (let i = 0; i < out; i++) {
        let ss = 0;
        for (let j = 0; j < inn; j++) ss += w[i * inn + j]! ** 2;
        mag[i] = Math.sqrt(ss) * (0.8 + 0.4 * ((i * 7919) % 101) / 100);
      }
      mags.set(module, mag);
      tensors.push({ name: `base_model.model.${module}.lora_magnitude_vector`, dtype: 'F32', shape: [out], data: new Uint8Array(mag.buffer) });
    }
    const adapter = await lw.loadAdapter({ weights: st.encodeSafetensors(tensors), config: { ...peft.config, use_dora: true } });
    try {
      const { report, bytes } = await merge(lw, m.bytes, adapter);
      assert.is(report.merged, peft.modules.size);
      const out = await open(bytes);
      for (const [module, { s, loraA, loraB, out: rows, inn, r }] of peft.modules) {
        // float64 DoRA in the base's layout: V = W + s·ΔW with the base's (dequantized) W, rows permuted as stored
        const name = ggufName(module);
        const w = m.tensors.find((t) => t.gguf === name)!.values;
        const b = ggufRows(m, module, loraB, rows, r);
        const mag = ggufRows(m, module, mags.get(module)!, rows, 1);
        const want = new Float64Array(rows * inn);
        for (let i = 0; i < rows; i++) {
          let ss = 0;
          for (let j = 0; j < inn; j++) {
            let d = 0;
            for (let k = 0; k < r; k++) d += b[i * r + k]! * loraA[k * inn + j]!;
            want[i * inn + j] = w[i * inn + j]! + s * d;
            ss += want[i * inn + j]! ** 2;
          }
          for (let j = 0; j < inn; j++) want[i * inn + j]! *= mag[i]! / Math.sqrt(ss);
        }
        const got = await decodeGgml(type, await out.read(name));
        if (type === 'F32') {
          for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i]! - want[i]!) <= 2 ** -18 * (Math.abs(want[i]!) + 0.05), `${name}[${i}]: ${got[i]} vs ${want[i]}`);
        } else {
          // Q8_0 of the float64 DoRA result: equal blocks but where a value sits on a rounding boundary
          const ref = (await encodeGgml('Q8_0', Float32Array.from(want))).values;
          let off = 0;
          for (let i = 0; i < got.length; i++) if (got[i] !== ref[i]) off++;
          assert.ok(off <= got.length / 1000, `${name}: ${off} of ${got.length} values off ggml's quantization of the float64 DoRA merge`);
        }
      }
    } finally {
      adapter.dispose();
    }
  }
});

test('refusals: a module the model lacks (closest names), an unknown dtype, a block scale that overflows with safe, an adapter for another architecture', async () => {
  const lw = await lwUnderTest();
  const m = await model('Q8_0');
  const peft = makePeft(m, CASE, 61);
  const adapter = await lw.loadAdapter({ weights: peft.weights, config: peft.config });
  try {
    await assertRejectsTyped(() => merge(lw, m.bytes, adapter, { dtype: 'q4_k' }), LoRATypeError, ['dtype', "'keep', 'f32', 'f16', 'bf16' or 'q8_0'"]);
    await assertRejectsTyped(() => merge(lw, m.bytes, adapter, { multiplier: 1e20, safe: true }), LoRANonFiniteError, ['"blk.', 'Q8_0']);
    await assertRejectsTyped(() => merge(lw, m.bytes, adapter, { prefix: 'x.' }), LoRAShapeError, ['closest GGUF names']);
  } finally {
    adapter.dispose();
  }
  // a llama.cpp adapter for another architecture (llama.cpp refuses it too: "model arch and LoRA arch mismatch")
  const [out, inn] = (await open(m.bytes)).get('blk.0.attn_v.weight')!.shape as [number, number];
  const other = await lw.loadAdapter({
    weights: await encodeGguf({
      metadata: [{ key: 'general.architecture', type: 'STRING', value: 'qwen2' }, { key: 'general.type', type: 'STRING', value: 'adapter' }, { key: 'adapter.type', type: 'STRING', value: 'lora' }],
      tensors: [
        { name: 'blk.0.attn_v.weight.lora_a', type: 'F32', shape: [1, inn], data: new Float32Array(inn) },
        { name: 'blk.0.attn_v.weight.lora_b', type: 'F32', shape: [out, 1], data: new Float32Array(out) },
      ],
    }),
  });
  try {
    await assertRejectsTyped(() => merge(lw, m.bytes, other), LoRAFormatError, ['architecture "qwen2"', '"llama"']);
  } finally {
    other.dispose();
  }
  // a pair on a 1-D tensor: llama.cpp loads it but applies LoRA only in matrix products, so it changes nothing there
  const normPair = await lw.loadAdapter({
    weights: await encodeGguf({
      metadata: [{ key: 'general.architecture', type: 'STRING', value: 'llama' }, { key: 'general.type', type: 'STRING', value: 'adapter' }, { key: 'adapter.type', type: 'STRING', value: 'lora' }],
      tensors: [
        { name: 'blk.0.attn_norm.weight.lora_a', type: 'F32', shape: [1, inn], data: new Float32Array(inn).fill(1) },
        { name: 'blk.0.attn_norm.weight.lora_b', type: 'F32', shape: [1, 1], data: new Float32Array([1]) },
      ],
    }),
  });
  try {
    await assertRejectsTyped(() => merge(lw, m.bytes, normPair), LoRAFormatError, ['"blk.0.attn_norm.weight"', '1-D', 'ignores it']);
  } finally {
    normPair.dispose();
  }
  // --dtype q8_0 on rows that are not whole 32-value blocks; a reader that is not a byte source; mixed bases
  const arch = { key: 'general.architecture', type: 'STRING' as const, value: 'llama' };
  const odd = await encodeGguf({ metadata: [arch], tensors: [{ name: 'blk.0.attn_v.weight', type: 'F32', shape: [4, 48], data: new Float32Array(192) }] });
  const oddAdapter = await lw.loadAdapter({
    weights: await encodeGguf({
      metadata: [arch, { key: 'general.type', type: 'STRING', value: 'adapter' }, { key: 'adapter.type', type: 'STRING', value: 'lora' }],
      tensors: [
        { name: 'blk.0.attn_v.weight.lora_a', type: 'F32', shape: [1, 48], data: new Float32Array(48).fill(1) },
        { name: 'blk.0.attn_v.weight.lora_b', type: 'F32', shape: [4, 1], data: new Float32Array(4).fill(1) },
      ],
    }),
  });
  try {
    await assertRejectsTyped(() => merge(lw, odd, oddAdapter, { dtype: 'q8_0' }), LoRAShapeError, ['"blk.0.attn_v.weight"', 'rows of 48 values', 'Q8_0']);
    await assertRejectsTyped(() => GgufReader.open('model.gguf' as never), LoRATypeError, ['GgufReader.open takes a ByteSource']);
    const st = await import('../src/io/safetensors.js');
    const shard = await st.SafetensorsReader.open(bytesSource(st.encodeSafetensors([])));
    const gg = await open(odd);
    await assertRejectsTyped(() => lw.mergeAdapterFiles({ base: [shard, gg] as never, adapter: oddAdapter, sink: () => memorySink().sink }), LoRATypeError, ['the formats do not mix']);
  } finally {
    oddAdapter.dispose();
  }

});

test.after(async () => {
  if (measured.length) console.log(`\n  ${measured.join('\n  ')}`);
  await closeLlama();
});

test.run();
