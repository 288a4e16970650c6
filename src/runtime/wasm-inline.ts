/**
 * The single-file bundles' replacement for wasm-source.ts: both flavours'
 * bytes are embedded (esbuild's binary loader), so nothing is fetched.
 */
// @ts-expect-error: resolved by esbuild's binary loader (scripts/bundle.mjs)
import baseline from '../../build/lora-baseline.wasm';
// @ts-expect-error: resolved by esbuild's binary loader (scripts/bundle.mjs)
import relaxed from '../../build/lora-relaxed.wasm';
import type { Build, WasmSource } from './engine.js';

export function defaultWasm(build: Build): WasmSource {
  return (build === 'relaxed' ? relaxed : baseline) as Uint8Array;
}
