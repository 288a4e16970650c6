/**
 * The kernel layer's scheduler: runs kernel calls, split over threads when the work is worth it.
 *
 * A call is split into calls over row (or column, or element) ranges; the first range runs on the
 * calling thread, the rest on the worker pool (src/pool/). Every output element is computed by the
 * same operations whatever the split, so results are bit-identical for any thread count.
 * Calls are KernelCall tuples (kernels.ts): a wrong kernel name or argument count does not compile.
 */
import type { WorkerPool } from '../pool/pool.js';
import { trapped } from './guards.js';
import { type KernelCall, type Kernels, invoke } from './kernels.js';

/**
 * Work below which a call stays on the calling thread, per thread it would use.
 * Measured by `npm run bench -- --only=threads` (the notes of its threshold
 * step: the same call forced onto 2 threads against 1, paired), in two runs on
 * this shared 2-core machine: a pool round trip costs 3–6 µs while the worker
 * is awake; a merge of 128×128 r=8 (131 k multiply-adds) lost or broke even,
 * 512×512 r=8 (2 M) gained 1.44× in one run and lost 6 % in the other, and
 * 1024×1024 r=8 (8 M) gained 1.5–1.6× in both; an f32 → f16 conversion
 * touching 24 KB lost and one touching 96 KB gained 1.3–1.4× in both.
 *   MIN_MACS_PER_THREAD: multiply-adds, for the rank-r update and GEMM (so a
 *     512×512 r=8 merge stays whole and 1024×1024 r=8 is split);
 *   MIN_BYTES_PER_THREAD: bytes read and written, for the streaming kernels
 *     (scans, conversion, ReLU, optimizer steps).
 */
export const MIN_MACS_PER_THREAD = 2 ** 20;
export const MIN_BYTES_PER_THREAD = 2 ** 16;
/**
 * @internal The thresholds in force. Tests lower them to 1 so that even small
 * shapes are split over every thread (the split, not the size, is under test).
 */
export const splitPolicy = { minMacs: MIN_MACS_PER_THREAD, minBytes: MIN_BYTES_PER_THREAD };

/** Element ranges of streaming kernels start at multiples of this, so SIMD lanes and scalar tails see the same elements as in one call. */
const ELEMENT_ALIGN = 64;

export type Range = [start: number, end: number];

/** [start, end) ranges: `parts` nearly equal runs of whole `align` blocks covering [0, total). */
export function splitRange(total: number, align: number, parts: number): Range[] {
  const blocks = Math.ceil(total / align);
  const n = Math.max(1, Math.min(parts, blocks));
  const out: Range[] = [];
  for (let t = 0; t < n; t++) {
    const b0 = Math.floor((blocks * t) / n);
    const b1 = Math.floor((blocks * (t + 1)) / n);
    out.push([b0 * align, Math.min(total, b1 * align)]);
  }
  return out;
}

/** The ranges of a split call and each range's result, in order. */
export interface Split {
  ranges: Range[];
  results: number[];
}

/** The first index any range found (results are range-relative, -1 for none), or -1. */
export function firstIndex({ ranges, results }: Split): number {
  const t = results.findIndex((i) => i >= 0);
  return t < 0 ? -1 : ranges[t]![0] + results[t]!;
}

export class Scheduler {
  readonly #k: Kernels;
  #pool: WorkerPool | undefined;

  constructor(kernels: Kernels, pool?: WorkerPool) {
    this.#k = kernels;
    this.#pool = pool;
  }

  /** Threads a call may use now: the calling thread plus the workers that are ready. */
  get threads(): number {
    return 1 + (this.#pool?.available ?? 0);
  }

  get pool(): WorkerPool | undefined {
    return this.#pool;
  }

  endPool(): void {
    this.#pool?.dispose();
    this.#pool = undefined;
  }

  /** How many threads a call with `work` units should use (min per thread `unit`), at most `maxParts`. */
  parts(work: number, unit: number, maxParts: number): number {
    const worth = Math.min(Math.floor(work / unit), maxParts);
    // below the threshold the pool is not consulted at all (asking it checks each worker is alive)
    if (this.#pool === undefined || worth < 2) return 1;
    return Math.min(this.threads, worth);
  }

  /**
   * Kernel code on this thread, calling the exports directly (typed by the Kernels interface; a
   * direct call also takes V8's fast JS-to-wasm path, which a spread call does not).
   */
  direct<T>(fn: string, body: (k: Kernels) => T): T {
    try {
      return body(this.#k);
    } catch (e) {
      throw trapped(fn, e);
    }
  }

  /** One call on this thread. */
  one(fn: string, call: KernelCall): number {
    try {
      return invoke(this.#k, call);
    } catch (e) {
      throw trapped(fn, e);
    }
  }

  /**
   * Runs the calls, calls[0] on this thread and the others on workers, and returns their results
   * in order. One call runs directly. `parts` names each call's share in a dying worker's error.
   */
  run(fn: string, calls: readonly KernelCall[], parts?: readonly string[]): number[] {
    const own = (c: KernelCall): number => this.one(fn, c);
    if (calls.length === 1 || this.#pool === undefined) return calls.map(own);
    return this.#pool.run(fn, calls, own, parts);
  }

  /**
   * A streaming kernel over n elements that read and write `bytesPerElement` bytes in all: split
   * into ranges of whole ELEMENT_ALIGN blocks (MIN_BYTES_PER_THREAD each); job(e0, count) is the
   * call for elements [e0, e0 + count).
   */
  stream(fn: string, n: number, bytesPerElement: number, job: (e0: number, count: number) => KernelCall): Split {
    const ranges = splitRange(n, ELEMENT_ALIGN, this.parts(n * bytesPerElement, splitPolicy.minBytes, Infinity));
    const calls: KernelCall[] = [];
    for (const [e0, e1] of ranges) calls.push(job(e0, e1 - e0));
    return { ranges, results: this.run(fn, calls) };
  }
}
