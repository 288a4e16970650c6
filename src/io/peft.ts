/**
 * PEFT's adapter format, as PEFT's own source defines it: adapter_config.json's fields that change
 * the math, the key names of LoRA factors, and which module each config pattern applies to.
 */
import { LoRAEnvironmentError, LoRAFormatError, describeValue } from '../errors.js';
import { strictJsonProblem } from './safetensors.js';

/**
 * One `rank_pattern` / `alpha_pattern` entry, compiled. PEFT (utils/other.py, get_pattern_key) takes the
 * first key, in the config's order, for which `re.match(rf"(.*\.)?({key})$", module)` matches; the group
 * matters for keys with `|`. A hostile key such as `(a+)+b` must not stall a load, so:
 *   - a plain name matches as itself or as a dotted suffix;
 *   - a key with at most one quantifier, on a single character, class or escape, and no quantified
 *     group, backreference or lookaround, runs in JavaScript's engine: its backtracking is bounded by
 *     (dots in the name) × (name length);
 *   - any other key runs in RE2 (re2js, loaded only then), in time linear in the name; a key RE2 cannot
 *     parse (lookarounds, backreferences) or no regex at all is a LoRAFormatError.
 */
export interface PatternEntry<T> {
  readonly key: string;
  readonly value: T;
  readonly test: (module: string) => boolean;
}

const PLAIN_KEY = /^[A-Za-z0-9_-]+$/;

/** True when `key` is safe for a backtracking engine (see PatternEntry). */
export function boundedKey(key: string): boolean {
  if (/\[1-9kbB]|\(\?[=!<]/.test(key)) return false; // backreferences, word boundaries, lookarounds
  let quantifiers = 0;
  let prev: 'atom' | 'group' | 'none' = 'none';
  for (let i = 0; i < key.length; i++) {
    const c = key[i]!;
    if (c === '\\') {
      i++;
      prev = 'atom';
    } else if (c === '[') {
      const end = key.indexOf(']', i + 2);
      if (end < 0) return false;
      i = end;
      prev = 'atom';
    } else if (c === '*' || c === '+' || c === '?' || c === '{') {
      if (prev !== 'atom' || ++quantifiers > 1) return false;
      if (c === '{') i = key.indexOf('}', i) < 0 ? key.length : key.indexOf('}', i);
      if (key[i + 1] === '?' || key[i + 1] === '+') i++;
      prev = 'none';
    } else if (c === ')') prev = 'group';
    else if (c === '(' || c === '|') prev = 'none';
    else prev = 'atom';
  }
  return true;
}

/** re2js, loaded once and only for keys the bounded engine may not run. */
let re2: typeof import('re2js') | undefined;

/** Loads the RE2 matcher if any rank_pattern/alpha_pattern key of `configIn` needs it. */
export async function preparePatterns(configIn: unknown): Promise<void> {
  if (re2) return;
  let c: unknown = configIn;
  if (typeof c === 'string') {
    try {
      c = JSON.parse(c);
    } catch {
      return; // readPeftConfig says why
    }
  }
  if (typeof c !== 'object' || c === null) return;
  const keys = ['rank_pattern', 'alpha_pattern'].flatMap((f) => {
    const v = (c as Record<string, unknown>)[f];
    return typeof v === 'object' && v !== null ? Object.keys(v) : [];
  });
  const hard = keys.find((k) => !PLAIN_KEY.test(k) && !boundedKey(k));
  if (hard === undefined) return;
  try {
    re2 = await import('re2js');
  } catch (e) {
    throw new LoRAEnvironmentError(
      `adapter_config.json: the pattern key ${JSON.stringify(hard)} needs the RE2 matcher (the re2js package), which could not be loaded here (${(e as Error).message}); load lora-wasm through a bundler or in Node`,
    );
  }
}

export function compilePattern<T>(field: string, key: string, value: T): PatternEntry<T> {
  if (PLAIN_KEY.test(key)) return { key, value, test: (m) => m === key || m.endsWith(`.${key}`) };
  const bad = (why: string) => new LoRAFormatError(`adapter_config.json: "${field}" key ${JSON.stringify(key)} is not a regular expression lora-wasm can match (${why})`);
  if (boundedKey(key)) {
    let re: RegExp;
    try {
      re = new RegExp(`^(?:.*\\.)?(?:${key})$`, 'u');
    } catch (e) {
      throw bad((e as Error).message);
    }
    return { key, value, test: (m) => re.test(m) };
  }
  if (!re2) throw bad('the RE2 matcher was not loaded: call preparePatterns first');
  let r: InstanceType<typeof import('re2js').RE2JS>;
  try {
    r = re2.RE2JS.compile(`(.*\\.)?(${key})`);
  } catch (e) {
    throw bad((e as Error).message);
  }
  return { key, value, test: (m) => r.matches(m) };
}

/** The value of the first entry whose key matches `module`, else `dflt` (PEFT's get_pattern_key). */
export function patternValue<T>(patterns: readonly PatternEntry<T>[], module: string, dflt: T): T {
  for (const p of patterns) if (p.test(module)) return p.value;
  return dflt;
}

/**
 * The heads a PEFT task type adds to modules_to_save by itself (peft_model.py:
 * PeftModelForSequenceClassification and PeftModelForTokenClassification add ["classifier", "score"],
 * PeftModelForQuestionAnswering adds ["qa_outputs"]), so a GPT-2 SEQ_CLS adapter saves `score.weight`
 * with `modules_to_save: null`.
 */
export const TASK_MODULES_TO_SAVE: Readonly<Record<string, readonly string[]>> = {
  SEQ_CLS: ['classifier', 'score'],
  TOKEN_CLS: ['classifier', 'score'],
  QUESTION_ANS: ['qa_outputs'],
};

/** The adapter_config.json fields that change the math, checked. */
export interface PeftConfig {
  r: number;
  lora_alpha: number;
  use_rslora: boolean;
  fan_in_fan_out: boolean;
  rank_pattern: PatternEntry<number>[];
  alpha_pattern: PatternEntry<number>[];
  /** modules_to_save as configured, plus the heads the task type adds (TASK_MODULES_TO_SAVE). */
  modules_to_save: string[];
  bias: 'none' | 'all' | 'lora_only';
  lora_bias: boolean;
  /** DoRA: every LoRA module carries a `lora_magnitude_vector` (adapters/dora.ts). */
  use_dora: boolean;
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
    const problem = strictJsonProblem(configIn as string); // e.g. "lora_alpha" twice: JSON.parse keeps the last silently
    if (problem) throw new LoRAFormatError(`${where}: ${problem}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new LoRAFormatError(`${where}: must be a JSON object, got ${describeValue(raw)}`);
  const c = raw as Record<string, unknown>;
  const bad = (key: string, what: string): LoRAFormatError => new LoRAFormatError(`${where}: "${key}" ${what}`);
  if (c.peft_type !== 'LORA') throw bad('peft_type', `is ${JSON.stringify(c.peft_type)}; only LORA adapters are supported`);
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
  const pattern = (key: string, isRank: boolean): PatternEntry<number>[] => {
    const v = c[key] ?? {};
    if (typeof v !== 'object' || Array.isArray(v)) throw bad(key, `must be an object of numbers, got ${describeValue(v)}`);
    return Object.entries(v as object).map(([k, x]) => {
      const ok = isRank ? Number.isSafeInteger(x) && (x as number) >= 1 : typeof x === 'number' && Number.isFinite(x);
      if (!ok) throw bad(key, `${JSON.stringify(k)} must be ${isRank ? 'a positive integer' : 'a number'}, got ${describeValue(x)}`);
      return compilePattern(key, k, x as number);
    });
  };
  const bias = c.bias ?? 'none';
  if (bias !== 'none' && bias !== 'all' && bias !== 'lora_only') throw bad('bias', `must be "none", "all" or "lora_only", got ${describeValue(bias)}`);
  const mts = c.modules_to_save ?? [];
  if (!Array.isArray(mts) || !mts.every((x) => typeof x === 'string')) throw bad('modules_to_save', `must be a list of names, got ${describeValue(mts)}`);
  const task = typeof c.task_type === 'string' ? c.task_type : '';
  const saved = [...(mts as string[]), ...(Object.hasOwn(TASK_MODULES_TO_SAVE, task) ? TASK_MODULES_TO_SAVE[task]! : [])];
  return {
    raw: c,
    config: {
      r: int('r'), lora_alpha: num('lora_alpha'), use_rslora: flag('use_rslora'), fan_in_fan_out: flag('fan_in_fan_out'),
      rank_pattern: pattern('rank_pattern', true), alpha_pattern: pattern('alpha_pattern', false), modules_to_save: saved, bias, lora_bias: flag('lora_bias'),
      use_dora: flag('use_dora'),
    },
  };
}

export const PEFT_PREFIX = 'base_model.model.';
export const PEFT_FACTOR = /^(.+)\.(lora_A|lora_B)(?:\.[A-Za-z0-9_-]+)?\.(weight|bias)$/;
/**
 * DoRA's magnitude: PEFT saves `<module>.lora_magnitude_vector` (tuners/lora/model.py, _get_adapter_state_dict strips the
 * DoraLinearLayer's `.weight`); `.weight` and an adapter-name infix (`.default`) are accepted as with the factors.
 */
export const PEFT_MAGNITUDE = /^(.+)\.lora_magnitude_vector(?:\.(?!weight$)[A-Za-z0-9_-]+)?(?:\.weight)?$/;
export const PEFT_EMBEDDING = /^(.+)\.(lora_embedding_A|lora_embedding_B)(?:\.[A-Za-z0-9_-]+)?$/;
