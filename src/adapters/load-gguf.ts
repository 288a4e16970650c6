/**
 * llama.cpp's GGUF LoRA adapters (convert_lora_to_gguf.py writes them; src/llama-adapter.cpp,
 * llama_adapter_lora_init_impl, reads them) into our Adapter value.
 *
 *   general.type = "adapter", adapter.type = "lora", adapter.lora.alpha (f32; absent = 0)
 *   <base>.lora_a   ne [in, r]    row-major [r, in]    = our B
 *   <base>.lora_b   ne [r, out]   row-major [out, r]   = our A
 *   token_embd.weight (llm_build_inp_embd: A and B flipped): lora_a ne [r, n_vocab] = our A [n_vocab, r]
 *                   as stored; lora_b ne [r, n_embd], row-major [n_embd, r], transposed = our B [r, n_embd]
 *
 * so that ΔW = s·A·B on the GGUF tensor `<base>` as stored row-major ([out, in]; token_embd [n_vocab,
 * n_embd]). llama_adapter_lora_weight::get_scale: s = user_scale·alpha/r with r = lora_b's ne[0], or
 * user_scale when alpha is 0; the Adapter's scale is that with user_scale 1 (lw's multiplier is the
 * user scale), and its alpha is then r. Module names are the base tensor names without ".weight"
 * ("blk.0.attn_q"), so a plan targets "<name>.weight" as for PEFT.
 *
 * Strict where llama.cpp is strict, and where it is lenient too: a factor without its pair, shapes
 * that disagree with each other, another suffix, a file that is not a LoRA adapter (general.type,
 * adapter.type), an activated LoRA (adapter.alora.invocation_tokens: it applies only after its
 * invocation tokens, so it is no ΔW), and `*_norm.weight` tensors (mergekit-extract-lora's, which
 * llama.cpp skips: refused, not skipped silently) are LoRAFormatErrors naming the file and the tensor.
 * Factor types: F32, F16, BF16 kept as stored; Q8_0 and the other block types with a kernel in
 * src/gguf/quant.ts dequantized to f32 (bit for bit as ggml), which needs the engine.
 */
import { LoRAFormatError } from '../errors.js';
import { dequantize, QUANT_TYPES } from '../gguf/quant.js';
import { GgufReader, type GgufTensorInfo } from '../io/gguf.js';
import { fileSource } from '../io/node-file.js';
import { SafetensorsReader } from '../io/safetensors.js';
import { type ByteSource, toSource } from '../io/source.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { transpose } from '../memory/transpose.js';
import type { Engine } from '../runtime/engine.js';
import { Adapter, type AdapterModule } from './adapter.js';
import type { MakeMatrix } from './load.js';

const DTYPE_OF_GGML: Readonly<Partial<Record<string, DType>>> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };
const SUFFIX = /\.lora_(a|b)$/;

/** Whether the bytes start with the GGUF magic ("GGUF"): lw.loadAdapter's format switch. */
export function isGguf(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && bytes[0] === 0x47 && bytes[1] === 0x47 && bytes[2] === 0x55 && bytes[3] === 0x46;
}

/**
 * Reads a GGUF LoRA adapter into resident matrices; `make` allocates them (lw.matrix). `engine` (the one
 * `make` allocates in) is needed only for quantized factors (Q8_0…), which are dequantized to f32.
 */
export async function readGgufAdapter(reader: GgufReader, make: MakeMatrix, engine?: Engine): Promise<Adapter> {
  const file = reader.file;
  const fail = (what: string): LoRAFormatError => new LoRAFormatError(`gguf adapter: ${file}: ${what}`);
  const str = (key: string): string | undefined => {
    const v = reader.value(key);
    if (v !== undefined && typeof v !== 'string') throw fail(`"${key}" must be a string, got ${reader.kv(key)!.type}`);
    return v;
  };
  const generalType = str('general.type');
  if (generalType !== 'adapter') {
    throw fail(generalType === undefined
      ? 'general.type is missing; a LoRA adapter has general.type = "adapter" (is this a base model?)'
      : `general.type is ${JSON.stringify(generalType)}, not "adapter": not a LoRA adapter`);
  }
  const adapterType = str('adapter.type');
  if (adapterType !== 'lora') {
    const what = adapterType === undefined ? 'adapter.type is missing' : `adapter.type is ${JSON.stringify(adapterType)}`;
    throw fail(`${what}; lora-wasm reads adapter.type = "lora" (as llama.cpp does)`);
  }
  if (reader.kv('adapter.alora.invocation_tokens')) {
    throw fail('has adapter.alora.invocation_tokens: an activated LoRA (aLoRA) changes the model only after its invocation tokens, so it is no ΔW to merge; not supported');
  }
  let alpha = 0;
  const a = reader.kv('adapter.lora.alpha');
  if (a) {
    // llama.cpp reads it with gguf_get_val_f32, which requires a FLOAT32
    if (a.type !== 'FLOAT32') throw fail(`adapter.lora.alpha must be a FLOAT32 (llama.cpp reads it as one), got ${a.type}`);
    alpha = a.value as number;
    if (!Number.isFinite(alpha)) throw fail(`adapter.lora.alpha is ${alpha}`);
  }

  // bundle lora_a and lora_b into pairs, in file order (llama_adapter_lora_init_impl's ab_map)
  const pairs = new Map<string, { a?: GgufTensorInfo; b?: GgufTensorInfo }>();
  for (const t of reader.tensors) {
    const m = t.name.match(SUFFIX);
    if (!m) {
      if (t.name.endsWith('_norm.weight')) {
        throw fail(`tensor "${t.name}" is a norm vector (mergekit-extract-lora writes them; llama.cpp ignores them); lora-wasm does not skip tensors silently`);
      }
      throw fail(`tensor "${t.name}" is neither <base>.lora_a nor <base>.lora_b`);
    }
    const base = t.name.slice(0, -'.lora_a'.length);
    const p = pairs.get(base) ?? (pairs.set(base, {}), pairs.get(base)!);
    p[m[1] as 'a' | 'b'] = t;
  }
  if (pairs.size === 0) throw fail('has no LoRA tensors');

  const made: Matrix<DType>[] = [];
  /** The tensor as a resident [rows, cols] matrix: its row-major data, or that transposed (from [cols, rows]). */
  const load = async (t: GgufTensorInfo, rows: number, cols: number, transposed: boolean): Promise<Matrix<DType>> => {
    const dtype = DTYPE_OF_GGML[t.typeName];
    if (dtype === undefined) {
      if (!(QUANT_TYPES as readonly string[]).includes(t.typeName)) {
        throw fail(`tensor "${t.name}" is ${t.typeName}, which lora-wasm cannot read (it reads F32, F16, BF16 and ${QUANT_TYPES.filter((x) => !DTYPE_OF_GGML[x]).join(', ')})`);
      }
      if (!engine) throw fail(`tensor "${t.name}" is ${t.typeName}; dequantizing it needs the engine (pass it to readGgufAdapter)`);
      const m = await dequantized(engine, reader, t, transposed ? cols : rows, transposed ? rows : cols, make);
      if (!transposed) {
        made.push(m);
        return m;
      }
      try {
        const out = make(rows, cols, transpose(m.data as Float32Array, cols, rows), 'f32');
        made.push(out);
        return out;
      } finally {
        m.dispose();
      }
    }
    if (transposed) {
      const bytes = await reader.read(t);
      const raw = dtype === 'f32' ? new Float32Array(bytes.slice().buffer) : new Uint16Array(bytes.slice().buffer);
      const m = make(rows, cols, transpose(raw, cols, rows), dtype);
      made.push(m);
      return m;
    }
    // as stored: the bytes go straight into the matrix's wasm memory (little-endian both)
    const m = make(rows, cols, undefined, dtype);
    made.push(m);
    const view = () => new Uint8Array(m.data.buffer, m.data.byteOffset, m.data.byteLength);
    if (m.data.buffer instanceof SharedArrayBuffer) await reader.readInto(t, view());
    else {
      const bytes = await reader.read(t); // unshared memory may move while a read is in flight
      view().set(bytes);
    }
    return m;
  };

  try {
    const modules: AdapterModule[] = [];
    for (const [base, p] of pairs) {
      if (!p.a || !p.b) {
        const [has, lacks] = p.a ? [p.a.name, `${base}.lora_b`] : [p.b!.name, `${base}.lora_a`];
        throw fail(`tensor "${has}" has no pair "${lacks}"`);
      }
      const ne = (t: GgufTensorInfo): [number, number] => {
        if (t.ne.length === 0 || t.ne.length > 2 && t.ne.slice(2).some((d) => d !== 1)) throw fail(`tensor "${t.name}" has ne [${t.ne.join(', ')}]; a LoRA factor is a matrix`);
        if (t.elements === 0) throw fail(`tensor "${t.name}" has ne [${t.ne.join(', ')}], no elements`);
        return [t.ne[0]!, t.ne[1] ?? 1];
      };
      const [a0, a1] = ne(p.a);
      const [b0, b1] = ne(p.b);
      const r = b0; // llama_adapter_lora_weight::get_scale: rank = b->ne[0]
      const shapes = `"${p.a.name}" ne [${p.a.ne.join(', ')}] and "${p.b.name}" ne [${p.b.ne.join(', ')}]`;
      if (!base.endsWith('.weight')) throw fail(`tensors "${p.a.name}", "${p.b.name}": the base tensor "${base}" does not end in ".weight"`);
      const name = base.slice(0, -'.weight'.length);
      const embedding = base.endsWith('token_embd.weight');
      let A: Matrix<DType>, B: Matrix<DType>;
      if (embedding) {
        // llm_build_inp_embd: get_rows(lora_a, tokens) then mul_mat(lora_b, ·): lora_a ne [r, n_vocab], lora_b ne [r, n_embd]
        if (a0 !== r) throw fail(`${shapes} disagree on the rank (token_embd: lora_a is ne [r, n_vocab], lora_b ne [r, n_embd])`);
        A = await load(p.a, a1, r, false);
        B = await load(p.b, r, b1, true);
      } else {
        if (a1 !== r) throw fail(`${shapes} disagree on the rank (lora_a is ne [in, r], lora_b ne [r, out]; llama.cpp: "lora_a tensor is not transposed")`);
        A = await load(p.b, b1, r, false);
        B = await load(p.a, r, a0, false);
      }
      const effective = alpha === 0 ? r : alpha;
      modules.push({ name, kind: embedding ? 'embedding' : 'linear', r, alpha: effective, scale: effective / r, fanInFanOut: false, A, B });
    }
    const config: Record<string, unknown> = {};
    for (const kv of reader.metadata) {
      if (typeof kv.value === 'object') continue; // arrays
      config[kv.key] = typeof kv.value === 'bigint' ? (Number.isSafeInteger(Number(kv.value)) ? Number(kv.value) : String(kv.value)) : kv.value;
    }
    return new Adapter('gguf', modules, [], config);
  } catch (e) {
    for (const m of made) m.dispose();
    throw e;
  }
}

/** A quantized tensor of `rows`·`cols` values dequantized into a new f32 matrix [rows, cols] (its blocks staged in wasm memory). */
async function dequantized(engine: Engine, reader: GgufReader, t: GgufTensorInfo, rows: number, cols: number, make: MakeMatrix): Promise<Matrix<DType>> {
  const bytes = await reader.read(t);
  const m = make(rows, cols, undefined, 'f32');
  let block;
  try {
    block = engine.heap.alloc(t.size, 'gguf adapter: quantized factor');
    new Uint8Array(engine.heap.memory.buffer, block.ptr, t.size).set(bytes);
    dequantize(engine, t.typeName as (typeof QUANT_TYPES)[number], m.ptr, block.ptr, rows * cols);
    return m;
  } catch (e) {
    m.dispose();
    throw e;
  } finally {
    if (block) engine.heap.free(block);
  }
}

/**
 * `x` opened as a GGUF file when it is one (a GgufReader, or bytes, a Blob, a ByteSource or a Node
 * path whose first bytes are "GGUF"); undefined otherwise, with nothing left open.
 */
export async function openGgufAdapter(x: unknown): Promise<GgufReader | undefined> {
  if (x instanceof GgufReader) return x;
  if (x instanceof SafetensorsReader) return undefined;
  let source: ByteSource;
  try {
    source = typeof x === 'string' ? await fileSource(x) : toSource(x, 'loadAdapter: weights');
  } catch {
    return undefined; // not a source at all: openTensorSource says why
  }
  const magic = source.size >= 4 ? await source.read(0, 4) : new Uint8Array(0);
  if (!isGguf(magic)) {
    await source.close?.();
    return undefined;
  }
  try {
    return await GgufReader.open(source);
  } catch (e) {
    await source.close?.();
    throw e;
  }
}
