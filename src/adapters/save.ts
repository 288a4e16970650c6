/**
 * Saving adapters as PEFT adapters: `adapter_model.safetensors` with PEFT's key names, shapes and
 * dtypes, and an `adapter_config.json` that PEFT's LoraConfig accepts. From LoRALinear layers (keyed by
 * their module names in the base model) or from an Adapter read by lw.loadAdapter (PEFT ones: the
 * factors are turned back to PEFT's layout, undoing the fan_in_fan_out and embedding transposes).
 *
 *   base_model.model.<module>.lora_A.weight  [r, in]   = our B
 *   base_model.model.<module>.lora_B.weight  [out, r]  = our A
 */
import { LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { LoRALinear } from '../nn/lora-linear.js';
import { ST_OF_DTYPE, encodeSafetensors } from '../io/safetensors.js';
import { transpose } from '../memory/transpose.js';
import { Adapter, mostCommon, refuseDora } from './adapter.js';

export interface SaveAdapterOptions {
  /** `base_model_name_or_path`, e.g. 'distilbert-base-uncased'. */
  baseModel: string;
  /** PEFT task type, e.g. 'CAUSAL_LM', 'SEQ_CLS'. Default null. */
  taskType?: string | null;
}


function bytesOf(m: Matrix<DType>, transposed: boolean): Uint8Array {
  const data = transposed ? transpose(m.toArray(), m.rows, m.cols) : m.toArray();
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

interface Entry {
  module: string;
  r: number;
  alpha: number;
  rslora: boolean;
  tensors: { name: string; dtype: string; shape: number[]; data: Uint8Array }[];
}

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export function saveAdapter(source: unknown, opts: SaveAdapterOptions): { config: Record<string, unknown>; weights: Uint8Array } {
  const fn = 'saveAdapter';
  if (typeof opts !== 'object' || opts === null || typeof opts.baseModel !== 'string') {
    throw new LoRATypeError(`${fn}: options must include baseModel (the base model's name or path), got ${describeValue(opts)}`);
  }
  const entries: Entry[] = [];
  const extra: Entry['tensors'] = [];
  let fanInFanOut = false;
  const key = (module: string, part: string): string => `base_model.model.${module}.${part}`;
  if (source instanceof Adapter) {
    if (source.format !== 'peft') throw new LoRATypeError(`${fn}: a ${source.format} adapter has no PEFT module names to save under`);
    refuseDora(fn, source, 'lora-wasm does not write DoRA adapters');
    fanInFanOut = source.modules.some((m) => m.fanInFanOut);
    for (const m of source.modules) {
      const t = m.kind === 'embedding' || m.fanInFanOut;
      const [a, b] = m.kind === 'embedding' ? ['lora_embedding_A', 'lora_embedding_B'] : ['lora_A.weight', 'lora_B.weight'];
      const tensors = [
        { name: key(m.name, a), dtype: ST_OF_DTYPE[m.B.dtype], shape: t ? [m.r, m.A.rows] : [m.r, m.B.cols], data: bytesOf(t ? m.A : m.B, t) },
        { name: key(m.name, b), dtype: ST_OF_DTYPE[m.A.dtype], shape: t ? [m.B.cols, m.r] : [m.A.rows, m.r], data: bytesOf(t ? m.B : m.A, t) },
      ];
      if (m.biasDelta) tensors.push({ name: key(m.name, 'lora_B.bias'), dtype: ST_OF_DTYPE[m.biasDelta.dtype], shape: [m.biasDelta.cols], data: bytesOf(m.biasDelta, false) });
      entries.push({ module: m.name, r: m.r, alpha: m.alpha, rslora: Math.abs(m.scale - m.alpha / Math.sqrt(m.r)) < Math.abs(m.scale - m.alpha / m.r), tensors });
    }
    for (const r of source.replacements) extra.push({ name: `base_model.model.${r.name}`, dtype: ST_OF_DTYPE[r.tensor.dtype], shape: [...r.shape], data: bytesOf(r.tensor, false) });
  } else if (typeof source === 'object' && source !== null && !Array.isArray(source)) {
    for (const [module, layer] of Object.entries(source)) {
      if (!(layer instanceof LoRALinear)) throw new LoRATypeError(`${fn}: layers["${module}"] must be a LoRALinear, got ${describeValue(layer)}`);
      entries.push({
        module, r: layer.r, alpha: layer.alpha, rslora: layer.rslora,
        tensors: [
          { name: key(module, 'lora_A.weight'), dtype: 'F32', shape: [layer.r, layer.dIn], data: bytesOf(layer.B, false) },
          { name: key(module, 'lora_B.weight'), dtype: 'F32', shape: [layer.dOut, layer.r], data: bytesOf(layer.A, false) },
        ],
      });
    }
  } else {
    throw new LoRATypeError(`${fn}: source must be an Adapter or { moduleName: LoRALinear }, got ${describeValue(source)}`);
  }
  if (entries.length === 0) throw new LoRAShapeError(`${fn}: there is nothing to save (no modules)`);
  const rslora = entries[0]!.rslora;
  if (entries.some((e) => e.rslora !== rslora)) throw new LoRATypeError(`${fn}: PEFT cannot mix rsLoRA and plain scaling in one adapter`);
  const r = mostCommon(entries.map((e) => e.r));
  const alpha = mostCommon(entries.map((e) => e.alpha));
  const config: Record<string, unknown> = {
    peft_type: 'LORA',
    task_type: opts.taskType ?? null,
    base_model_name_or_path: opts.baseModel,
    r,
    lora_alpha: alpha,
    rank_pattern: Object.fromEntries(entries.filter((e) => e.r !== r).map((e) => [escape(e.module), e.r])),
    alpha_pattern: Object.fromEntries(entries.filter((e) => e.alpha !== alpha).map((e) => [escape(e.module), e.alpha])),
    target_modules: [...new Set(entries.map((e) => e.module.split('.').at(-1)!))].sort(),
    use_rslora: rslora,
    fan_in_fan_out: fanInFanOut,
    bias: 'none',
    lora_bias: entries.some((e) => e.tensors.length > 2),
    lora_dropout: 0,
    modules_to_save: extra.length ? [...new Set(extra.map((t) => t.name.replace(/^base_model\.model\./, '').replace(/\.[^.]+$/, '')))] : null,
    init_lora_weights: true,
    use_dora: false,
    inference_mode: true,
    library: 'lora-wasm',
  };
  return { config, weights: encodeSafetensors([...entries.flatMap((e) => e.tensors), ...extra], { format: 'pt' }) };
}
