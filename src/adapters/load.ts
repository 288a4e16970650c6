/**
 * Adapters from files: HuggingFace PEFT (`adapter_model.safetensors` + `adapter_config.json`) and
 * kohya / sd-scripts (`lora_unet_…`, `lora_te_…`), read into an `Adapter` value (see adapter.ts for
 * how PEFT's and kohya's factors become our A and B). Only the factors are transposed (O(r·(in + out))), never W.
 *
 * Scales. PEFT: lora_alpha / r (or / √r with use_rslora), with `rank_pattern` and `alpha_pattern`
 * keys matched against the module name as PEFT does, as the regex `(.*\.)?key$`. kohya: alpha / r,
 * alpha defaulting to r.
 *
 * Nothing is skipped silently: a tensor that is neither a LoRA factor nor a tensor to replace
 * (modules_to_save, trained biases) is an error, and so is every feature whose math this does not
 * implement (PiSSA/OLoRA/CorDA/LoftQ initialisations that only fit a modified base, conv
 * kernels, layer replication, trainable tokens, target parameters).
 *
 * DoRA (dora.ts): PEFT's `lora_magnitude_vector` [out] with `use_dora: true`, LyCORIS's `dora_scale`
 * ([out, 1] or [1, in]) beside kohya factors, read onto the module as `magnitude` [1, n] with its axis.
 */
import { LoRAFormatError } from '../errors.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { transpose } from '../memory/transpose.js';
import { KOHYA } from '../io/kohya.js';
import { PEFT_EMBEDDING, PEFT_FACTOR, PEFT_MAGNITUDE, PEFT_PREFIX, patternValue, preparePatterns, readPeftConfig } from '../io/peft.js';
import { DTYPE_OF_ST, type SafetensorsReader, type TensorInfo, as2d, numelOf, tensorData } from '../io/safetensors.js';
import { Adapter, type AdapterModule, type Replacement } from './adapter.js';
import { LYCORIS_EPS, checkMagnitude } from './dora.js';


/** Makes a resident matrix from file data (raw bits for half types), or a zeroed one without data. */
export type MakeMatrix = (rows: number, cols: number, data: Float32Array | Uint16Array | undefined, dtype: DType) => Matrix<DType>;


interface Parts {
  A?: TensorInfo;
  B?: TensorInfo;
  bias?: TensorInfo;
  embedding?: boolean;
  alpha?: TensorInfo;
  /** DoRA: PEFT lora_magnitude_vector, LyCORIS dora_scale. */
  magnitude?: TensorInfo;
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
    if (rows === 0 || cols === 0) throw new LoRAFormatError(`safetensors: ${file}: "${t.name}" has shape ${JSON.stringify(t.shape)}, no elements; an adapter tensor needs at least one`);
    if (transposed) {
      const m = make(rows, cols, transpose(tensorData(file, await reader.read(t.name)), cols, rows), dtype);
      made.push(m);
      return m;
    }
    // stored as resident: the bytes go straight into the matrix's wasm memory (little-endian both)
    const m = make(rows, cols, undefined, dtype);
    made.push(m);
    const bytes = () => new Uint8Array(m.data.buffer, m.data.byteOffset, m.data.byteLength);
    if (m.data.buffer instanceof SharedArrayBuffer) await reader.readInto(t, bytes());
    else {
      const read = await reader.read(t.name); // unshared memory may move while a read is in flight
      bytes().set(read.bytes);
    }
    return m;
  };
  try {
    return kohya ? await readKohya(reader, load) : await readPeft(reader, configIn, load);
  } catch (e) {
    for (const m of made) m.dispose();
    throw e;
  }
}

/** "has X but not Y", or "has neither X nor Y" for a module with only a bias or an alpha; names = [A's, B's]. */
function missing(p: Parts, names: [string, string]): string {
  const [a, b] = names;
  if (!p.A && !p.B) return `has neither ${a} nor ${b}${p.alpha ? ' (only an alpha)' : p.bias ? ' (only a lora_B bias)' : ''}`;
  return p.A ? `has ${a} but not ${b}` : `has ${b} but not ${a}`;
}

type Load = (t: TensorInfo, rows: number, cols: number, transposed?: boolean) => Promise<Matrix<DType>>;

async function readPeft(reader: SafetensorsReader, configIn: unknown, load: Load): Promise<Adapter> {
  const file = reader.file;
  if (configIn === undefined) throw new LoRAFormatError(`${file}: a PEFT adapter needs its adapter_config.json (pass { config })`);
  await preparePatterns(configIn);
  const { config, raw } = readPeftConfig(configIn);
  const modules = new Map<string, Parts>();
  const replace: { info: TensorInfo; name: string }[] = [];
  const part = (m: string): Parts => modules.get(m) ?? (modules.set(m, {}), modules.get(m)!);
  // `x.lora_A.weight` and `x.lora_A.default.weight` name one factor twice: which PEFT would load depends
  // on the adapter name it is given, so two candidates are refused rather than one dropped
  const put = (p: Parts, slot: 'A' | 'B' | 'bias' | 'magnitude', t: TensorInfo): void => {
    const had = p[slot];
    if (had) throw new LoRAFormatError(`${file}: "${had.name}" and "${t.name}" are the same LoRA factor; refusing to pick one`);
    p[slot] = t;
  };
  const replaced = new Map<string, string>();
  for (const t of reader.tensors) {
    if (!t.name.startsWith(PEFT_PREFIX)) throw new LoRAFormatError(`${file}: "${t.name}" is not a PEFT key (they start with "${PEFT_PREFIX}")`);
    const key = t.name.slice(PEFT_PREFIX.length);
    let m = key.match(PEFT_MAGNITUDE);
    if (m) {
      if (!config.use_dora) throw new LoRAFormatError(`${file}: "${t.name}" is a DoRA magnitude vector but adapter_config.json's "use_dora" is not true`);
      put(part(m[1]!), 'magnitude', t);
      continue;
    }
    if (/\.lora_magnitude_vector(\.|$)/.test(key)) throw new LoRAFormatError(`${file}: "${t.name}" is not a DoRA magnitude key lora-wasm knows (<module>.lora_magnitude_vector)`);
    m = key.match(PEFT_EMBEDDING);
    if (m) {
      const p = part(m[1]!);
      p.embedding = true;
      put(p, m[2] === 'lora_embedding_A' ? 'B' : 'A', t); // lora_embedding_A [r, num], lora_embedding_B [dim, r]
      continue;
    }
    m = key.match(PEFT_FACTOR);
    if (m) {
      const p = part(m[1]!);
      if (m[3] === 'bias') {
        if (m[2] !== 'lora_B') throw new LoRAFormatError(`${file}: "${t.name}": only lora_B carries a bias (lora_bias)`);
        put(p, 'bias', t);
      } else put(p, m[2] === 'lora_A' ? 'B' : 'A', t);
      continue;
    }
    if (/\.(lora_|hada_|lokr_|oft_|boft_)/.test(key)) throw new LoRAFormatError(`${file}: "${t.name}" is not a LoRA tensor lora-wasm knows`);
    // a whole tensor that replaces the base one: modules_to_save, or a bias trained with bias: all/lora_only
    const plain = key.replace(/\.modules_to_save\.[A-Za-z0-9_-]+\./, '.');
    const owner = plain.replace(/\.[^.]+$/, '');
    // PEFT (utils/other.py, _set_trainable): a module is saved when `key.endswith(target_key)`
    const saved = config.modules_to_save.some((s) => owner.endsWith(s));
    if (!saved && !(config.bias !== 'none' && plain.endsWith('.bias'))) {
      throw new LoRAFormatError(`${file}: "${t.name}" is neither a LoRA factor nor in modules_to_save ${JSON.stringify(config.modules_to_save)}; refusing to skip it`);
    }
    const twin = replaced.get(plain);
    if (twin !== undefined) throw new LoRAFormatError(`${file}: "${twin}" and "${t.name}" both replace "${plain}"; refusing to pick one`);
    replaced.set(plain, t.name);
    replace.push({ info: t, name: plain });
  }
  const out: AdapterModule[] = [];
  for (const [name, p] of modules) {
    if (!p.A || !p.B) {
      const what = !p.A && !p.B && p.magnitude ? 'has a DoRA lora_magnitude_vector but neither lora_B nor lora_A' : missing(p, p.embedding ? ['lora_embedding_B', 'lora_embedding_A'] : ['lora_B', 'lora_A']);
      throw new LoRAFormatError(`${file}: module "${name}" ${what}`);
    }
    if (config.use_dora && !p.magnitude) throw new LoRAFormatError(`${file}: module "${name}" has no lora_magnitude_vector but adapter_config.json's "use_dora" is true (DoRA)`);
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
    const fanInFanOut = config.fan_in_fan_out && kind === 'linear';
    // DoRA: one magnitude per output row of W in [out, in] (lora_B's rows), a column of W as stored with fan_in_fan_out
    // (an embedding's is refused by the planner, by name: its length is not checked here)
    const dora = p.magnitude ? await peftMagnitude(file, name, p.magnitude, p.embedding ? 0 : aRows, fanInFanOut, load) : {};
    out.push({ name, kind, r, alpha, scale, fanInFanOut, A, B, biasDelta, ...dora });
  }
  const replacements: Replacement[] = [];
  for (const { info, name } of replace) {
    const [rows, cols] = as2d(info.shape);
    replacements.push({ name, shape: info.shape, tensor: await load(info, rows, cols) });
  }
  return new Adapter('peft', out, replacements, raw);
}

/** PEFT's lora_magnitude_vector [out] as the module's magnitude [1, out] (dora.ts: PEFT's get_weight_norm, merge_safe). */
async function peftMagnitude(file: string, name: string, t: TensorInfo, out: number, fanInFanOut: boolean, load: Load): Promise<Pick<AdapterModule, 'magnitude' | 'magnitudeAxis' | 'magnitudeEps'>> {
  if (t.shape.length !== 1) throw new LoRAFormatError(`${file}: "${t.name}" has shape ${JSON.stringify(t.shape)}; a DoRA magnitude vector is 1-d [out]`);
  const magnitude = await load(t, 1, t.shape[0]!);
  if (out > 0) checkMagnitude(file, name, magnitude, out, 'lora_magnitude_vector');
  return { magnitude, magnitudeAxis: fanInFanOut ? 'cols' : 'rows', magnitudeEps: 0 };
}

async function readKohya(reader: SafetensorsReader, load: Load): Promise<Adapter> {
  const file = reader.file;
  const modules = new Map<string, Parts>();
  for (const t of reader.tensors) {
    const m = t.name.match(KOHYA);
    if (!m) {
      const algo = /\.(hada_|lokr_|oft_|boft_|diff|diff_b|lora_mid|w_norm|b_norm)/.exec(t.name);
      const why = algo ? ` (LyCORIS's ${algo[1]!.replace(/_$/, '')} is not supported; of LyCORIS, only LoRA/LoCon factors with an optional dora_scale are)` : '';
      throw new LoRAFormatError(`${file}: "${t.name}" is not a kohya LoRA key (<module>.lora_down.weight, .lora_up.weight, .alpha, .dora_scale)${why}`);
    }
    const p = modules.get(m[1]!) ?? (modules.set(m[1]!, {}), modules.get(m[1]!)!);
    if (m[2] === 'lora_down.weight') p.B = t;
    else if (m[2] === 'lora_up.weight') p.A = t;
    else if (m[2] === 'dora_scale') p.magnitude = t;
    else p.alpha = t;
  }
  const out: AdapterModule[] = [];
  for (const [name, p] of modules) {
    if (!p.A || !p.B) throw new LoRAFormatError(`${file}: module "${name}" ${p.magnitude && !p.A && !p.B ? 'has a dora_scale but neither lora_up nor lora_down' : missing(p, ['lora_up', 'lora_down'])}`);
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
    const dora = p.magnitude ? await kohyaMagnitude(file, name, p.magnitude, A.rows, B.cols, load) : {};
    out.push({ name, kind: conv ? 'conv1x1' : 'linear', r, alpha, scale: alpha / r, fanInFanOut: false, A, B, ...dora });
  }
  return new Adapter('kohya', out, [], {});
}


/**
 * LyCORIS's dora_scale as the module's magnitude. Its axis is read from its shape, as
 * lycoris/modules/locon.py's apply_weight_decompose reads `wd_on_out`: [out, 1, …] is one norm per
 * output row (`weight.reshape(weight.shape[0], -1).norm(dim=1)`), [1, in, …] one per input column
 * (`weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)`); eps = finfo(float32).eps.
 */
async function kohyaMagnitude(file: string, name: string, t: TensorInfo, out: number, inn: number, load: Load): Promise<Pick<AdapterModule, 'magnitude' | 'magnitudeAxis' | 'magnitudeEps'>> {
  const s = t.shape;
  const ones = (from: number) => s.slice(from).every((x) => x === 1);
  const axis = s.length >= 2 && s[0] === out && ones(1) ? 'rows' : s.length >= 2 && s[0] === 1 && s[1] === inn && ones(2) ? 'cols' : undefined;
  if (!axis || (out === 1 && inn === 1)) {
    throw new LoRAFormatError(`${file}: module "${name}": "${t.name}" has shape ${JSON.stringify(s)}; LyCORIS's dora_scale is [${out}, 1] (a norm per output row) or [1, ${inn}] (per input column) for this module`);
  }
  const magnitude = await load(t, 1, axis === 'rows' ? out : inn);
  checkMagnitude(file, name, magnitude, axis === 'rows' ? out : inn, 'dora_scale');
  return { magnitude, magnitudeAxis: axis, magnitudeEps: LYCORIS_EPS };
}
