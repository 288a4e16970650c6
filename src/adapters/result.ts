/**
 * What the adapter algebra hands back: new Adapters built from new factors, and the ownership check
 * every entry point makes on the Adapters it is given.
 */
import { LoRATypeError, describeValue } from '../errors.js';
import { describe } from '../kernel/descriptor.js';
import { checkMatrix, rejectNonFinite } from '../ops/operands.js';
import { Adapter, type AdapterModule, mostCommon } from './adapter.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { createMatrix } from '../ops/create.js';
import type { Engine } from '../runtime/engine.js';
import { quantile } from './linalg.js';
import type { Truncation } from './rsvd.js';

/** The Adapter itself, once each factor is checked to be live and this instance's. */
export function checkAdapterOwner(engine: Engine, fn: string, adapter: unknown, name: string): Adapter {
  if (!(adapter instanceof Adapter)) throw new LoRATypeError(`${fn}: ${name} must be an Adapter (from lw.loadAdapter, combineAdapters, extractAdapter or resizeAdapter), got ${describeValue(adapter)}`);
  for (const m of adapter.modules) {
    checkMatrix(engine.heap, fn, `${name}'s ${m.name} A`, m.A);
    checkMatrix(engine.heap, fn, `${name}'s ${m.name} B`, m.B);
  }
  return adapter;
}

/**
 * Throws LoRANonFiniteError naming the first NaN/±Inf in any factor of the adapter (a kernel scan of
 * each A and B), e.g. "combineAdapters: item 1's l.q B[0, 3] is NaN; …". Inputs are checked with
 * this before any work, so no method can hide a NaN (ties' sign election drops it) or spread it.
 */
export function rejectNonFiniteAdapter(engine: Engine, fn: string, adapter: Adapter, name: string): void {
  for (const m of adapter.modules) {
    for (const [f, x] of [['A', m.A], ['B', m.B]] as const) {
      rejectNonFinite(engine, fn, describe(x, `${name}'s ${m.name} ${f}`), 'the adapter algebra takes finite factors only');
    }
  }
}

/**
 * Throws LoRANonFiniteError when a result module's A or B holds a NaN/±Inf (finite inputs whose
 * result overflows f32), naming the module and the factor; `why` says what to change.
 */
export function rejectNonFiniteResult(engine: Engine, fn: string, m: AdapterModule, why: string): void {
  for (const [f, x] of [['A', m.A], ['B', m.B]] as const) {
    rejectNonFinite(engine, fn, describe(x, `the result's ${m.name} ${f}`), why);
  }
}

/** An Adapter (PEFT, scale 1 per module) from new modules; r and lora_alpha are the most common rank. */
export function newAdapter(modules: AdapterModule[], base: Readonly<Record<string, unknown>> = {}): Adapter {
  const r = modules.length ? mostCommon(modules.map((m) => m.r)) : 1;
  const odd = modules.filter((m) => m.r !== r);
  return new Adapter('peft', modules, [], {
    ...base,
    peft_type: 'LORA',
    r,
    lora_alpha: r,
    use_rslora: false,
    target_modules: modules.map((m) => m.name.split('.').at(-1)!).filter((x, i, all) => all.indexOf(x) === i),
    rank_pattern: Object.fromEntries(odd.map((m) => [m.name, m.r])),
    alpha_pattern: Object.fromEntries(odd.map((m) => [m.name, m.r])),
  });
}

/** A module from a truncation: A = U·S [rows, k], B = Vᵀ [k, cols], scale 1. */
export function moduleFrom(engine: Engine, t: Truncation, like: Pick<AdapterModule, 'name' | 'kind' | 'fanInFanOut'>): AdapterModule {
  const { us, v, rank: k } = t;
  const a = new Float32Array(us.rows * k);
  for (let i = 0; i < us.rows; i++) for (let j = 0; j < k; j++) a[i * k + j] = us.data[j * us.rows + i]!;
  const b = new Float32Array(k * v.rows);
  for (let j = 0; j < k; j++) b.set(v.data.subarray(j * v.rows, (j + 1) * v.rows), j * v.rows);
  const A = createMatrix(engine, us.rows, k, a) as Matrix<DType>;
  let B: Matrix<DType>;
  try {
    B = createMatrix(engine, k, v.rows, b) as Matrix<DType>;
  } catch (e) {
    A.dispose();
    throw e;
  }
  return { name: like.name, kind: like.kind, r: k, alpha: k, scale: 1, fanInFanOut: like.fanInFanOut, A, B };
}

/**
 * PEFT's svd_clamp: the entries of U·S and Vᵀ clamped to ± the q-quantile of all of them
 * (torch.quantile's linear interpolation), in place.
 */
export function clampTruncation(t: Truncation, q: number): void {
  const { us, v, rank: k } = t;
  const all = new Float64Array((us.rows + v.rows) * k);
  all.set(us.data.subarray(0, us.rows * k));
  all.set(v.data.subarray(0, v.rows * k), us.rows * k);
  const hi = quantile(all, q);
  for (const x of [us.data, v.data]) for (let i = 0; i < x.length; i++) x[i] = Math.min(hi, Math.max(-hi, x[i]!));
}
