/**
 * Shared test helpers: the instance under test, a seeded RNG, random data,
 * bitwise and typed-error assertions. The float64 references and the
 * tolerance live in reference.ts (shared with bench/ and examples/).
 */
import * as assert from 'uvu/assert';
import { type Build, type LoRAWasm, init, seededRandom } from '../src/index.js';

/**
 * The build this run tests (what lw.build reports): LORA_BUILD=baseline|relaxed in Node
 * (scripts/test.mjs runs both), or globalThis.LORA_BUILD in the browser (test/browser/entry.ts, from
 * the page's ?simd=).
 */
export const BUILD = ((globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env.LORA_BUILD ??
  (globalThis as { LORA_BUILD?: string }).LORA_BUILD ??
  'baseline') as Build;

let instance: Promise<LoRAWasm> | undefined;
/** The instance under test; fails loudly if the requested build did not load. */
export async function lwUnderTest(): Promise<LoRAWasm> {
  instance ??= init({ build: BUILD });
  const lw = await instance;
  assert.is(lw.build, BUILD, `requested the ${BUILD} build`);
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

/**
 * Asserts the promise (or async function) rejects with an instance of `cls` whose message contains
 * every `parts`. uvu's `assert.throws` / `assert.not.throws` do not await: use this for async calls.
 */
export async function assertRejectsTyped(
  work: Promise<unknown> | (() => Promise<unknown>), cls: abstract new (...args: never[]) => Error, parts: string[] = [],
): Promise<Error> {
  try {
    await (typeof work === 'function' ? work() : work);
  } catch (e) {
    if (!(e instanceof cls)) assert.unreachable(`expected ${cls.name}, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
    for (const p of parts) assert.ok((e as Error).message.includes(p), `message "${(e as Error).message}" should mention "${p}"`);
    return e as Error;
  }
  assert.unreachable(`expected ${cls.name} but the promise resolved`);
  throw new Error('unreachable');
}

/** Awaits `work` and fails the test with its error if it rejects (uvu's `assert.not.throws` does not await). */
export async function assertResolves<T>(work: Promise<T> | (() => Promise<T>), label: string): Promise<T> {
  try {
    return await (typeof work === 'function' ? work() : work);
  } catch (e) {
    assert.unreachable(`${label}: expected to succeed, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
    throw e;
  }
}
