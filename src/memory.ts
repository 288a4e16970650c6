/**
 * The wasm heap: the ONLY module that allocates in, grows, or makes views on
 * wasm memory.
 *
 * Memory is created here and imported by the module (`env.memory`), so the
 * kernels only ever see byte pointers and sizes. JS owns allocation: blocks
 * are 64-byte aligned (a cache line, and 16 for v128), handed out best-fit
 * from a coalescing free list, or bumped from the top of the heap. Freeing the
 * topmost block lowers the top again, so alloc/free cycles never grow memory.
 *
 * Views: after memory.grow a non-shared ArrayBuffer is detached (length 0).
 * `f32()` therefore re-derives a view whenever `view.buffer !== memory.buffer`.
 */
import { LoRAError, LoRAMemoryError } from './errors.js';

export const PAGE_BYTES = 65536;
/** wasm32 ceiling: 65536 pages = 4 GiB. Twin: "maximumMemory" in asconfig.json. */
export const MAX_PAGES = 65536;
export const ALIGN = 64;

interface Block {
  ptr: number;
  size: number;
}

export interface MemoryStats {
  /** Current size of wasm memory in bytes (never shrinks). */
  memoryBytes: number;
  /** Upper bound this heap may grow to. */
  maxMemoryBytes: number;
  /** Bytes held by live allocations (matrices and in-flight scratch). */
  liveBytes: number;
  /** Number of live allocations. */
  liveBlocks: number;
}

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

export class WasmHeap {
  readonly memory: WebAssembly.Memory;
  readonly maxBytes: number;
  private readonly base: number;
  private top: number;
  /** Bytes at or above this offset were never handed out, so they still hold wasm's initial zeros. */
  private pristine: number;
  /** Free blocks below `top`, sorted by ptr, never adjacent (coalesced). */
  private readonly freeBlocks: Block[] = [];
  private readonly live = new Map<number, number>();
  private liveBytes = 0;

  /**
   * @param memory the memory the module imports
   * @param heapBase first byte the module does not use for static data
   */
  constructor(memory: WebAssembly.Memory, heapBase: number, maxBytes: number) {
    this.memory = memory;
    this.maxBytes = maxBytes;
    this.base = alignUp(Math.max(heapBase, ALIGN), ALIGN);
    this.top = this.base;
    this.pristine = this.base;
  }

  /**
   * Allocates `bytes` (rounded up to 64) and returns the byte pointer.
   * Throws LoRAMemoryError, with the heap unchanged, when memory cannot grow.
   * Contents are unspecified (a reused block keeps old bytes).
   */
  alloc(bytes: number, what: string): number {
    const size = alignUp(Math.max(bytes, 1), ALIGN);
    let best = -1;
    for (let i = 0; i < this.freeBlocks.length; i++) {
      const b = this.freeBlocks[i]!;
      if (b.size >= size && (best < 0 || b.size < this.freeBlocks[best]!.size)) best = i;
    }
    let ptr: number;
    if (best >= 0) {
      const b = this.freeBlocks[best]!;
      ptr = b.ptr;
      if (b.size === size) this.freeBlocks.splice(best, 1);
      else {
        b.ptr += size;
        b.size -= size;
      }
    } else {
      ptr = this.top;
      this.ensure(ptr + size, bytes, what);
      this.top = ptr + size;
    }

    this.live.set(ptr, size);
    this.liveBytes += size;
    this.pristine = Math.max(this.pristine, ptr + size);
    return ptr;
  }

  /**
   * alloc() with zeroed contents. Only the part below the pristine mark is
   * cleared, so a fresh multi-GiB block costs no memset (and no resident pages).
   */
  allocZeroed(bytes: number, what: string): number {
    const pristine = this.pristine;
    const ptr = this.alloc(bytes, what);
    const end = ptr + alignUp(Math.max(bytes, 1), ALIGN);
    if (ptr < pristine) new Uint8Array(this.memory.buffer, ptr, Math.min(end, pristine) - ptr).fill(0);
    return ptr;
  }

  /** Frees a block returned by alloc(). Freeing twice is an internal error. */
  free(ptr: number): void {
    const size = this.live.get(ptr);
    if (size === undefined) throw new LoRAError(`internal: free of unknown wasm block ${ptr}`);
    this.live.delete(ptr);
    this.liveBytes -= size;
    const blocks = this.freeBlocks;
    if (ptr + size === this.top) {
      this.top = ptr;
      const last = blocks[blocks.length - 1];
      if (last && last.ptr + last.size === this.top) {
        this.top = last.ptr;
        blocks.pop();
      }
      return;
    }
    let lo = 0;
    let hi = blocks.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (blocks[mid]!.ptr < ptr) lo = mid + 1;
      else hi = mid;
    }
    const prev = blocks[lo - 1];
    const next = blocks[lo];
    if (prev && prev.ptr + prev.size === ptr) {
      prev.size += size;
      if (next && prev.ptr + prev.size === next.ptr) {
        prev.size += next.size;
        blocks.splice(lo, 1);
      }
    } else if (next && ptr + size === next.ptr) {
      next.ptr = ptr;
      next.size += size;
    } else {
      blocks.splice(lo, 0, { ptr, size });
    }
  }

  /** A Float32Array view of `length` floats at `ptr`; `previous` is reused while still attached. */
  f32(ptr: number, length: number, previous?: Float32Array): Float32Array {
    if (previous !== undefined && previous.buffer === this.memory.buffer) return previous;
    return new Float32Array(this.memory.buffer, ptr, length);
  }

  /** An Int32Array view of `length` ints at `ptr` (labels and kernel outputs). */
  i32(ptr: number, length: number): Int32Array {
    return new Int32Array(this.memory.buffer, ptr, length);
  }

  /** True when `view` is a view on this heap's current memory (e.g. a Matrix's `data` passed back in). */
  owns(view: ArrayBufferView): boolean {
    return view.buffer === this.memory.buffer;
  }

  stats(): MemoryStats {
    return {
      memoryBytes: this.memory.buffer.byteLength,
      maxMemoryBytes: this.maxBytes,
      liveBytes: this.liveBytes,
      liveBlocks: this.live.size,
    };
  }

  /** Grows memory so that byte `end` is addressable; grows by ≥ 1/4 of the current size to amortise. */
  private ensure(end: number, requested: number, what: string): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    const fail = (cause?: unknown): LoRAMemoryError =>
      new LoRAMemoryError(
        `${what}: cannot allocate ${formatBytes(requested)}; wasm memory is ${formatBytes(have)} ` +
          `with ${formatBytes(this.liveBytes)} live, and its limit is ${formatBytes(this.maxBytes)}` +
          (this.maxBytes < MAX_PAGES * PAGE_BYTES ? ' (set by init({ maxMemoryBytes }))' : ' (the wasm32 maximum)'),
        cause === undefined ? undefined : { cause },
      );
    if (end > this.maxBytes) throw fail();
    const needPages = Math.ceil((end - have) / PAGE_BYTES);
    const roomPages = Math.floor((this.maxBytes - have) / PAGE_BYTES);
    const amortised = Math.min(roomPages, Math.max(needPages, Math.ceil(have / PAGE_BYTES / 4)));
    try {
      this.memory.grow(amortised);
    } catch {
      try {
        this.memory.grow(needPages);
      } catch (e) {
        throw fail(e);
      }
    }
  }
}

export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}
