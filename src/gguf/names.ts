/**
 * Hugging Face module names → GGUF tensor names for the llama family, and the row permutation
 * llama.cpp's converter applies on the way, so that a PEFT adapter's ΔW can be put on a GGUF model.
 *
 *   model.layers.N.self_attn.q_proj   blk.N.attn_q       llama: rows permuted (n_head)
 *   model.layers.N.self_attn.k_proj   blk.N.attn_k       llama: rows permuted (n_head_kv)
 *   model.layers.N.self_attn.v_proj   blk.N.attn_v
 *   model.layers.N.self_attn.o_proj   blk.N.attn_output
 *   model.layers.N.self_attn.qkv_proj blk.N.attn_qkv     phi3 (fused, rows as they are)
 *   model.layers.N.mlp.gate_proj      blk.N.ffn_gate
 *   model.layers.N.mlp.up_proj        blk.N.ffn_up
 *   model.layers.N.mlp.gate_up_proj   blk.N.ffn_up       phi3 (fused [gate; up], rows as they are)
 *   model.layers.N.mlp.down_proj      blk.N.ffn_down
 *   model.embed_tokens                token_embd
 *   lm_head                           output             not gemma/gemma2 (tied: the converter drops lm_head)
 *
 * see: llama.cpp gguf-py/gguf/tensor_mapping.py (TensorNameMap: the HF names of each MODEL_TENSOR),
 * gguf-py/gguf/constants.py (MODEL_TENSORS: which tensors each architecture has), and the converters'
 * modify_tensors (conversion/*.py, imported by convert_hf_to_gguf.py):
 * - conversion/llama.py, LlamaModel.modify_tensors: `undo_permute` is True, so q_proj goes through
 *   LlamaModel.permute(W, n_head, n_head) and k_proj through LlamaModel.permute(W, n_head, n_head_kv).
 *   HF's MistralForCausalLM is registered to LlamaModel (GGUF arch "llama"). (MistralModel, for
 *   Mistral's own consolidated format, sets undo_permute = False: those weights are already in the
 *   GGUF order, not in Hugging Face's.)
 * - conversion/qwen.py Qwen2Model / Qwen3Model, conversion/gemma.py GemmaModel / Gemma2Model,
 *   conversion/phi.py Phi3MiniModel: no change to any linear weight (gemma adds 1 to the norms and
 *   drops lm_head; Phi3MiniModel has no modify_tensors, so qkv_proj and gate_up_proj are written
 *   1:1 as attn_qkv and ffn_up by ModelBase.modify_tensors — llama.cpp's phi3 graph splits ffn_up
 *   into gate and up halves itself, as HF's Phi3MLP does with chunk(2)).
 *
 * A permutation of W's rows is a permutation of ΔW = s·A·B's rows, i.e. of A's rows (A = PEFT's
 * lora_B [out, r]); convert_lora_to_gguf.py does exactly that (LoraTorchTensor.reshape/swapaxes act
 * on lora_B). The same rows of a q/k bias move too (the converter permutes q_proj.bias and k_proj.bias).
 */
import { LoRAFormatError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import type { GgufReader } from '../io/gguf.js';

/** What ggufTargetFor needs to know about a GGUF base model (ggufModelInfo reads it from the file). */
export interface GgufModelInfo {
  /** general.architecture, e.g. 'llama'. */
  readonly architecture: string;
  /** `<arch>.attention.head_count`. */
  readonly nHead: number;
  /** `<arch>.attention.head_count_kv` (llama.cpp: n_head when absent). */
  readonly nHeadKv: number;
  /**
   * Rows per attention head of q and k: `<arch>.attention.key_length`, else embedding_length / head_count
   * (llama.cpp's n_embd_head_k). Needed only where q/k rows are permuted.
   */
  readonly headDim?: number;
  /** The model's tensor names ('blk.0.attn_q.weight', …). */
  readonly names: ReadonlySet<string>;
}

export interface GgufTarget {
  /** The GGUF tensor the module changes, e.g. 'blk.3.attn_q.weight' (with the prefix, if one was given). */
  readonly target: string;
  /**
   * When the converter reorders the weight's rows: the gather index, W_gguf[i] = W_hf[perm[i]]. Apply it
   * to A's rows (and to a lora bias): A_gguf[i] = A_hf[perm[i]]. Absent when the rows are unchanged.
   */
  readonly rowPermutation?: Int32Array;
}

type Permute = 'q' | 'k' | undefined;
interface Rule {
  /** On the HF module name without a leading `model.`; group 1 is the block number when there is one. */
  readonly hf: RegExp;
  /** GGUF base name (no '.weight'); {bid} is the block number. */
  readonly gguf: string;
  readonly permute?: Permute;
}

const LAYER = String.raw`^layers\.(\d+)\.`;
const rule = (hf: string, gguf: string, permute?: Permute): Rule => ({ hf: new RegExp(`${LAYER}${hf.replaceAll('.', '\\.')}$`), gguf: `blk.{bid}.${gguf}`, permute });
const ATTN = (permute: boolean): Rule[] => [
  rule('self_attn.q_proj', 'attn_q', permute ? 'q' : undefined),
  rule('self_attn.k_proj', 'attn_k', permute ? 'k' : undefined),
  rule('self_attn.v_proj', 'attn_v'),
  rule('self_attn.o_proj', 'attn_output'),
];
const MLP: Rule[] = [rule('mlp.gate_proj', 'ffn_gate'), rule('mlp.up_proj', 'ffn_up'), rule('mlp.down_proj', 'ffn_down')];
const EMBED: Rule = { hf: /^embed_tokens$/, gguf: 'token_embd' };
const HEAD: Rule = { hf: /^lm_head$/, gguf: 'output' };

/**
 * Per GGUF architecture, the modules that have a tensor (constants.py MODEL_TENSORS ∩ tensor_mapping.py)
 * and what the converter does to them.
 */
const ARCHS: Readonly<Record<string, readonly Rule[]>> = {
  // conversion/llama.py LlamaModel (LlamaForCausalLM, MistralForCausalLM): undo_permute
  llama: [...ATTN(true), ...MLP, EMBED, HEAD],
  // conversion/qwen.py Qwen2Model, Qwen3Model: names only
  qwen2: [...ATTN(false), ...MLP, EMBED, HEAD],
  qwen3: [...ATTN(false), ...MLP, EMBED, HEAD],
  // conversion/gemma.py GemmaModel, Gemma2Model: filter_tensors drops lm_head (tied to token_embd)
  gemma: [...ATTN(false), ...MLP, EMBED],
  gemma2: [...ATTN(false), ...MLP, EMBED],
  // conversion/phi.py Phi3MiniModel: MODEL_TENSORS[PHI3] has attn_qkv and ffn_up, and no ffn_gate
  phi3: [...ATTN(false), rule('self_attn.qkv_proj', 'attn_qkv'), rule('mlp.gate_up_proj', 'ffn_up'), rule('mlp.up_proj', 'ffn_up'), rule('mlp.down_proj', 'ffn_down'), EMBED, HEAD],
};

const ALL_RULES: readonly Rule[] = Object.values(ARCHS).flat();

/** The architectures ggufTargetFor maps (general.architecture values). */
export const GGUF_NAME_ARCHS: readonly string[] = Object.freeze(Object.keys(ARCHS));

/**
 * LlamaModel.permute as a gather index over the rows of a [heads·d, cols] matrix: within each head the
 * rows [0, d/2) and [d/2, d) are interleaved, perm[h·d + 2i + j] = h·d + j·d/2 + i
 * (W.reshape(heads, 2, d/2, cols).swapaxes(1, 2).reshape(W.shape)).
 */
export function llamaRowPermutation(rows: number, heads: number): Int32Array {
  if (!Number.isSafeInteger(heads) || heads <= 0 || !Number.isSafeInteger(rows) || rows <= 0 || rows % (2 * heads) !== 0) {
    throw new LoRAShapeError(`llamaRowPermutation: ${rows} rows do not split into ${heads} heads of an even number of rows`);
  }
  const d = rows / heads;
  const perm = new Int32Array(rows);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < d / 2; i++) {
      for (let j = 0; j < 2; j++) perm[h * d + 2 * i + j] = h * d + j * (d / 2) + i;
    }
  }
  return perm;
}

const fail = (file: string, what: string): LoRAFormatError => new LoRAFormatError(`gguf: ${file}: ${what}`);

/** A positive integer metadata value (a per-layer array must hold one value throughout), or undefined when absent. */
function count(reader: GgufReader, key: string): number | undefined {
  const v = reader.value(key);
  if (v === undefined) return undefined;
  let n: unknown = v;
  if (typeof v === 'object' && 'values' in v && ArrayBuffer.isView(v.values)) {
    const xs = Array.from(v.values as ArrayLike<number | bigint>, Number);
    if (xs.length === 0 || xs.some((x) => x !== xs[0])) throw fail(reader.file, `"${key}" differs between layers (${xs.slice(0, 8).join(', ')}${xs.length > 8 ? ', …' : ''}); only one value per model is supported`);
    n = xs[0];
  }
  if (typeof n === 'bigint') n = Number(n);
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n <= 0) throw fail(reader.file, `"${key}" must be a positive integer, got ${describeValue(n)}`);
  return n;
}

/**
 * The hyper-parameters ggufTargetFor needs, from a base model's metadata: general.architecture,
 * `<arch>.attention.head_count`, `.head_count_kv` (default: head_count, as llama.cpp), `.key_length`
 * (default: `<arch>.embedding_length` / head_count), and the tensor names.
 */
export function ggufModelInfo(reader: GgufReader): GgufModelInfo {
  const arch = reader.value('general.architecture');
  if (typeof arch !== 'string' || arch === '') throw fail(reader.file, `general.architecture must be a non-empty string, got ${describeValue(arch)}`);
  if (reader.value('general.type') === 'adapter') throw fail(reader.file, 'is an adapter (general.type = adapter), not a base model');
  const nHead = count(reader, `${arch}.attention.head_count`);
  if (nHead === undefined) throw fail(reader.file, `"${arch}.attention.head_count" is missing`);
  const nHeadKv = count(reader, `${arch}.attention.head_count_kv`) ?? nHead;
  const embd = count(reader, `${arch}.embedding_length`);
  const headDim = count(reader, `${arch}.attention.key_length`) ?? (embd !== undefined && embd % nHead === 0 ? embd / nHead : undefined);
  return Object.freeze({ architecture: arch, nHead, nHeadKv, headDim, names: new Set(reader.tensors.map((t) => t.name)) });
}

/** Levenshtein distance (small strings: tensor names). */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

/** Up to 3 names nearest to `want`, as '"a", "b", "c"'. */
export function closestNames(want: string, names: Iterable<string>, k = 3): string[] {
  return [...names].map((n) => [n, distance(want, n)] as const).sort((p, q) => p[1] - q[1] || (p[0] < q[0] ? -1 : 1)).slice(0, k).map(([n]) => n);
}

const closest = (want: string, names: ReadonlySet<string>): string => {
  const c = closestNames(want, names);
  return c.length ? `; closest GGUF names: ${c.map((n) => JSON.stringify(n)).join(', ')}` : '; the model has no tensors';
};

/**
 * The GGUF tensor that the Hugging Face module `hfModule` became (e.g. 'model.layers.3.self_attn.q_proj'
 * → 'blk.3.attn_q.weight'), and the row permutation the converter applied to it. A leading
 * 'base_model.model.' (PEFT) and a leading 'model.' are optional. `prefix` is put before the GGUF name
 * (for a model whose tensor names carry one; GGUF files from llama.cpp have none).
 * Throws LoRAFormatError for an architecture not in GGUF_NAME_ARCHS, LoRAShapeError when the module has
 * no tensor in this model (naming the closest GGUF names).
 */
export function ggufTargetFor(model: GgufModelInfo, hfModule: string, prefix = '', naming: 'hf' | 'kohya' = 'hf'): GgufTarget {
  const fn = 'ggufTargetFor';
  if (typeof model !== 'object' || model === null || !(model.names instanceof Set)) throw new LoRATypeError(`${fn}: model must be { architecture, nHead, nHeadKv, names: Set } (see ggufModelInfo), got ${describeValue(model)}`);
  if (typeof hfModule !== 'string') throw new LoRATypeError(`${fn}: hfModule must be a string, got ${describeValue(hfModule)}`);
  if (typeof prefix !== 'string') throw new LoRATypeError(`${fn}: prefix must be a string, got ${describeValue(prefix)}`);
  const rules = Object.hasOwn(ARCHS, model.architecture) ? ARCHS[model.architecture]! : undefined;
  if (!rules) throw new LoRAFormatError(`${fn}: architecture ${JSON.stringify(model.architecture)} is not supported; supported: ${GGUF_NAME_ARCHS.join(', ')}`);
  // kohya names a module by its Hugging Face name with '_' for '.' (lora_te_model_layers_3_self_attn_q_proj):
  // the same rules, with '_' where they match '.'
  const kohya = naming === 'kohya';
  const bare = kohya
    ? hfModule.replace(/^lora_(unet|te\d?)_/, '').replace(/^base_model_model_/, '').replace(/^model_/, '')
    : hfModule.replace(/^base_model\.model\./, '').replace(/^model\./, '');
  const pattern = (r: Rule): RegExp => (kohya ? new RegExp(r.hf.source.replaceAll('\\.', '_')) : r.hf);
  let base: string | undefined;
  let permute: Permute;
  for (const r of rules) {
    const m = bare.match(pattern(r));
    if (m) {
      base = r.gguf.replace('{bid}', m[1] ?? '');
      permute = r.permute;
      break;
    }
  }
  if (base === undefined) {
    // for the hint: its name in another architecture, else the module's own with the block number carried over
    const other = ALL_RULES.find((r) => pattern(r).test(bare));
    const guess = `${prefix}${other ? other.gguf.replace('{bid}', bare.match(pattern(other))![1] ?? '') : bare.replace(/^layers[._](\d+)[._]/, 'blk.$1.')}.weight`;
    throw new LoRAShapeError(`${fn}: module ${JSON.stringify(hfModule)} has no GGUF tensor in a ${model.architecture} model${closest(guess, model.names)}`);
  }
  const target = `${prefix}${base}.weight`;
  if (!model.names.has(target)) throw new LoRAShapeError(`${fn}: module ${JSON.stringify(hfModule)} would be ${JSON.stringify(target)}, which the model does not have${closest(target, model.names)}`);
  if (!permute) return { target };
  const heads = permute === 'q' ? model.nHead : model.nHeadKv;
  if (!Number.isSafeInteger(model.headDim) || model.headDim! <= 0) {
    throw new LoRATypeError(`${fn}: module ${JSON.stringify(hfModule)}: the ${model.architecture} converter permutes its rows per head, so model.headDim must be a positive integer, got ${describeValue(model.headDim)} (ggufModelInfo reads it from ${model.architecture}.attention.key_length, else ${model.architecture}.embedding_length / head_count: the model's metadata lacks them)`);
  }
  if (!Number.isSafeInteger(heads) || heads <= 0) throw new LoRATypeError(`${fn}: model.${permute === 'q' ? 'nHead' : 'nHeadKv'} must be a positive integer, got ${describeValue(heads)}`);
  return { target, rowPermutation: llamaRowPermutation(heads * model.headDim!, heads) };
}
