/**
 * A PEFT adapter as a llama.cpp LoRA adapter (GGUF), in the layout of the base GGUF the user has.
 *
 * What llama.cpp reads (src/llama-adapter.cpp, llama_adapter_lora_init_impl):
 *   general.type = "adapter", adapter.type = "lora" (refused otherwise); general.architecture must name
 *   the base model's architecture (llm_arch_from_string(arch) != model.arch: "model arch and LoRA arch
 *   mismatch"); adapter.lora.alpha (f32, 0 when absent); adapter.alora.invocation_tokens (u32 array,
 *   activated LoRA only). Tensors end in ".lora_a" or ".lora_b" (or "_norm.weight", read and ignored);
 *   any other suffix is refused. The rest of each name is the base tensor's full name, so the pair for
 *   blk.3.attn_q.weight is blk.3.attn_q.weight.lora_a / blk.3.attn_q.weight.lora_b
 *   (convert_lora_to_gguf.py: `yield (dest_name + ".lora_a", lora_a)`).
 *   Shapes, for a base weight W of ne [in, out] (row-major [out, in]):
 *     lora_a ne [in, r]  = PEFT lora_A [r, in]  = our B        (checked: W.ne[0] == a.ne[0])
 *     lora_b ne [r, out] = PEFT lora_B [out, r] = our A        (checked: W.ne[1] == b.ne[1], a.ne[1] == b.ne[0])
 *   token_embd.weight (ne [dim, num]) is the exception (llm_build_inp_embd: get_rows of lora_a, then
 *   lora_b): lora_a ne [r, num] = our A [num, r], lora_b ne [r, dim] = our Bᵀ [dim, r].
 *
 * The scale. llama.cpp computes y += scale·lora_b·(lora_a·x) per module with (llama-adapter.h,
 * llama_adapter_lora_weight::get_scale, all in f32)
 *     scale = alpha ? user_scale·alpha / rank : user_scale,   rank = lora_b.ne[0]
 * with ONE alpha per file. PEFT gives each module m its own s_m = alpha_m / r_m, or alpha_m / √r_m with
 * use_rslora, where rank_pattern and alpha_pattern vary r_m and alpha_m (Adapter.modules[].scale).
 * So at user_scale 1 llama.cpp applies λ_m = fl32(α/r_m) (1 when α = 0) and we must store factors
 * whose product is (s_m/λ_m)·A·B. The encoding:
 *   1. α (adapter.lora.alpha) = fl32 of the value of s_m·r_m that makes λ_m == fl32(s_m) for the most
 *      modules (ties: the first module's). Plain LoRA, with or without rank_pattern: α = lora_alpha and
 *      every module matches (llama.cpp divides by each module's own rank). rsLoRA with one rank:
 *      α = lora_alpha·√r. Only modules whose s_m·r_m differs (alpha_pattern, rsLoRA with
 *      rank_pattern) need step 2.
 *   2. A module with λ_m == fl32(s_m) is written as stored: its factors bit for bit, and llama.cpp's
 *      scale is the f32 nearest s_m, what any f32 engine multiplies by. Any other module gets
 *      c_m = s_m / λ_m (float64) folded into lora_b:  lora_b = fl(c_m·A)  (one rounding per element,
 *      none when c_m is a power of two), so llama.cpp computes λ_m·fl(c_m·A)·B = s_m·A·B to within
 *      one f32 (or f16) rounding of each lora_b element.
 * Why not α = 0 with every s_m folded into lora_b: that rounds every element of every module (unless
 * s_m is a power of two) where the encoding above rounds none for the modules that share α, and it
 * loses the scale a reader of the file expects. Why not fold into lora_a: either works; lora_b is the
 * [out, r] factor, which llama.cpp multiplies last.
 * With dtype 'f16' the factors are rounded to f16 (a folded one from its f32 value: two roundings).
 *
 * Refused, each with a LoRAFormatError that says why: kohya adapters; DoRA and other PEFT types; PEFT
 * lora_bias (no bias tensor exists in a llama.cpp adapter: any suffix but .lora_a/.lora_b/_norm.weight
 * is refused, and _norm.weight is ignored); modules_to_save replacements (likewise: the loader would
 * refuse them or, for a norm, silently ignore them). A module the base has no tensor for, or whose
 * factors do not fit it, is a LoRAShapeError (ggufTargetFor in names.ts names the closest tensors).
 * see: llama.cpp src/llama-adapter.cpp, src/llama-adapter.h, src/llama-graph.cpp (build_lora_mm),
 * convert_lora_to_gguf.py (writes lora_alpha from the config alone, so rsLoRA and alpha_pattern come out
 * wrong there).
 */
import type { Adapter, AdapterModule } from './adapter.js';
import { checkAdapter, refuseDora } from './adapter.js';
import { LoRAFormatError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import type { GgufKV, GgufReader } from '../io/gguf.js';
import { type ByteSink, type GgufPlan, type GgufPlannedTensor, type GgufTensorToWrite, planGguf, writeGguf } from '../io/gguf-write.js';
import { ggufModelInfo, ggufTargetFor } from '../gguf/names.js';

export interface GgufAdapterOptions {
  /**
   * Put before every GGUF tensor name (default ''), as ggufTargetFor does: for a base whose tensor names
   * carry one. GGUF files from llama.cpp's converter have none.
   */
  readonly prefix?: string;
  /** The factors' type in the file (default 'f32'; 'f16' needs the engine that writes). */
  readonly dtype?: 'f32' | 'f16';
}

/** What one module becomes. */
export interface GgufAdapterModule {
  readonly module: AdapterModule;
  /** The base tensor, e.g. 'blk.3.attn_q.weight'; the file holds `${target}.lora_a` and `${target}.lora_b`. */
  readonly target: string;
  readonly loraA: string;
  readonly loraB: string;
  /** s_m: the module's PEFT scale. */
  readonly scale: number;
  /** λ_m: the scale llama.cpp applies at user scale 1 (f32 α / r_m, or 1 when α = 0). */
  readonly llamaScale: number;
  /** c_m = s_m / λ_m folded into lora_b, or exactly 1 (the factors are written as stored). */
  readonly fold: number;
  /** fan_in_fan_out (GPT-2 Conv1D): the base GGUF stores W [out, in], so lora_b = Bᵀ and lora_a = Aᵀ. */
  readonly transposed: boolean;
  /** token_embd: lora_a = A [num, r], lora_b = Bᵀ [dim, r]. */
  readonly embedding: boolean;
  /** The base's row order for W's output rows (llama's q/k): new row i is row rowPermutation[i]. */
  readonly rowPermutation?: Int32Array;
}

export interface GgufAdapterPlan {
  /** The file: header and the place of every tensor. */
  readonly gguf: GgufPlan;
  /** adapter.lora.alpha (an f32 value). */
  readonly alpha: number;
  readonly dtype: 'f32' | 'f16';
  readonly modules: readonly GgufAdapterModule[];
}

/** What writing f16 factors needs: lw (its convert rounds f32 → f16 in wasm). */
export interface GgufAdapterEngine {
  convert(dst: { rows: number; cols: number; data: Uint16Array; dtype: 'f16' }, src: { rows: number; cols: number; data: Float32Array }): unknown;
}

const FN = 'planGgufAdapter';
const refuse = (what: string): LoRAFormatError => new LoRAFormatError(`${FN}: ${what}`);
const f32 = Math.fround;
/** λ for a module of rank r under file alpha α (llama-adapter.h get_scale at adapter_scale 1, in f32). */
const llamaScale = (alpha: number, r: number): number => (alpha === 0 ? 1 : f32(f32(alpha) / r));

/** adapter.lora.alpha: the candidate s_m·r_m under which the most modules need no fold (see the header). */
function chooseAlpha(modules: readonly AdapterModule[]): number {
  let best = 0;
  let bestCount = -1;
  const seen = new Set<number>();
  for (const m of modules) {
    const candidate = f32(m.scale * m.r);
    if (seen.has(candidate)) continue;
    seen.add(candidate);
    let count = 0;
    for (const n of modules) if (llamaScale(candidate, n.r) === f32(n.scale)) count++;
    if (count > bestCount) [best, bestCount] = [candidate, count];
  }
  return best;
}

function checkConvertible(adapter: Adapter): void {
  if (adapter.format !== 'peft') throw refuse(`a ${adapter.format} adapter: only PEFT LoRA adapters are converted (kohya adapters name diffusion-model modules that llama.cpp does not load)`);
  const c = adapter.config;
  if (c.peft_type !== undefined && c.peft_type !== 'LORA') throw refuse(`peft_type is ${JSON.stringify(c.peft_type)}: llama.cpp adapters are plain LoRA`);
  if (c.use_dora === true) throw refuse('use_dora is true: llama.cpp has no DoRA (its adapters carry no magnitude vector)');
  if (typeof c.invocation_string === 'string' && !Array.isArray(c.alora_invocation_tokens)) {
    throw refuse('an activated LoRA (invocation_string) without alora_invocation_tokens: the tokens need the base tokenizer; add them to adapter_config.json');
  }
  const bias = adapter.modules.find((m) => m.biasDelta);
  if (bias) throw refuse(`module "${bias.name}" has a lora_bias: a llama.cpp adapter holds only .lora_a/.lora_b tensors (llama-adapter.cpp refuses any other suffix), so the bias cannot be carried`);
  if (adapter.replacements.length > 0) {
    const names = adapter.replacements.map((r) => r.name);
    throw refuse(`the adapter replaces ${names.length} base tensor${names.length === 1 ? '' : 's'} (modules_to_save: ${names.slice(0, 3).join(', ')}${names.length > 3 ? ', …' : ''}): a llama.cpp adapter cannot replace tensors (only .lora_a/.lora_b pairs; _norm.weight tensors are ignored); merge the adapter into the model instead`);
  }
}

/** The alora invocation tokens from adapter_config.json, as llama.cpp's u32 array, or undefined. */
function invocationTokens(config: Readonly<Record<string, unknown>>): GgufKV | undefined {
  const t = config.alora_invocation_tokens;
  if (t === undefined || t === null) return undefined;
  if (!Array.isArray(t) || !t.every((x) => Number.isInteger(x) && x >= 0 && x <= 0xffffffff)) {
    throw refuse(`alora_invocation_tokens must be a list of token ids, got ${describeValue(t)}`);
  }
  return { key: 'adapter.alora.invocation_tokens', type: 'ARRAY', value: { type: 'UINT32', values: Uint32Array.from(t as number[]) } };
}

/**
 * Plans the llama.cpp LoRA adapter for `adapter` on `base` (the GGUF model it will be loaded with):
 * metadata, tensor names, shapes and places, and per module the fold (see the header). Allocates no
 * factor data. Throws LoRAFormatError for what a llama.cpp adapter cannot carry, LoRAShapeError when a
 * module's factors do not fit the base tensor.
 */
export function planGgufAdapter(adapterIn: Adapter, base: GgufReader, opts: GgufAdapterOptions = {}): GgufAdapterPlan {
  const adapter = checkAdapter(adapterIn, FN);
  if (typeof opts !== 'object' || opts === null) throw new LoRATypeError(`${FN}: options must be an object, got ${describeValue(opts)}`);
  const prefix = opts.prefix ?? '';
  if (typeof prefix !== 'string') throw new LoRATypeError(`${FN}: prefix must be a string, got ${describeValue(prefix)}`);
  const dtype = opts.dtype ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'f16') throw new LoRATypeError(`${FN}: dtype must be 'f32' or 'f16', got ${describeValue(dtype)}`);
  refuseDora(FN, adapter, 'a llama.cpp adapter cannot carry a magnitude vector');
  checkConvertible(adapter);
  if (adapter.modules.length === 0) throw refuse('the adapter has no LoRA modules');
  const arch = base.value('general.architecture');
  if (typeof arch !== 'string') throw refuse(`${base.file} has no general.architecture string; llama.cpp matches the adapter's against the model's`);

  const info = ggufModelInfo(base);
  const alpha = chooseAlpha(adapter.modules);
  const seen = new Map<string, string>();
  const modules = adapter.modules.map((m): GgufAdapterModule => {
    if (m.kind === 'conv1x1') throw refuse(`module "${m.name}" is a 1×1 conv: llama.cpp adapters hold linear layers and token embeddings`);
    const { target, rowPermutation } = ggufTargetFor(info, m.name, prefix); // LoRAShapeError: no such tensor
    const w = base.get(target);
    if (!w) throw refuse(`module "${m.name}" maps to "${target}", which ${base.file} does not hold`);
    const twin = seen.get(target);
    if (twin !== undefined) throw refuse(`modules "${twin}" and "${m.name}" both map to "${target}"`);
    seen.set(target, m.name);
    const embedding = m.kind === 'embedding';
    if (embedding !== /(^|\.)token_embd\.weight$/.test(target)) {
      throw refuse(`module "${m.name}" is ${embedding ? 'an embedding' : 'a linear layer'} but maps to "${target}"; llama.cpp applies embedding LoRAs to token_embd.weight alone`);
    }
    const transposed = m.fanInFanOut;
    // [out, in] of ΔW in the base GGUF's row-major layout, from our factors (ΔW_ours = s·A·B)
    const [out, inn] = transposed ? [m.B.cols, m.A.rows] : [m.A.rows, m.B.cols];
    if (w.shape.length !== 2 || w.shape[0] !== out || w.shape[1] !== inn) {
      throw new LoRAShapeError(`${FN}: module "${m.name}" changes a [${out}, ${inn}] weight${transposed ? ' (fan_in_fan_out, transposed)' : ''} but "${target}" in ${base.file} is [${w.shape.join(', ')}]`);
    }
    if (rowPermutation && (embedding || rowPermutation.length !== out)) {
      throw new LoRAShapeError(`${FN}: module "${m.name}": the row permutation of "${target}" has ${rowPermutation.length} rows, the weight ${out}`);
    }
    const lambda = llamaScale(alpha, m.r);
    const fold = lambda === f32(m.scale) ? 1 : m.scale / lambda;
    return { module: m, target, loraA: `${target}.lora_a`, loraB: `${target}.lora_b`, scale: m.scale, llamaScale: lambda, fold, transposed, embedding, rowPermutation };
  });

  const type: 'F32' | 'F16' = dtype === 'f32' ? 'F32' : 'F16';
  const tensors = modules.flatMap((p): GgufTensorToWrite[] => {
    const { r } = p.module;
    const [out, inn] = base.get(p.target)!.shape as [number, number];
    // shapes outermost first (ne reversed)
    return p.embedding
      ? [{ name: p.loraA, type, shape: [out, r] }, { name: p.loraB, type, shape: [inn, r] }]
      : [{ name: p.loraA, type, shape: [r, inn] }, { name: p.loraB, type, shape: [out, r] }];
  });
  const alora = invocationTokens(adapter.config);
  const metadata: GgufKV[] = [
    { key: 'general.architecture', type: 'STRING', value: arch },
    { key: 'general.type', type: 'STRING', value: 'adapter' },
    { key: 'adapter.type', type: 'STRING', value: 'lora' },
    { key: 'adapter.lora.alpha', type: 'FLOAT32', value: alpha },
    ...(alora ? [alora] : []),
  ];
  return Object.freeze({ gguf: planGguf({ metadata, tensors }), alpha, dtype, modules: Object.freeze(modules) });
}

/** Row-major [rows, cols] → [cols, rows]. */
function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(x.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = x[i * cols + j]!;
  return t;
}

/** The f32 values of one planned tensor: lora_a or lora_b of a module, folded and permuted. */
function factorValues(p: GgufAdapterModule, side: 'a' | 'b'): { values: Float32Array; rows: number; cols: number } {
  const { A, B, r } = p.module;
  if (p.embedding) {
    // lora_a = A [num, r]; lora_b = Bᵀ [dim, r], folded
    if (side === 'a') return { values: A.toFloat32(), rows: A.rows, cols: r };
    return { values: scaled(transpose(B.toFloat32(), r, B.cols), p.fold), rows: B.cols, cols: r };
  }
  if (side === 'a') return p.transposed ? { values: transpose(A.toFloat32(), A.rows, r), rows: r, cols: A.rows } : { values: B.toFloat32(), rows: r, cols: B.cols };
  const outFactor = p.transposed ? transpose(B.toFloat32(), r, B.cols) : A.toFloat32();
  const rows = outFactor.length / r;
  return { values: scaled(permuted(outFactor, r, p.rowPermutation), p.fold), rows, cols: r };
}

function scaled(x: Float32Array, c: number): Float32Array {
  if (c !== 1) for (let i = 0; i < x.length; i++) x[i] = c * x[i]!; // float64 product, one rounding
  return x;
}

function permuted(x: Float32Array, cols: number, perm: Int32Array | undefined): Float32Array {
  if (!perm) return x;
  const out = new Float32Array(x.length);
  for (let i = 0; i < perm.length; i++) out.set(x.subarray(perm[i]! * cols, (perm[i]! + 1) * cols), i * cols);
  return out;
}

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The bytes of one tensor of `plan` (f32, or f16 through engine.convert), little-endian. */
export function ggufAdapterTensor(plan: GgufAdapterPlan, t: GgufPlannedTensor, engine?: GgufAdapterEngine): Uint8Array {
  const index = t.index >> 1;
  const p = plan.modules[index];
  if (!p || t !== plan.gguf.tensors[t.index]) throw new LoRATypeError(`ggufAdapterTensor: ${describeValue(t)} is not a tensor of this plan (pass one of plan.gguf.tensors)`);
  const { values, rows, cols } = factorValues(p, t.index % 2 === 0 ? 'a' : 'b');
  if (plan.dtype === 'f16') {
    if (!engine || typeof engine.convert !== 'function') throw new LoRATypeError(`ggufAdapterTensor: dtype 'f16' needs the engine (lw), got ${describeValue(engine)}`);
    const data = new Uint16Array(values.length);
    engine.convert({ rows, cols, data, dtype: 'f16' }, { rows, cols, data: values });
    return toLittleEndian(new Uint8Array(data.buffer), 2);
  }
  return toLittleEndian(new Uint8Array(values.buffer), 4);
}

function toLittleEndian(bytes: Uint8Array, size: number): Uint8Array {
  if (!LITTLE_ENDIAN_HOST) for (let i = 0; i < bytes.length; i += size) bytes.subarray(i, i + size).reverse();
  return bytes;
}

/** Writes the planned adapter to `sink` (an AtomicFile in the CLI), one tensor in memory at a time. */
export async function writeGgufAdapter(plan: GgufAdapterPlan, sink: ByteSink, engine?: GgufAdapterEngine): Promise<void> {
  await writeGguf(plan.gguf, sink, (t) => ggufAdapterTensor(plan, t, engine));
}

/** The whole llama.cpp adapter file in memory (adapters are MBs). `engine` (lw) is needed for dtype 'f16'. */
export async function encodeGgufAdapter(adapter: Adapter, base: GgufReader, opts: GgufAdapterOptions = {}, engine?: GgufAdapterEngine): Promise<Uint8Array> {
  const plan = planGgufAdapter(adapter, base, opts);
  const out = new Uint8Array(plan.gguf.fileSize);
  let at = 0;
  await writeGgufAdapter(plan, { write: (b) => { out.set(b, at); at += b.length; } }, engine);
  return out;
}
