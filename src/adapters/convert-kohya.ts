/**
 * kohya ⇄ PEFT for language models, where the module names map one to one.
 *
 *   PEFT → kohya   module `text_model.encoder.layers.0.self_attn.q_proj` becomes
 *                  `lora_te_text_model_encoder_layers_0_self_attn_q_proj` (the prefix, then the name with
 *                  every `.` written `_`): `.lora_down.weight` = lora_A [r, in] (our B),
 *                  `.lora_up.weight` = lora_B [out, r] (our A), `.alpha` = s·r (F32, 0-d), so kohya's
 *                  alpha/r is PEFT's scale (lora_alpha/r, or lora_alpha/√r with rsLoRA; alpha_pattern too).
 *   kohya → PEFT   the underscored name is ambiguous (`q_proj` or `q.proj`?): it becomes the one base
 *                  tensor whose name, `.weight` dropped and `.` written `_`, equals it (the planner's rule,
 *                  plan.ts targetOf), so the base model's tensor names are needed; none or two is an error.
 *                  lora_alpha per module = kohya's alpha (alpha_pattern where they differ).
 * Factors are shared, never copied or rounded: the converted adapter's A and B are the source's bits.
 * Refused, as no one-to-one mapping exists: PEFT fan_in_fan_out (GPT-2 Conv1D: kohya factors are for
 * W [out, in]), embeddings, lora_bias, modules_to_save; kohya 1×1 convs into PEFT (a kohya adapter's own
 * 1×1 convs, resized or combined, are written back as [r, in, 1, 1] / [out, r, 1, 1]); a module whose base
 * tensor has another shape.
 */
import { LoRAFormatError } from '../errors.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { ST_OF_DTYPE, encodeSafetensors } from '../io/safetensors.js';
import { Adapter, type AdapterModule, refuseDora } from './adapter.js';
import { checkTargetShape, targetOf } from './plan.js';

/** The prefixes kohya's sd-scripts write: text encoders (SD 1/2: te; SDXL: te1, te2) and the U-Net. */
export const KOHYA_PREFIXES = ['lora_te', 'lora_te1', 'lora_te2', 'lora_unet'] as const;
export type KohyaPrefix = (typeof KOHYA_PREFIXES)[number];

/** The kohya module name of a PEFT module: `<prefix>_` + the name with `.` written `_`. */
export const kohyaName = (module: string, prefix: KohyaPrefix = 'lora_te'): string => `${prefix}_${module.replaceAll('.', '_')}`;

const bytesOf = (m: Matrix<DType>): Uint8Array => {
  const d = m.toArray();
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
};

/** A PEFT adapter as a kohya LoRA file (bytes): lora_down, lora_up, alpha per module (see the file comment). */
export function encodeKohyaAdapter(adapter: Adapter, opts: { prefix?: KohyaPrefix } = {}): Uint8Array {
  const fn = 'encodeKohyaAdapter';
  const prefix = opts.prefix ?? 'lora_te';
  if (!KOHYA_PREFIXES.includes(prefix)) throw new LoRAFormatError(`${fn}: the kohya prefix must be one of ${KOHYA_PREFIXES.join(', ')}, got ${String(prefix)}`);
  refuseDora(fn, adapter, 'the kohya writer does not write dora_scale');
  if (adapter.replacements.length) {
    throw new LoRAFormatError(`${fn}: the adapter replaces whole tensors (modules_to_save: ${adapter.replacements.slice(0, 3).map((r) => r.name).join(', ')}), which a kohya LoRA file cannot hold`);
  }
  const seen = new Map<string, string>();
  const tensors = adapter.modules.flatMap((m) => {
    const conv = m.kind === 'conv1x1' && adapter.format === 'kohya'; // a kohya 1×1 conv resized or combined: written back as one
    if ((m.kind !== 'linear' && !conv) || m.fanInFanOut) throw new LoRAFormatError(`${fn}: module "${m.name}" is ${m.fanInFanOut ? 'a fan_in_fan_out (Conv1D) layer' : `an ${m.kind} layer`}; kohya LoRA factors are for linear weights stored [out, in]`);
    if (m.biasDelta) throw new LoRAFormatError(`${fn}: module "${m.name}" has a lora_bias, which kohya LoRA files cannot hold`);
    const name = adapter.format === 'kohya' ? m.name : kohyaName(m.name, prefix);
    const twin = seen.get(name);
    if (twin !== undefined) throw new LoRAFormatError(`${fn}: modules "${twin}" and "${m.name}" both become the kohya name "${name}"`);
    seen.set(name, m.name);
    const alpha = Math.fround(m.scale * m.r);
    if (!Number.isFinite(alpha)) throw new LoRAFormatError(`${fn}: module "${m.name}": its alpha, scale·r = ${m.scale * m.r}, is not finite in f32`);
    return [
      { name: `${name}.lora_down.weight`, dtype: ST_OF_DTYPE[m.B.dtype], shape: conv ? [m.r, m.B.cols, 1, 1] : [m.r, m.B.cols], data: bytesOf(m.B) },
      { name: `${name}.lora_up.weight`, dtype: ST_OF_DTYPE[m.A.dtype], shape: conv ? [m.A.rows, m.r, 1, 1] : [m.A.rows, m.r], data: bytesOf(m.A) },
      { name: `${name}.alpha`, dtype: 'F32', shape: [], data: new Float32Array([alpha]) },
    ];
  });
  return encodeSafetensors(tensors, { ss_network_module: 'networks.lora' });
}

/**
 * A kohya adapter as a PEFT one, named by the base model's tensors (`names`; `prefix` as in mergeAdapter:
 * one the base names carry and the kohya names do not). The result shares the source's factors: dispose
 * only the source.
 */
export function kohyaToPeft(adapter: Adapter, names: ReadonlySet<string>, opts: { prefix?: string; shapeOf?: (name: string) => readonly number[] } = {}): Adapter {
  const fn = 'kohyaToPeft';
  if (adapter.format !== 'kohya') throw new LoRAFormatError(`${fn}: the adapter is ${adapter.format}, not kohya`);
  refuseDora(fn, adapter, 'the PEFT writer does not write DoRA adapters');
  const byTarget = new Map<string, string>();
  const modules: AdapterModule[] = adapter.modules.map((m) => {
    if (m.kind !== 'linear') throw new LoRAFormatError(`${fn}: kohya module "${m.name}" is a 1×1 conv; only linear layers map to PEFT Linear modules`);
    const target = targetOf(fn, m, 'kohya', names, opts.prefix ?? '');
    const shape = opts.shapeOf?.(target);
    if (shape) {
      if (shape.length !== 2) throw new LoRAFormatError(`${fn}: kohya module "${m.name}" maps to "${target}", which is ${shape.length}-d [${shape.join(', ')}], not a linear weight`);
      checkTargetShape(fn, m, target, shape as [number, number]);
    }
    const twin = byTarget.get(target);
    if (twin !== undefined) throw new LoRAFormatError(`${fn}: kohya modules "${twin}" and "${m.name}" both map to "${target}"`);
    byTarget.set(target, m.name);
    return { ...m, name: target.slice(0, -'.weight'.length) };
  });
  return new Adapter('peft', modules, [], {});
}
