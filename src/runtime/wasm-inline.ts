/**
 * The single-file bundles' replacement for wasm-source.ts: both builds'
 * bytes are embedded (esbuild's binary loader), so nothing is fetched; the
 * shared-memory (threads) builds are derived from them.
 */
// @ts-expect-error: resolved by esbuild's binary loader (scripts/bundle.mjs)
import baseline from '../../build/lora-baseline.wasm';
// @ts-expect-error: resolved by esbuild's binary loader (scripts/bundle.mjs)
import relaxed from '../../build/lora-relaxed.wasm';
import type { Build, WasmSource } from './engine.js';
import { sharedVariant } from './shared-variant.js';

/** Both builds' bytes; the threads builds are derived (one byte differs, see shared-variant.ts). */
export function defaultWasm(build: Build, threads: boolean): WasmSource {
  const bytes = (build === 'relaxed' ? relaxed : baseline) as Uint8Array;
  return threads ? sharedVariant(bytes) : bytes;
}
