/**
 * Exact decoding of f16 and bf16 bit patterns in JS, for Matrix.toFloat32() and error messages.
 * (Encoding, which must round, is the wasm kernel's job: assembly/convert.ts.)
 *
 *   bf16: the f32 whose upper 16 bits are the pattern.
 *   f16:  (−1)^s · 2^(e−15) · (1 + m/1024), subnormals 2^−14 · m/1024, e = 31 is ±Inf/NaN;
 *         tabulated once (65,536 entries) on first use.
 */
import type { HalfDType } from './dtype.js';

let f16Table: Float32Array | undefined;

function f16Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * 2 ** -14 * (m / 1024);
  if (e === 31) return m === 0 ? sign * Infinity : Number.NaN;
  return sign * 2 ** (e - 15) * (1 + m / 1024);
}

/** One f16 or bf16 pattern as a number. */
export function halfValue(bits: number, dtype: HalfDType): number {
  if (dtype === 'bf16') return new Float32Array(new Uint32Array([(bits & 0xffff) << 16]).buffer)[0]!;
  return f16Value(bits & 0xffff);
}

export function decodeHalf(bits: Uint16Array, dtype: HalfDType): Float32Array {
  const out = new Float32Array(bits.length);
  if (dtype === 'bf16') {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < bits.length; i++) u[i] = bits[i]! << 16;
    return out;
  }
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16Value(h);
  }
  for (let i = 0; i < bits.length; i++) out[i] = f16Table[bits[i]!]!;
  return out;
}
