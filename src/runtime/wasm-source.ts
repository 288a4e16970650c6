/**
 * Where init() finds each build's .wasm by default: `build/lora-<build>[-threads].wasm`
 * one level above this module (src/, dist/ and dist/browser/ bundles resolve
 * it the same way; bundlers see the `new URL(…, import.meta.url)` pattern and
 * ship the file). The single-file bundles swap this module for
 * wasm-inline.ts, which embeds both builds' bytes.
 */
import type { Build, WasmSource } from './engine.js';

export function defaultWasm(build: Build, threads: boolean): WasmSource {
  if (threads) {
    return build === 'relaxed'
      ? new URL('../../build/lora-relaxed-threads.wasm', import.meta.url)
      : new URL('../../build/lora-baseline-threads.wasm', import.meta.url);
  }
  return build === 'relaxed'
    ? new URL('../../build/lora-relaxed.wasm', import.meta.url)
    : new URL('../../build/lora-baseline.wasm', import.meta.url);
}
