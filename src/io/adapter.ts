/**
 * Adapters from files: HuggingFace PEFT (`adapter_model.safetensors` + `adapter_config.json`) and
 * kohya / sd-scripts (`lora_unet_…`, `lora_te_…`), read into an `Adapter` value.
 *
 * Naming. PEFT's `lora_A.weight` [r, in] is our B and `lora_B.weight` [out, r] is our A. Every module
 * is stored so that merging is always W ← W + s·A·B on W as the base file stores it:
 *   nn.Linear        W [out, in]   A = lora_B [out, r]            B = lora_A [r, in]
 *   fan_in_fan_out   W [in, out]   A = lora_Aᵀ [in, r]            B = lora_Bᵀ [r, out]     (ΔW = (lora_B·lora_A)ᵀ)
 *   Embedding        W [num, dim]  A = lora_embedding_Aᵀ [num, r] B = lora_embedding_Bᵀ [r, dim]
 *   kohya 1×1 conv   W [out, in, 1, 1] treated as [out, in]; A = lora_up, B = lora_down
 * Only the factors are transposed (O(r·(in + out))), never W.
 *
 * Scales. PEFT: lora_alpha / r (or / √r with use_rslora), with `rank_pattern` and `alpha_pattern`
 * keys matched against the module name as PEFT does, as the regex `(.*\.)?key$`. kohya: alpha / r,
 * alpha defaulting to r.
 *
 * Nothing is skipped silently: a tensor that is neither a LoRA factor nor a tensor to replace
 * (modules_to_save, trained biases) is an error, and so is every feature whose math this does not
 * implement (DoRA, PiSSA/OLoRA/CorDA/LoftQ initialisations that only fit a modified base, conv
 * kernels, layer replication, trainable tokens, target parameters).
 */
import { LoRAFormatError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import { type DType, type Matrix, disposeSymbol } from '../memory/matrix.js';
import { DTYPE_OF_ST, SafetensorsReader, type TensorInfo, numelOf, tensorData } from './safetensors.js';

export interface AdapterModule {
  /** The module's name in the base model, e.g. 'distilbert.transformer.layer.0.attention.q_lin' (kohya: 'lora_unet_…'). */
  readonly name: string;
  readonly kind: 'linear' | 'embedding' | 'conv1x1';
  readonly r: number;
  readonly alpha: number;
  /** s: alpha/r, or alpha/√r with rsLoRA. */
  readonly scale: number;
  /** GPT-2's Conv1D: W stored [in, out]. */
  readonly fanInFanOut: boolean;
  /** Ours: ΔW = scale·A·B on W's stored layout. */
  readonly A: Matrix<DType>;
  readonly B: Matrix<DType>;
  /** PEFT lora_bias: scale·biasDelta is added to the base bias `<name>.bias`. */
  readonly biasDelta?: Matrix<DType>;
}

export interface Replacement {
  /** The base tensor's name, e.g. 'classifier.weight'. */
  readonly name: string;
  readonly shape: readonly number[];
  readonly tensor: Matrix<DType>;
}

export class Adapter {
  readonly format: 'peft' | 'kohya';
  readonly modules: readonly AdapterModule[];
  /** Tensors that replace the base tensor of the same name (PEFT modules_to_save, trained biases). */
  readonly replacements: readonly Replacement[];
  /** The adapter_config.json fields as read (PEFT), or {} (kohya). */
  readonly config: Readonly<Record<string, unknown>>;

  /** @internal use lw.loadAdapter */
  constructor(format: 'peft' | 'kohya', modules: AdapterModule[], replacements: Replacement[], config: Record<string, unknown>) {
    this.format = format;
    this.modules = modules;
    this.replacements = replacements;
    this.config = config;
  }

  /** Trainable parameters: Σ r·(in + out) over modules. */
  get parameters(): number {
    return this.modules.reduce((s, m) => s + m.A.rows * m.A.cols + m.B.rows * m.B.cols, 0);
  }

  dispose(): void {
    for (const m of this.modules) for (const x of [m.A, m.B, m.biasDelta]) x?.dispose();
    for (const r of this.replacements) r.tensor.dispose();
  }

  [disposeSymbol](): void {
    this.dispose();
  }
}

/** Makes a resident matrix from file data (raw bits for half types), optionally transposed. */
export type MakeMatrix = (rows: number, cols: number, data: Float32Array | Uint16Array, dtype: DType) => Matrix<DType>;


/** x stored [rows, cols] as [cols, rows] (factors only: O(r·d)). */
export function transpose<T extends Float32Array | Uint16Array>(x: T, rows: number, cols: number): T {
  const out = new (x.constructor as new (n: number) => T)(x.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j]!;
  return out;
}

/** PEFT's pattern lookup: the first key k with /^(.*\.)?k$/ matching the module name. */
export function patternValue<T>(patterns: Record<string, T> | undefined, module: string, dflt: T): T {
  for (const [k, v] of Object.entries(patterns ?? {})) if (new RegExp(`^(.*\\.)?${k}$`).test(module)) return v;
  return dflt;
}

/** The adapter_config.json fields that change the math, checked. */
interface PeftConfig {
  r: number;
  lora_alpha: number;
  use_rslora: boolean;
  fan_in_fan_out: boolean;
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  modules_to_save: string[];
  bias: 'none' | 'all' | 'lora_only';
  lora_bias: boolean;
}

export function readPeftConfig(configIn: unknown): { config: PeftConfig; raw: Record<string, unknown> } {
  const where = 'adapter_config.json';
  let raw: unknown = configIn;
  if (typeof raw === 'string') {
    try {
      raw = JSON.parse(raw);
    } catch (e) {
      throw new LoRAFormatError(`${where}: not valid JSON (${(e as Error).message})`);
    }
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new LoRAFormatError(`${where}: must be a JSON object, got ${describeValue(raw)}`);
  const c = raw as Record<string, unknown>;
  const bad = (key: string, what: string): LoRAFormatError => new LoRAFormatError(`${where}: "${key}" ${what}`);
  if (c.peft_type !== 'LORA') throw bad('peft_type', `is ${JSON.stringify(c.peft_type)}; only LORA adapters are supported`);
  if (c.use_dora === true) throw bad('use_dora', 'is true: DoRA adapters (lora_magnitude_vector) are not supported');
  const init = c.init_lora_weights;
  if (typeof init === 'string' && /^(pissa|olora|corda|loftq|eva)/i.test(init)) {
    throw bad('init_lora_weights', `is "${init}": such adapters were trained against a modified base model and do not apply to the original weights`);
  }
  if (c.loftq_config && typeof c.loftq_config === 'object' && Object.keys(c.loftq_config).length > 0) throw bad('loftq_config', 'is set: LoftQ adapters fit a quantized, modified base');
  for (const key of ['layer_replication', 'target_parameters', 'trainable_token_indices', 'megatron_config']) {
    const v = c[key];
    if (v !== undefined && v !== null && !(Array.isArray(v) && v.length === 0)) throw bad(key, `is set (${describeValue(v)}); this changes the model in a way lora-wasm does not implement`);
  }
  if (c.use_qalora === true) throw bad('use_qalora', 'is true: QA-LoRA is not supported');
  const int = (key: string): number => {
    if (!Number.isSafeInteger(c[key]) || (c[key] as number) < 1) throw bad(key, `must be a positive integer, got ${describeValue(c[key])}`);
    return c[key] as number;
  };
  const num = (key: string): number => {
    if (typeof c[key] !== 'number' || !Number.isFinite(c[key])) throw bad(key, `must be a number, got ${describeValue(c[key])}`);
    return c[key] as number;
  };
  const flag = (key: string): boolean => {
    if (c[key] === undefined || c[key] === null) return false;
    if (typeof c[key] !== 'boolean') throw bad(key, `must be true or false, got ${describeValue(c[key])}`);
    return c[key] as boolean;
  };
  const pattern = (key: string): Record<string, number> => {
    const v = c[key] ?? {};
    if (typeof v !== 'object' || Array.isArray(v) || !Object.values(v as object).every((x) => typeof x === 'number' && Number.isFinite(x))) {
      throw bad(key, `must be an object of numbers, got ${describeValue(v)}`);
    }
    return v as Record<string, number>;
  };
  const bias = c.bias ?? 'none';
  if (bias !== 'none' && bias !== 'all' && bias !== 'lora_only') throw bad('bias', `must be "none", "all" or "lora_only", got ${describeValue(bias)}`);
  const mts = c.modules_to_save ?? [];
  if (!Array.isArray(mts) || !mts.every((x) => typeof x === 'string')) throw bad('modules_to_save', `must be a list of names, got ${describeValue(mts)}`);
  return {
    raw: c,
    config: {
      r: int('r'), lora_alpha: num('lora_alpha'), use_rslora: flag('use_rslora'), fan_in_fan_out: flag('fan_in_fan_out'),
      rank_pattern: pattern('rank_pattern'), alpha_pattern: pattern('alpha_pattern'), modules_to_save: mts as string[], bias, lora_bias: flag('lora_bias'),
    },
  };
}

const PEFT_PREFIX = 'base_model.model.';
const PEFT_FACTOR = /^(.+)\.(lora_A|lora_B)(?:\.[A-Za-z0-9_-]+)?\.(weight|bias)$/;
const PEFT_EMBEDDING = /^(.+)\.(lora_embedding_A|lora_embedding_B)(?:\.[A-Za-z0-9_-]+)?$/;
const KOHYA = /^(lora_(?:unet|te\d?)_[A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;

interface Parts {
  A?: TensorInfo;
  B?: TensorInfo;
  bias?: TensorInfo;
  embedding?: boolean;
  alpha?: TensorInfo;
}

/** Reads an adapter into resident matrices; `make` allocates them (lw.matrix). */
export async function readAdapter(
  reader: SafetensorsReader, configIn: unknown, make: MakeMatrix,
): Promise<Adapter> {
  const file = reader.file;
  const names = reader.tensors.map((t) => t.name);
  const kohya = names.some((n) => KOHYA.test(n));
  const made: Matrix<DType>[] = [];
  const load = async (t: TensorInfo, rows: number, cols: number, transposed = false): Promise<Matrix<DType>> => {
    const dtype = DTYPE_OF_ST[t.dtype];
    if (!dtype) throw new LoRAFormatError(`safetensors: ${file}: "${t.name}" is ${t.dtype}, which lora-wasm does not support (it reads F32, F16 and BF16)`);
    let data = tensorData(file, await reader.read(t.name));
    if (transposed) data = transpose(data, cols, rows);
    const m = make(rows, cols, data, dtype);
    made.push(m);
    return m;
  };
  try {
    return kohya ? await readKohya(reader, load) : await readPeft(reader, configIn, load);
  } catch (e) {
    for (const m of made) m.dispose();
    throw e;
  }
}

type Load = (t: TensorInfo, rows: number, cols: number, transposed?: boolean) => Promise<Matrix<DType>>;

async function readPeft(reader: SafetensorsReader, configIn: unknown, load: Load): Promise<Adapter> {
  const file = reader.file;
  if (configIn === undefined) throw new LoRAFormatError(`${file}: a PEFT adapter needs its adapter_config.json (pass { config })`);
  const { config, raw } = readPeftConfig(configIn);
  const modules = new Map<string, Parts>();
  const replace: { info: TensorInfo; name: string }[] = [];
  const part = (m: string): Parts => modules.get(m) ?? (modules.set(m, {}), modules.get(m)!);
  for (const t of reader.tensors) {
    if (!t.name.startsWith(PEFT_PREFIX)) throw new LoRAFormatError(`${file}: "${t.name}" is not a PEFT key (they start with "${PEFT_PREFIX}")`);
    const key = t.name.slice(PEFT_PREFIX.length);
    if (/\.lora_magnitude_vector(\.|$)/.test(key)) throw new LoRAFormatError(`${file}: "${t.name}" is a DoRA magnitude vector; DoRA adapters are not supported`);
    let m = key.match(PEFT_EMBEDDING);
    if (m) {
      const p = part(m[1]!);
      p.embedding = true;
      if (m[2] === 'lora_embedding_A') p.B = t; // [r, num]
      else p.A = t; // [dim, r]
      continue;
    }
    m = key.match(PEFT_FACTOR);
    if (m) {
      const p = part(m[1]!);
      if (m[3] === 'bias') {
        if (m[2] !== 'lora_B') throw new LoRAFormatError(`${file}: "${t.name}": only lora_B carries a bias (lora_bias)`);
        p.bias = t;
      } else if (m[2] === 'lora_A') p.B = t;
      else p.A = t;
      continue;
    }
    if (/\.(lora_|hada_|lokr_|oft_|boft_)/.test(key)) throw new LoRAFormatError(`${file}: "${t.name}" is not a LoRA tensor lora-wasm knows`);
    // a whole tensor that replaces the base one: modules_to_save, or a bias trained with bias: all/lora_only
    const plain = key.replace(/\.modules_to_save\.[A-Za-z0-9_-]+\./, '.');
    const owner = plain.replace(/\.[^.]+$/, '');
    const saved = config.modules_to_save.some((s) => owner.endsWith(s)); // PEFT: key.endswith(target_key)
    if (!saved && !(config.bias !== 'none' && plain.endsWith('.bias'))) {
      throw new LoRAFormatError(`${file}: "${t.name}" is neither a LoRA factor nor in modules_to_save ${JSON.stringify(config.modules_to_save)}; refusing to skip it`);
    }
    replace.push({ info: t, name: plain });
  }
  const out: AdapterModule[] = [];
  for (const [name, p] of modules) {
    if (!p.A || !p.B) throw new LoRAFormatError(`${file}: module "${name}" has ${p.A ? 'lora_B' : 'lora_A'} but not ${p.A ? 'lora_A' : 'lora_B'}`);
    if (p.A.shape.length !== 2 || p.B.shape.length !== 2) {
      throw new LoRAFormatError(`${file}: module "${name}" has ${p.B.shape.length}-d factors ${JSON.stringify(p.B.shape)}; conv kernels are not supported`);
    }
    const [bRows, bCols] = p.B.shape as [number, number];
    const [aRows, aCols] = p.A.shape as [number, number];
    const r = bRows;
    if (aCols !== r) {
      throw new LoRAFormatError(`${file}: module "${name}": the factors' ranks disagree (${JSON.stringify(p.B.shape)} and ${JSON.stringify(p.A.shape)})`);
    }
    const rPattern = patternValue(config.rank_pattern, name, config.r);
    if (rPattern !== r) throw new LoRAFormatError(`${file}: module "${name}" has rank ${r} but adapter_config.json says ${rPattern}`);
    const alpha = patternValue(config.alpha_pattern, name, config.lora_alpha);
    const scale = config.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
    let A: Matrix<DType>, B: Matrix<DType>;
    let kind: AdapterModule['kind'] = 'linear';
    if (p.embedding) {
      kind = 'embedding';
      A = await load(p.B, bCols, r, true); // lora_embedding_Aᵀ [num, r]
      B = await load(p.A, r, aRows, true); // lora_embedding_Bᵀ [r, dim]
    } else if (config.fan_in_fan_out) {
      A = await load(p.B, bCols, r, true); // lora_Aᵀ [in, r]
      B = await load(p.A, r, aRows, true); // lora_Bᵀ [r, out]
    } else {
      A = await load(p.A, aRows, r); // lora_B [out, r]
      B = await load(p.B, r, bCols); // lora_A [r, in]
    }
    const biasDelta = p.bias ? await load(p.bias, 1, numelOf(p.bias.shape)) : undefined;
    out.push({ name, kind, r, alpha, scale, fanInFanOut: config.fan_in_fan_out && kind === 'linear', A, B, biasDelta });
  }
  const replacements: Replacement[] = [];
  for (const { info, name } of replace) {
    const [rows, cols] = as2d(info.shape);
    replacements.push({ name, shape: info.shape, tensor: await load(info, rows, cols) });
  }
  return new Adapter('peft', out, replacements, raw);
}

async function readKohya(reader: SafetensorsReader, load: Load): Promise<Adapter> {
  const file = reader.file;
  const modules = new Map<string, Parts>();
  for (const t of reader.tensors) {
    const m = t.name.match(KOHYA);
    if (!m) {
      const why = /dora_scale|hada_|lokr_/.test(t.name) ? ' (DoRA and LyCORIS LoHa/LoKr are not supported)' : '';
      throw new LoRAFormatError(`${file}: "${t.name}" is not a kohya LoRA key (<module>.lora_down.weight, .lora_up.weight, .alpha)${why}`);
    }
    const p = modules.get(m[1]!) ?? (modules.set(m[1]!, {}), modules.get(m[1]!)!);
    if (m[2] === 'lora_down.weight') p.B = t;
    else if (m[2] === 'lora_up.weight') p.A = t;
    else p.alpha = t;
  }
  const out: AdapterModule[] = [];
  for (const [name, p] of modules) {
    if (!p.A || !p.B) throw new LoRAFormatError(`${file}: module "${name}" has ${p.A ? 'lora_up' : 'lora_down'} but not ${p.A ? 'lora_down' : 'lora_up'}`);
    const conv = p.B.shape.length === 4;
    if (conv && !(p.B.shape[2] === 1 && p.B.shape[3] === 1 && p.A.shape[2] === 1 && p.A.shape[3] === 1)) {
      throw new LoRAFormatError(`${file}: module "${name}" is a ${p.B.shape[2]}×${p.B.shape[3]} conv LoRA; only linear and 1×1-conv layers are supported`);
    }
    if (!conv && (p.B.shape.length !== 2 || p.A.shape.length !== 2)) throw new LoRAFormatError(`${file}: module "${name}" has factors of shape ${JSON.stringify(p.B.shape)}, ${JSON.stringify(p.A.shape)}`);
    const r = p.B.shape[0]!;
    if (p.A.shape[1] !== r) throw new LoRAFormatError(`${file}: module "${name}": lora_down ${JSON.stringify(p.B.shape)} and lora_up ${JSON.stringify(p.A.shape)} disagree on the rank`);
    let alpha = r;
    if (p.alpha) {
      if (numelOf(p.alpha.shape) !== 1) throw new LoRAFormatError(`${file}: "${p.alpha.name}" must hold one value, it has shape ${JSON.stringify(p.alpha.shape)}`);
      const a = await load(p.alpha, 1, 1);
      alpha = a.toFloat32()[0]!;
      a.dispose();
      if (!Number.isFinite(alpha)) throw new LoRAFormatError(`${file}: "${p.alpha.name}" is ${alpha}`);
    }
    const A = await load(p.A, p.A.shape[0]!, r);
    const B = await load(p.B, r, p.B.shape[1]!);
    out.push({ name, kind: conv ? 'conv1x1' : 'linear', r, alpha, scale: alpha / r, fanInFanOut: false, A, B });
  }
  return new Adapter('kohya', out, [], {});
}


/** A tensor shape as a matrix: [n] → [1, n], [] → [1, 1], [a, b, 1, 1] → [a, b], [a, ...rest] → [a, Π rest]. */
export function as2d(shape: readonly number[]): [number, number] {
  if (shape.length === 0) return [1, 1];
  if (shape.length === 1) return [1, shape[0]!];
  return [shape[0]!, numelOf(shape.slice(1))];
}

/** The base tensor a module changes, found among `names` (PEFT: `<prefix><module>.weight`; kohya: by its underscored name). */
export function targetOf(module: AdapterModule, format: 'peft' | 'kohya', names: ReadonlySet<string>, prefix = ''): string {
  if (format === 'peft') {
    const want = `${prefix}${module.name}.weight`;
    if (names.has(want)) return want;
    throw new LoRAShapeError(`mergeAdapter: the base model has no tensor "${want}" for module "${module.name}"${closeNames(want, names)}`);
  }
  const bare = module.name.replace(/^lora_(unet|te\d?)_/, '');
  const hits = [...names].filter((n) => n.endsWith('.weight') && n.slice(prefix.length, -'.weight'.length).replaceAll('.', '_') === bare && n.startsWith(prefix));
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) throw new LoRAShapeError(`mergeAdapter: kohya module "${module.name}" matches several base tensors: ${hits.join(', ')}`);
  throw new LoRAShapeError(`mergeAdapter: no base tensor matches kohya module "${module.name}" (looked for "${prefix}${bare.replaceAll('_', '.')}.weight" with '.' for '_')${closeNames(bare, names)}`);
}

/** ", close names: …" from the names sharing the most trailing components with `want`. */
function closeNames(want: string, names: ReadonlySet<string>): string {
  const tail = (s: string) => s.split(/[._]/).reverse();
  const w = tail(want);
  const score = (n: string): number => {
    const t = tail(n);
    let k = 0;
    while (k < w.length && k < t.length && w[k] === t[k]) k++;
    return k;
  };
  const best = [...names].map((n) => [n, score(n)] as const).filter(([, s]) => s >= 2).sort((a, b) => b[1] - a[1]).slice(0, 3);
  return best.length ? `; close names: ${best.map(([n]) => `"${n}"`).join(', ')} (pass { prefix } if the base model's names carry one)` : '';
}

export function checkTargetShape(module: AdapterModule, target: string, shape: readonly [number, number]): void {
  if (module.A.rows !== shape[0] || module.B.cols !== shape[1]) {
    const layout = module.fanInFanOut ? ' (fan_in_fan_out: W stored [in, out])' : '';
    throw new LoRAShapeError(
      `mergeAdapter: module "${module.name}" changes a [${module.A.rows}, ${module.B.cols}] weight${layout} but "${target}" is [${shape[0]}, ${shape[1]}]`,
    );
  }
}

export function checkAdapter(x: unknown, fn: string): Adapter {
  if (!(x instanceof Adapter)) throw new LoRATypeError(`${fn}: adapter must be an Adapter from lw.loadAdapter, got ${describeValue(x)}`);
  return x;
}
