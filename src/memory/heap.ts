/**
 * The wasm heap: the ONLY module that allocates in, grows, or makes views on
 * wasm memory.
 *
 * Memory is created by the runtime and imported by the module (`env.memory`),
 * so the kernels only ever see byte pointers and sizes. JS owns allocation:
 * blocks are 64-byte aligned (a cache line, and 16 for v128), handed out
 * best-fit from a coalescing free list, or bumped from the top of the heap.
 * Freeing the topmost block lowers the top again, so alloc/free cycles never
 * grow memory.
 *
 * Every allocation is a `Block` record. A record is live from alloc() to
 * free(); a freed record never becomes live again, even when its bytes are
 * handed out anew (the new owner gets a new record). So `isLive(block)` is an
 * exact test of "these bytes still belong to the object that holds this
 * record", which the kernel layer makes on every use of every operand.
 *
 * Views: after memory.grow a non-shared ArrayBuffer is detached (length 0).
 * `view()` therefore re-derives a view whenever `view.buffer !== memory.buffer`.
 * Each view it makes is remembered (weakly) with its block, so a bare view
 * passed back in (`{ rows, cols, data: m.data }`) is traced to its owner and
 * refused once that owner is gone.
 */
import { LoRAError, LoRAMemoryError } from '../errors.js';

export const PAGE_BYTES = 65536;
/** wasm32 ceiling: 65536 pages = 4 GiB. Twin: "maximumMemory" in asconfig.json. */
export const MAX_PAGES = 65536;
export const ALIGN = 64;

/** One allocation. `live` is cleared by free(); the record is never reused. */
export interface Block {
  readonly ptr: number;
  /** Bytes reserved (a multiple of 64). */
  readonly size: number;
  /** What it is for, in error messages and stats. */
  readonly what: string;
  /** Kernel-layer scratch: not counted in liveBlocks/liveBytes. */
  readonly scratch: boolean;
  live: boolean;
}

export interface MemoryStats {
  /** Current size of wasm memory in bytes (never shrinks). */
  memoryBytes: number;
  /** Upper bound this heap may grow to. */
  maxMemoryBytes: number;
  /** Bytes held by live allocations (matrices, layer buffers, in-flight temporaries), scratch excluded. */
  liveBytes: number;
  /** Number of live allocations, scratch excluded. */
  liveBlocks: number;
  /** Bytes the kernel layer keeps for packing and edge tiles (grows to the largest call's need, then reused). */
  scratchBytes: number;
  /** Allocations made since init(), scratch included: a loop that allocates nothing leaves this unchanged. */
  allocations: number;
}

interface FreeRange {
  ptr: number;
  size: number;
}

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

export class WasmHeap {
  readonly memory: WebAssembly.Memory;
  readonly maxBytes: number;
  private readonly base: number;
  private top: number;
  /** Bytes at or above this offset were never handed out, so they still hold wasm's initial zeros. */
  private pristine: number;
  /** Free ranges below `top`, sorted by ptr, never adjacent (coalesced). */
  private readonly freeRanges: FreeRange[] = [];
  private readonly live = new Map<number, Block>();
  private readonly views = new WeakMap<ArrayBufferView, Block>();
  /** Every buffer object memory.buffer has been (recorded at start and after each growth). */
  private readonly buffers = new WeakSet<ArrayBufferLike>();
  private liveBytes = 0;
  private liveBlocks = 0;
  private scratchBytes = 0;
  private allocations = 0;

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
    this.buffers.add(memory.buffer);
  }

  /**
   * Allocates `bytes` (rounded up to 64). Throws LoRAMemoryError, with the
   * heap unchanged, when memory cannot grow. Contents are unspecified (a
   * reused range keeps old bytes).
   */
  alloc(bytes: number, what: string, scratch = false): Block {
    const size = alignUp(Math.max(bytes, 1), ALIGN);
    let best = -1;
    for (let i = 0; i < this.freeRanges.length; i++) {
      const b = this.freeRanges[i]!;
      if (b.size >= size && (best < 0 || b.size < this.freeRanges[best]!.size)) best = i;
    }
    let ptr: number;
    if (best >= 0) {
      const b = this.freeRanges[best]!;
      ptr = b.ptr;
      if (b.size === size) this.freeRanges.splice(best, 1);
      else {
        b.ptr += size;
        b.size -= size;
      }
    } else {
      ptr = this.top;
      this.ensure(ptr + size, bytes, what);
      this.top = ptr + size;
    }
    const block: Block = { ptr, size, what, scratch, live: true };
    this.live.set(ptr, block);
    if (scratch) this.scratchBytes += size;
    else {
      this.liveBytes += size;
      this.liveBlocks++;
    }
    this.allocations++;
    this.pristine = Math.max(this.pristine, ptr + size);
    return block;
  }

  /**
   * alloc() with zeroed contents. Only the part below the pristine mark is
   * cleared, so a fresh multi-GiB block costs no memset (and no resident pages).
   */
  allocZeroed(bytes: number, what: string): Block {
    const pristine = this.pristine;
    const block = this.alloc(bytes, what);
    const end = block.ptr + block.size;
    if (block.ptr < pristine) new Uint8Array(this.memory.buffer, block.ptr, Math.min(end, pristine) - block.ptr).fill(0);
    return block;
  }

  /** True while `block` is allocated from this heap and not yet freed. */
  isLive(block: Block): boolean {
    return block.live && this.live.get(block.ptr) === block;
  }

  /** Frees a live block. Freeing a dead or foreign block is an internal error. */
  free(block: Block): void {
    if (!this.isLive(block)) throw new LoRAError(`internal: free of a wasm block that is not live (${block.what} at ${block.ptr})`);
    block.live = false;
    this.live.delete(block.ptr);
    if (block.scratch) this.scratchBytes -= block.size;
    else {
      this.liveBytes -= block.size;
      this.liveBlocks--;
    }
    const { ptr, size } = block;
    const ranges = this.freeRanges;
    if (ptr + size === this.top) {
      this.top = ptr;
      const last = ranges[ranges.length - 1];
      if (last && last.ptr + last.size === this.top) {
        this.top = last.ptr;
        ranges.pop();
      }
      return;
    }
    let lo = 0;
    let hi = ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (ranges[mid]!.ptr < ptr) lo = mid + 1;
      else hi = mid;
    }
    const prev = ranges[lo - 1];
    const next = ranges[lo];
    if (prev && prev.ptr + prev.size === ptr) {
      prev.size += size;
      if (next && prev.ptr + prev.size === next.ptr) {
        prev.size += next.size;
        ranges.splice(lo, 1);
      }
    } else if (next && ptr + size === next.ptr) {
      next.ptr = ptr;
      next.size += size;
    } else {
      ranges.splice(lo, 0, { ptr, size });
    }
  }

  /**
   * A Float32Array view of `length` floats at `block.ptr + offset`; `previous` is
   * reused while still attached. The view is remembered as belonging to `block`.
   */
  view(block: Block, length: number, previous?: Float32Array, offset = 0): Float32Array {
    if (previous !== undefined && previous.buffer === this.memory.buffer) return previous;
    const v = new Float32Array(this.memory.buffer, block.ptr + offset, length);
    this.views.set(v, block);
    return v;
  }

  /** The Uint16Array twin of view(), for f16/bf16 bit patterns. */
  viewU16(block: Block, length: number, previous?: Uint16Array, offset = 0): Uint16Array {
    if (previous !== undefined && previous.buffer === this.memory.buffer) return previous;
    const v = new Uint16Array(this.memory.buffer, block.ptr + offset, length);
    this.views.set(v, block);
    return v;
  }

  /** The block a view made by view() belongs to, or undefined for any other view. */
  ownerOf(view: ArrayBufferView): Block | undefined {
    return this.views.get(view);
  }

  /** memmove of `bytes` from `src` to `dst` inside wasm memory. */
  copyBytes(dst: number, src: number, bytes: number): void {
    new Uint8Array(this.memory.buffer).copyWithin(dst, src, src + bytes);
  }

  /** Scratch views for the kernel layer's own reads (never handed to users). */
  f32At(ptr: number, length: number): Float32Array {
    return new Float32Array(this.memory.buffer, ptr, length);
  }

  u16At(ptr: number, length: number): Uint16Array {
    return new Uint16Array(this.memory.buffer, ptr, length);
  }

  f64At(ptr: number, length: number): Float64Array {
    return new Float64Array(this.memory.buffer, ptr, length);
  }

  i32At(ptr: number, length: number): Int32Array {
    return new Int32Array(this.memory.buffer, ptr, length);
  }

  /**
   * True when `view` is a view on this heap's memory: on its current buffer, on an earlier one (a
   * non-shared buffer is detached by growth; a shared one stays valid, and memory.buffer becomes a
   * new object), or made by view().
   */
  owns(view: ArrayBufferView): boolean {
    return this.buffers.has(view.buffer) || view.buffer === this.memory.buffer || this.views.has(view);
  }

  stats(): MemoryStats {
    return {
      memoryBytes: this.memory.buffer.byteLength,
      maxMemoryBytes: this.maxBytes,
      liveBytes: this.liveBytes,
      liveBlocks: this.liveBlocks,
      scratchBytes: this.scratchBytes,
      allocations: this.allocations,
    };
  }

  /** @internal for the heap's property test: the free list and the top, as copies. */
  layout(): { base: number; top: number; free: FreeRange[]; live: { ptr: number; size: number }[] } {
    return {
      base: this.base,
      top: this.top,
      free: this.freeRanges.map((r) => ({ ...r })),
      live: [...this.live.values()].map((b) => ({ ptr: b.ptr, size: b.size })),
    };
  }

  /** Grows memory so that byte `end` is addressable; grows by ≥ 1/4 of the current size to amortise. */
  private ensure(end: number, requested: number, what: string): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    const fail = (cause?: unknown): LoRAMemoryError =>
      new LoRAMemoryError(
        `${what}: cannot allocate ${formatBytes(requested)}; wasm memory is ${formatBytes(have)} ` +
          `with ${formatBytes(this.liveBytes + this.scratchBytes)} live, and its limit is ${formatBytes(this.maxBytes)}` +
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
    this.buffers.add(this.memory.buffer); // only this thread grows memory: this is the object users will see
  }
}

export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}
