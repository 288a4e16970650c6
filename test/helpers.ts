/**
 * Shared test helpers: the instance under test, a seeded RNG, float64
 * references and the tolerance they are compared with.
 */
import * as assert from 'uvu/assert';
import { type Build, type LoRAWasm, init, seededRandom } from '../src/index.js';

/**
 * The flavour this run tests: LORA_SIMD=baseline|relaxed in Node (scripts/test.mjs runs both), or
 * globalThis.LORA_SIMD in the browser (test/browser/entry.ts, from the page's ?simd=).
 */
export const FLAVOUR = ((globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env.LORA_SIMD ??
  (globalThis as { LORA_SIMD?: string }).LORA_SIMD ??
  'baseline') as Build;

let instance: Promise<LoRAWasm> | undefined;
/** The instance under test; fails loudly if the requested flavour did not load. */
export async function lwUnderTest(): Promise<LoRAWasm> {
  instance ??= init({ simd: FLAVOUR });
  const lw = await instance;
  assert.is(lw.build, FLAVOUR, `requested the ${FLAVOUR} build`);
  return lw;
}

/** Seeded uniform [0, 1) generator (the package's own seededRandom). */
export const rng = seededRandom;

export const randInt = (r: () => number, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));

/** Uniform values in [-amp, amp), as f32. */
export function randomF32(r: () => number, n: number, amp = 1): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (2 * r() - 1) * amp;
  return x;
}

export interface Reference {
  /** W0 + s·A·B in float64 (or s·A·B when w0 is undefined). */
  value: Float64Array;
  /** |W0| + |s|·Σ_k |A[i,k]·B[k,j]|: the magnitude rounding errors scale with. */
  mag: Float64Array;
}

/** float64 reference for out = [w0 +] s·A·B with A: [dOut, r], B: [r, dIn]. */
export function reference(
  w0: Float32Array | undefined, a: Float32Array, b: Float32Array, dOut: number, r: number, dIn: number, s: number,
): Reference {
  const value = new Float64Array(dOut * dIn);
  const mag = new Float64Array(dOut * dIn);
  for (let i = 0; i < dOut; i++) {
    for (let j = 0; j < dIn; j++) {
      let acc = 0;
      let m = 0;
      for (let k = 0; k < r; k++) {
        const p = a[i * r + k]! * b[k * dIn + j]!;
        acc += p;
        m += Math.abs(p);
      }
      const w = w0 ? w0[i * dIn + j]! : 0;
      value[i * dIn + j] = w + s * acc;
      mag[i * dIn + j] = Math.abs(w) + Math.abs(s) * m;
    }
  }
  return { value, mag };
}

export const U = 2 ** -24; // unit roundoff of f32

/**
 * Worst-case bound for an f32 result of W0 + s·Σ_k A·B summed over k terms:
 * (k + 4)·u·mag, from the standard recursive-summation bound γ_{k+1} plus the
 * rounding of s·A and of the final add. Rigorous, not tuned: a kernel that is
 * wrong by a single term of O(1) exceeds it.
 */
export function assertWithinBound(got: Float32Array, ref: Reference, k: number, label: string): void {
  const c = (k + 4) * U;
  let worst = 0;
  let at = -1;
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs(got[i]! - ref.value[i]!);
    const tol = c * ref.mag[i]! + 2 ** -140;
    if (!(err <= tol)) {
      // NaN compares false and is reported too
      if (at < 0 || err / tol > worst) {
        worst = err / tol;
        at = i;
      }
    }
  }
  if (at >= 0) {
    assert.unreachable(
      `${label}: element ${at} is ${got[at]} but the float64 reference is ${ref.value[at]} ` +
        `(error ${Math.abs(got[at]! - ref.value[at]!)} > bound ${c * ref.mag[at]!}, ${worst.toFixed(1)}× over)`,
    );
  }
}

/** Exact bitwise equality of two f32 arrays, reporting the first difference. */
export function assertBitIdentical(got: Float32Array, want: Float32Array, label: string): void {
  assert.is(got.length, want.length, `${label}: length`);
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const w = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < g.length; i++) {
    if (g[i] !== w[i]) assert.unreachable(`${label}: element ${i} differs: ${got[i]} vs ${want[i]}`);
  }
}

/** Asserts `fn` throws an instance of `cls` whose message contains every `parts`. */
export function assertThrowsTyped(fn: () => unknown, cls: abstract new (...args: never[]) => Error, parts: string[] = []): Error {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof cls)) {
      assert.unreachable(`expected ${cls.name}, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
    }
    for (const p of parts) assert.ok((e as Error).message.includes(p), `message "${(e as Error).message}" should mention "${p}"`);
    return e as Error;
  }
  assert.unreachable(`expected ${cls.name} but nothing was thrown`);
  throw new Error('unreachable');
}
