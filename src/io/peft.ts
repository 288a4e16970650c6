/**
 * PEFT's adapter format, as PEFT's own source defines it: adapter_config.json's fields that change
 * the math, the key names of LoRA factors, and which module each config pattern applies to.
 */
import { LoRAFormatError, describeValue } from '../errors.js';

/** PEFT's pattern lookup: the first key k with /^(.*\.)?k$/ matching the module name. */
export function patternValue<T>(patterns: Record<string, T> | undefined, module: string, dflt: T): T {
  for (const [k, v] of Object.entries(patterns ?? {})) if (new RegExp(`^(.*\\.)?${k}$`).test(module)) return v;
  return dflt;
}

/** The adapter_config.json fields that change the math, checked. */
export interface PeftConfig {
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

export const PEFT_PREFIX = 'base_model.model.';
export const PEFT_FACTOR = /^(.+)\.(lora_A|lora_B)(?:\.[A-Za-z0-9_-]+)?\.(weight|bias)$/;
export const PEFT_EMBEDDING = /^(.+)\.(lora_embedding_A|lora_embedding_B)(?:\.[A-Za-z0-9_-]+)?$/;
