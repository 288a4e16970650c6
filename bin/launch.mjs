// The CLI's start-up, imported first by bin/lora-wasm.mjs (before the package, before any wasm is compiled).
//
// Relaxed SIMD: Node 20 validates f32x4.relaxed_madd only with --experimental-wasm-relaxed-simd, so
// `npx lora-wasm` ran the baseline build there. V8 reads that flag when it compiles a module, so
// setting it here, at run time, is enough: the relaxed build then compiles in this thread, and the
// worker pool instantiates that same compiled module (checked on Node 20.20). Node ≥ 22 has it on;
// where the flag does not take, init() simply picks the baseline build as before.
// LORA_BUILD=baseline leaves the flag off (scripts/test.mjs sets it for its baseline run, whose CLI tests
// compare the CLI's output with in-process merges of that build bit for bit).
import v8 from 'node:v8';

// (module (func (param v128 v128 v128) (result v128) local.get 0 local.get 1 local.get 2 f32x4.relaxed_madd)),
// the probe src/runtime/load.ts detects relaxed SIMD with
const RELAXED_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x01, 0x60, 0x03, 0x7b, 0x7b, 0x7b, 0x01, 0x7b, 0x03,
  0x02, 0x01, 0x00, 0x0a, 0x0d, 0x01, 0x0b, 0x00, 0x20, 0x00, 0x20, 0x01, 0x20, 0x02, 0xfd, 0x85, 0x02, 0x0b,
]);

/** Turns relaxed SIMD on where this engine has it behind a flag; returns whether it is on now. */
export function enableRelaxedSimd() {
  if (WebAssembly.validate(RELAXED_PROBE)) return true;
  v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
  return WebAssembly.validate(RELAXED_PROBE);
}

if (process.env.LORA_BUILD !== 'baseline') enableRelaxedSimd();
