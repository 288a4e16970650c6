/**
 * Kernel scratch: packed panels, decoded half factors, edge-tile spills, small staging.
 *
 * One block, owned by the kernel layer, grown to the largest need and then reused, so a training
 * loop allocates nothing per step. A call that splits over threads lays the block out as shared
 * regions (read by every thread) followed by one copy of the per-thread regions per thread; no two
 * threads ever write the same scratch byte.
 */
import type { Block, WasmHeap } from '../memory/heap.js';

/** Every scratch region starts on a 64-byte boundary (a cache line). */
export const align64 = (n: number): number => Math.ceil(n / 64) * 64;

/** Pointers for the regions of a layout, one per size given (tuples keep their length). */
type Pointers<S extends readonly number[]> = { -readonly [I in keyof S]: number };

export interface ScratchLayout<S extends readonly number[], T extends readonly number[]> {
  /** Pointers of the shared regions, in order. */
  shared: Pointers<S>;
  /** threads[t]: pointers of thread t's regions, in order. */
  threads: Pointers<T>[];
}

export class Scratch {
  readonly #heap: WasmHeap;
  #block: Block | undefined;

  constructor(heap: WasmHeap) {
    this.#heap = heap;
  }

  /** `bytes` of 64-aligned scratch (contents undefined), valid until the next kernel-layer call. */
  reserve(fn: string, bytes: number): number {
    const s = this.#block;
    if (s && this.#heap.isLive(s) && s.size >= bytes) return s.ptr;
    if (s && this.#heap.isLive(s)) this.#heap.free(s);
    this.#block = undefined;
    this.#block = this.#heap.alloc(Math.max(bytes, 4096), `${fn} (scratch)`, true);
    return this.#block.ptr;
  }

  /**
   * One reservation laid out as
   *   [shared[0] | shared[1] | … | thread 0: perThread[0] | perThread[1] | … | thread 1: … ]
   * with every region's size rounded up to 64 bytes (a region of 0 bytes takes no room).
   */
  layout<S extends readonly number[] | [], T extends readonly number[] | []>(
    fn: string, shared: S, perThread: T, threads: number,
  ): ScratchLayout<S, T> {
    // plain loops: this runs on every kernel-layer call, small ones included
    let threadBytes = 0;
    for (const b of perThread) threadBytes += align64(b);
    let sharedBytes = 0;
    for (const b of shared) sharedBytes += align64(b);
    let p = this.reserve(fn, sharedBytes + threads * threadBytes);
    const sharedPtrs: number[] = [];
    for (const b of shared) {
      sharedPtrs.push(p);
      p += align64(b);
    }
    const threadPtrs: number[][] = [];
    for (let t = 0; t < threads; t++) {
      const ptrs: number[] = [];
      for (const b of perThread) {
        ptrs.push(p);
        p += align64(b);
      }
      threadPtrs.push(ptrs);
    }
    return { shared: sharedPtrs as Pointers<S>, threads: threadPtrs as Pointers<T>[] };
  }

  /** Frees the block (the next call that needs scratch allocates it again). */
  release(): void {
    if (this.#block && this.#heap.isLive(this.#block)) this.#heap.free(this.#block);
    this.#block = undefined;
  }
}
