// f16/bf16 <-> f32 conversion (assembly/convert.ts through lw.convert and lw.matrix), against
// @petamoriken/float16 for f16 and an exact nearest-value search for bf16.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRAShapeError, LoRATypeError } from '../src/index.js';
import { assertThrowsTyped, lwUnderTest, rng } from './helpers.js';
import { bf16Bits, f16Bits, f16Value, f32Bits, f32FromBits } from './reference.js';

const allPatterns = Uint16Array.from({ length: 65536 }, (_, i) => i);
const same = (a: number, b: number): boolean => (Number.isNaN(a) && Number.isNaN(b)) || Object.is(a, b);

test('all 65,536 f16 bit patterns decode exactly (kernel and toFloat32), NaN kept NaN', async () => {
  const lw = await lwUnderTest();
  using H = lw.matrix(256, 256, allPatterns, { dtype: 'f16' });
  using F = lw.matrix(256, 256);
  lw.convert(F, H);
  const js = H.toFloat32();
  for (let h = 0; h < 65536; h++) {
    const want = f16Value(h);
    if (!same(F.data[h]!, want)) assert.unreachable(`kernel: f16 0x${h.toString(16)} decodes to ${F.data[h]}, not ${want}`);
    if (!same(js[h]!, want)) assert.unreachable(`toFloat32: f16 0x${h.toString(16)} decodes to ${js[h]}, not ${want}`);
  }
});

test('all 65,536 bf16 bit patterns decode exactly (the f32 with those upper 16 bits)', async () => {
  const lw = await lwUnderTest();
  using H = lw.matrix(256, 256, allPatterns, { dtype: 'bf16' });
  using F = lw.matrix(256, 256);
  lw.convert(F, H);
  const u = new Uint32Array(F.toArray().buffer);
  const js = new Uint32Array(H.toFloat32().buffer);
  for (let h = 0; h < 65536; h++) {
    const isNaN = (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
    if (isNaN) assert.ok(Number.isNaN(F.data[h]!), `bf16 0x${h.toString(16)} is NaN`);
    else assert.is(u[h], h << 16 >>> 0, `bf16 0x${h.toString(16)}`);
    if (!isNaN) assert.is(js[h], h << 16 >>> 0);
  }
});

/** Every halfway point between neighbouring finite values of a half type, and the f32 values just beside it. */
function halfwayCases(decode: (h: number) => number, maxFinite: number): Float32Array {
  const out: number[] = [];
  for (let h = 0; h < maxFinite; h++) {
    const a = decode(h), b = decode(h + 1);
    const mid = Math.fround((a + b) / 2); // exact: one more significand bit than the half type
    for (const x of [mid, f32FromBits(f32Bits(mid) + 1), f32FromBits(f32Bits(mid) - 1), a, b]) out.push(x, -x);
  }
  return Float32Array.from(out);
}

const SPECIAL = Float32Array.from([
  0, -0, Infinity, -Infinity, Number.NaN, f32FromBits(0xffc00000), f32FromBits(0x7f800001), f32FromBits(0xff800001),
  65504, 65519.99, 65520, 65536, 1e10, -65520, 3.4028234663852886e38, -3.4028234663852886e38,
  2 ** -24, 2 ** -25, 2 ** -25 * 1.0000001, 2 ** -26, 1e-30, 2 ** -14, 2 ** -14 * (1 - 2 ** -11), 1.401298464324817e-45,
  3.3895313892515355e38, 3.3961775292304957e38, 3.39617752923e38,
]);

async function encode(values: Float32Array, dtype: 'f16' | 'bf16'): Promise<Uint16Array> {
  const lw = await lwUnderTest();
  using F = lw.matrix(1, values.length, values);
  using H = lw.matrix(1, values.length, undefined, { dtype });
  lw.convert(H, F);
  const viaMatrix = lw.matrix(1, values.length, values, { dtype });
  assert.equal(Array.from(viaMatrix.data), Array.from(H.data), 'lw.matrix(…, floats, { dtype }) encodes the same');
  viaMatrix.dispose();
  return H.toArray();
}

test('f32 → f16 rounds to nearest, ties to even, on every halfway case of every binade, plus Inf, NaN, overflow, underflow, subnormals', async () => {
  const values = new Float32Array([...halfwayCases(f16Value, 0x7bff), ...SPECIAL]);
  const got = await encode(values, 'f16');
  for (let i = 0; i < values.length; i++) {
    const x = values[i]!;
    if (Number.isNaN(x)) {
      assert.is(got[i]! & 0x7e00, 0x7e00, `NaN stays a quiet NaN (0x${got[i]!.toString(16)})`);
      assert.is(got[i]! >> 15, f32Bits(x) >>> 31, 'NaN keeps its sign');
      continue;
    }
    const want = f16Bits(x);
    if (got[i] !== want) assert.unreachable(`f16(${x}) = 0x${got[i]!.toString(16)} but round-to-nearest-even gives 0x${want.toString(16)}`);
  }
  assert.ok(values.length > 300_000, `${values.length} values`);
});

test('f32 → bf16 rounds to nearest, ties to even, on halfway cases across all exponents, plus Inf, NaN and overflow', async () => {
  const bf = (h: number) => f32FromBits(h << 16);
  const values = new Float32Array([...halfwayCases(bf, 0x7f7f), ...SPECIAL]);
  const got = await encode(values, 'bf16');
  for (let i = 0; i < values.length; i++) {
    const x = values[i]!;
    if (Number.isNaN(x)) {
      assert.ok((got[i]! & 0x7f80) === 0x7f80 && (got[i]! & 0x7f) !== 0 && (got[i]! & 0x40) !== 0, `NaN stays a quiet NaN (0x${got[i]!.toString(16)})`);
      continue;
    }
    const want = bf16Bits(x);
    if (got[i] !== want) assert.unreachable(`bf16(${x}) = 0x${got[i]!.toString(16)} but round-to-nearest-even gives 0x${want.toString(16)}`);
  }
});

test('every half decodes to exactly the f32 bits it stands for, NaN payloads (signalling ones too) and signs kept', async () => {
  const lw = await lwUnderTest();
  for (const dtype of ['f16', 'bf16'] as const) {
    using H = lw.matrix(256, 256, allPatterns, { dtype });
    using F = lw.matrix(256, 256);
    lw.convert(F, H);
    const u = new Uint32Array(F.toArray().buffer);
    for (let h = 0; h < 65536; h++) {
      // f16: sign, then Inf/NaN exponent 255 with the 10 payload bits on top of f32's 23; else the value's own bits
      const e = (h >> 10) & 31;
      const want = dtype === 'bf16' ? (h << 16) >>> 0
        : e === 31 ? (((h & 0x8000) << 16) | 0x7f800000 | ((h & 0x3ff) << 13)) >>> 0 : f32Bits(f16Value(h));
      if (u[h] !== want) assert.unreachable(`${dtype} 0x${h.toString(16)} decodes to 0x${u[h]!.toString(16)}, not 0x${want.toString(16)}`);
    }
  }
});

/** f32 bit patterns that reach every rounding path: random patterns, every exponent with random mantissas, f32 subnormals. */
function encodeCases(): Float32Array {
  const r = rng(1717);
  const bits: number[] = [];
  for (let i = 0; i < 400_000; i++) bits.push(Math.floor(r() * 2 ** 32));
  for (let e = 0; e < 256; e++) {
    for (let i = 0; i < 512; i++) bits.push(((i & 1) << 31 | e << 23 | Math.floor(r() * 2 ** 23)) >>> 0);
    // the low 13 (f16) and 16 (bf16) bits at exactly half, and one below or above
    for (const low of [0x1000, 0x0fff, 0x1001, 0x8000, 0x7fff, 0x8001]) for (const odd of [0, 0x2000, 0x10000]) bits.push((e << 23 | odd | low) >>> 0);
  }
  const f = new Float32Array(bits.length);
  new Uint32Array(f.buffer).set(bits);
  return f;
}
/** The expected half bits: the oracles for numbers, and for NaN the rule kept since half precision landed. */
const wantF16 = (x: number, u: number): number => (Number.isNaN(x) ? ((u >>> 16) & 0x8000) | 0x7e00 : f16Bits(x));
const wantBf16 = (x: number, u: number): number => (Number.isNaN(x) ? (u >>> 16) | 0x40 : bf16Bits(x));

test('f32 → f16 and → bf16 are bit-exact on 530,000 patterns (random, every exponent, halfway ± 1, subnormals), eight-wide and one at a time', async () => {
  const lw = await lwUnderTest();
  const values = encodeCases();
  const u = new Uint32Array(values.buffer);
  for (const [dtype, want] of [['f16', wantF16], ['bf16', wantBf16]] as const) {
    const got = await encode(values, dtype);
    for (let i = 0; i < values.length; i++) {
      const w = want(values[i]!, u[i]!);
      if (got[i] !== w) assert.unreachable(`${dtype}(0x${u[i]!.toString(16)} = ${values[i]}) = 0x${got[i]!.toString(16)}, want 0x${w.toString(16)}`);
    }
    // lengths below 8 run the one-at-a-time tail (store1)
    using F = lw.matrix(1, 7);
    using H = lw.matrix(1, 7, undefined, { dtype });
    for (let i = 0; i + 7 <= 70_000; i += 7 * 37) {
      F.data.set(values.subarray(i, i + 7));
      lw.convert(H, F);
      for (let j = 0; j < 7; j++) {
        const w = want(values[i + j]!, u[i + j]!);
        if (H.data[j] !== w) assert.unreachable(`tail ${dtype}(0x${u[i + j]!.toString(16)}) = 0x${H.data[j]!.toString(16)}, want 0x${w.toString(16)}`);
      }
    }
  }
});

test('convert works between every pair of dtypes, on odd lengths, and half → half goes through exact f32', async () => {
  const lw = await lwUnderTest();
  for (const n of [1, 7, 8, 9, 33]) {
    const values = Float32Array.from({ length: n }, (_, i) => (i - 3) * 0.3719 + 1e-6 * i);
    for (const a of ['f32', 'f16', 'bf16'] as const) {
      for (const b of ['f32', 'f16', 'bf16'] as const) {
        using A = lw.matrix(1, n, values, { dtype: a as 'f16' });
        using B = lw.matrix(1, n, undefined, { dtype: b as 'f16' });
        lw.convert(B, A);
        using C = lw.matrix(1, n);
        lw.convert(C, B);
        const want = A.toFloat32().map((v) => (b === 'f32' ? v : b === 'f16' ? f16Value(f16Bits(v)) : f32FromBits(bf16Bits(v) << 16)));
        assert.equal(Array.from(C.data), Array.from(want), `${a} → ${b}, n = ${n}`);
      }
    }
  }
  using M = lw.matrix(2, 3, [1, 2, 3, 4, 5, 6], { dtype: 'bf16' });
  assert.is(M.dtype, 'bf16');
  assert.instance(M.data, Uint16Array);
  assert.equal(Array.from(M.toFloat32()), [1, 2, 3, 4, 5, 6]);
  assert.is(String(Object.prototype.toString.call(M)), '[object Matrix [2, 3] bf16]');
  using P = lw.matrix(2, 3, undefined, { dtype: 'f16' });
  assert.ok(P.data.every((v) => v === 0), 'zero-filled');
});

test('convert and matrix reject bad dtypes, shapes and data with typed errors', async () => {
  const lw = await lwUnderTest();
  using A = lw.matrix(2, 3);
  using B = lw.matrix(3, 2, undefined, { dtype: 'f16' });
  assertThrowsTyped(() => lw.convert(B, A), LoRAShapeError, ['convert:', 'dst is [3, 2]', 'src is [2, 3]']);
  assertThrowsTyped(() => lw.matrix(2, 2, undefined, { dtype: 'f64' as 'f16' }), LoRATypeError, ['matrix: options.dtype', '"f64"']);
  assertThrowsTyped(() => lw.matrix(2, 2, new Uint16Array(4) as never), LoRATypeError, ['matrix: data must be a Float32Array or number[]', 'Uint16Array']);
  assertThrowsTyped(() => lw.matrix(2, 2, new Uint16Array(3), { dtype: 'f16' }), LoRAShapeError, ['length 3']);
  assertThrowsTyped(() => lw.convert(A, { rows: 2, cols: 3, data: new Uint16Array(6), dtype: 'f64' } as never), LoRATypeError, ["src.dtype must be 'f32', 'f16' or 'bf16'"]);
  assertThrowsTyped(() => lw.convert(A, { rows: 2, cols: 3, data: new Float32Array(6), dtype: 'f16' } as never), LoRATypeError, ['src.data must be a Uint16Array of f16 bit patterns']);
  // a plain half object works both ways
  const plain = { rows: 2, cols: 3, data: new Uint16Array(6), dtype: 'bf16' as const };
  using F = lw.matrix(2, 3, [1, -2, 0.5, 3, 1e30, -0]);
  lw.convert(plain, F);
  assert.equal(Array.from(plain.data), [1, -2, 0.5, 3, 1e30, -0].map((v) => bf16Bits(Math.fround(v))));
  assert.equal(Array.from(plain.data).slice(0, 4), [0x3f80, 0xc000, 0x3f00, 0x4040]);
});

test.run();
