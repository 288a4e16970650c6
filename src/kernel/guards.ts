/**
 * The kernel layer's guards: the last line that keeps a bug or a stale object from writing into
 * someone else's memory. User arguments were validated above (src/ops/); a failure here is a bug
 * or a stale handle, reported before any kernel runs.
 *   pointer    a descriptor's byte pointer, once it is owned by this heap, live (not disposed,
 *              collected or reused), of a dtype the kernel takes, and inside its block;
 *   fits       the shapes a kernel gets agree;
 *   trapped    a wasm trap becomes a LoRAError (a trap is a bug: the checks should prevent it).
 */
import { LoRADisposedError, LoRAError, LoRATypeError } from '../errors.js';
import type { WasmHeap } from '../memory/heap.js';
import type { DType } from '../memory/matrix.js';
import { ITEM_BYTES } from '../memory/dtype.js';
import { type MatrixDesc, shapeOf } from './descriptor.js';

/** The dtype most kernels take. */
export const F32: readonly DType[] = ['f32'];

/** The byte pointer of element [0, 0] of d, after every check above. */
export function pointer(heap: WasmHeap, fn: string, d: MatrixDesc, contiguous = true, dtypes: readonly DType[] = F32): number {
  if (d.heap !== heap) {
    throw new LoRATypeError(`${fn}: ${d.name} (Matrix ${shapeOf(d)}) belongs to another lora-wasm instance`);
  }
  if (!heap.isLive(d.block)) {
    throw new LoRADisposedError(`${fn}: ${d.name} (Matrix ${shapeOf(d)}) was disposed and cannot be used`);
  }
  if (!dtypes.includes(d.dtype)) {
    throw new LoRATypeError(`${fn}: ${d.name} is ${d.dtype} but this operation supports ${dtypes.join(', ')} only`);
  }
  const end = d.offset + ((d.rows - 1) * d.ld + d.cols) * ITEM_BYTES[d.dtype];
  if (d.rows < 1 || d.cols < 1 || d.ld < d.cols || d.offset < 0 || end > d.block.size || (contiguous && d.ld !== d.cols)) {
    throw new LoRAError(`${fn}: internal error, ${d.name} ${shapeOf(d)} (ld ${d.ld}, offset ${d.offset}) does not fit its ${d.block.size}-byte block`);
  }
  return d.block.ptr + d.offset;
}

/** Shapes were validated above this layer; a mismatch here is a bug. */
export function fits(fn: string, ok: boolean, kernel: string, ds: readonly MatrixDesc[]): void {
  if (!ok) throw new LoRAError(`${fn}: internal error, ${kernel} got ${ds.map((d) => `${d.name} ${shapeOf(d)}`).join(', ')}`);
}

/** What kernel code threw, as it should reach the caller: a wasm trap becomes a LoRAError, anything else is unchanged. */
export function trapped(fn: string, e: unknown): unknown {
  if (e instanceof WebAssembly.RuntimeError) {
    return new LoRAError(`${fn}: internal error, the wasm kernel trapped (${e.message}); please report this`, { cause: e });
  }
  return e;
}
