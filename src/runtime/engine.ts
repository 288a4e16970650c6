/**
 * Engine: one loaded module with its memory, as every layer above sees it.
 * It sits below everything (it imports only types), so loading, operations
 * and layers all depend on it and it depends on none of them.
 */
import type { KernelLayer } from '../kernel/kernel.js';
import type { WasmHeap } from '../memory/heap.js';

/** The two .wasm builds, compiled from one source (assembly/simd.ts): what lw.build reports and init({ build }) asks for. */
export type Build = 'relaxed' | 'baseline';

/** A .wasm source: a URL (fetched, or read from disk for file: URLs), the bytes, or a compiled module. */
export type WasmSource = string | URL | ArrayBuffer | ArrayBufferView | WebAssembly.Module;

export interface Engine {
  readonly build: Build;
  readonly heap: WasmHeap;
  /** The only way to run a kernel (it owns the worker pool, if any). */
  readonly kernel: KernelLayer;
  /** Why fewer threads run than were asked for, if so. */
  readonly threadsNote?: string;
}
