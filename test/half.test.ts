// The merge family with half-precision weights and adapters: every dtype combination of W0, out, A
// and B on the rank kernels' shape set. Each result must be round_out(f32(W0) + Δ̂) bit for bit, where
// Δ̂ is the kernel's own f32 sum s·A·B (checked against float64 by rank.test.ts), rounded once by an
// independent encoder (reference.ts), and within half an output ulp plus the f32 bound of the float64
// reference.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { type DType, LoRANonFiniteError, LoRATypeError, type Matrix } from '../src/index.js';
import { BUILD, assertThrowsTyped, lwUnderTest, randomF32, rng } from './helpers.js';
import { U, bf16Bits, f16Bits, f32Bits, halfUlp, rankReference, roundTo } from './reference.js';
import { SHAPES } from './shapes.js';

const DTYPES: DType[] = ['f32', 'f16', 'bf16'];
const COMBOS = DTYPES.flatMap((w0) => DTYPES.flatMap((out) => DTYPES.flatMap((a) => DTYPES.map((b) => ({ w0, out, a, b })))));

const values = (m: Matrix<DType>): Float32Array => m.toFloat32();
const bits = (m: Matrix<DType>): number[] => Array.from(m.dtype === 'f32' ? new Uint32Array(m.toArray().buffer) : (m.toArray() as Uint16Array));

test(`mergeInto, merge and unmerge in all 81 dtype combinations equal round_out(f32(W0) + Δ̂) bit for bit (${BUILD})`, async () => {
  const lw = await lwUnderTest();
  let checked = 0;
  SHAPES.forEach((shape, i) => {
    const { dOut, dIn, r } = shape;
    // every shape runs 3 combinations; all 81 are covered many times over the 229 shapes
    for (let j = 0; j < 3; j++) {
      const c = COMBOS[(3 * i + j * 29) % COMBOS.length]!;
      const g = rng(1000 + 7 * i + j);
      const s = Math.fround([0.5, 2, -0.75, 1][(i + j) % 4]!);
      const W0 = lw.matrix(dOut, dIn, randomF32(g, dOut * dIn, 2), { dtype: c.w0 as 'f16' });
      const A = lw.matrix(dOut, r, randomF32(g, dOut * r), { dtype: c.a as 'f16' });
      const B = lw.matrix(r, dIn, randomF32(g, r * dIn), { dtype: c.b as 'f16' });
      const out = lw.matrix(dOut, dIn, undefined, { dtype: c.out as 'f16' });
      const tag = `[${dOut}×${dIn}, r=${r}] W0 ${c.w0}, out ${c.out}, A ${c.a}, B ${c.b}`;

      const D = lw.delta(A, B, { scale: s }); // Δ̂ in f32, from A and B decoded exactly
      const a32 = lw.matrix(dOut, r, values(A)), b32 = lw.matrix(r, dIn, values(B));
      const D32 = lw.delta(a32, b32, { scale: s });
      assert.equal(Array.from(D.data), Array.from(D32.data), `${tag}: half factors give the delta of their f32 values`);

      const w0 = values(W0), d = D.toArray(); // a copy: later allocations may grow memory
      const want = (from: Float32Array, sign: number) => Float32Array.from(from, (x, q) => roundTo(Math.fround(x + sign * d[q]!), c.out));
      lw.mergeInto(out, W0, A, B, { scale: s });
      const got = values(out);
      const expect = want(w0, 1);
      for (let q = 0; q < got.length; q++) {
        if (!Object.is(got[q], expect[q])) assert.unreachable(`${tag}: out[${q}] is ${got[q]} but round_${c.out}(${w0[q]} + ${d[q]}) is ${expect[q]}`);
      }
      // float64 reference, rounded once to the output type
      const ref = rankReference(w0, values(A), values(B), dOut, r, dIn, s);
      for (let q = 0; q < got.length; q++) {
        const tol = halfUlp(ref.value[q]!, c.out) * 1.0001 + (r + 4) * U * ref.mag[q]! * 2;
        if (!(Math.abs(got[q]! - ref.value[q]!) <= tol)) assert.unreachable(`${tag}: out[${q}] = ${got[q]} is not the float64 ${ref.value[q]} rounded once`);
      }
      // in place: merge(W) on a W of out's dtype holding W0's values rounded to it
      if (c.w0 === c.out) {
        const W = lw.matrix(dOut, dIn, W0.toArray() as unknown as Uint16Array, { dtype: c.w0 as 'f16' });
        lw.merge(W, A, B, { scale: s });
        assert.equal(bits(W), bits(out), `${tag}: merge(W) == mergeInto(out, W0)`);
        lw.unmerge(W, A, B, { scale: s });
        const back = want(got, -1);
        assert.equal(Array.from(values(W)), Array.from(back), `${tag}: unmerge rounds once more`);
        W.dispose();
      }
      for (const m of [W0, A, B, out, D, a32, b32, D32]) m.dispose();
      checked++;
    }
  });
  assert.ok(checked >= 600, `${checked} cases`);
});

/**
 * The bits a merge writes for a NaN W0 element: the f32 sum is W0's NaN made quiet (x64 and arm64 add
 * return their one NaN operand, quieted), then out's encoder: f16 keeps the sign only (0x7e00), bf16
 * keeps the upper 16 bits. Pinned so that a faster encoder cannot change a file's bytes.
 */
function nanOut(w0Bits32: number, out: DType): number {
  const q = (w0Bits32 | 0x00400000) >>> 0;
  return out === 'f32' ? q : out === 'f16' ? ((q >>> 16) & 0x8000) | 0x7e00 : q >>> 16;
}

test(`every f16 and bf16 W0 bit pattern (NaN payloads, ±Inf, subnormals, ±0) merges to round_out(f32(W0) + Δ̂) through the full and edge tiles (${BUILD})`, async () => {
  const lw = await lwUnderTest();
  const g = rng(4242);
  // 256×256 W0 holds all 65,536 patterns; row i of A is 0 for every fourth row (W0 passes through
  // decode and encode untouched), else random at scale 2^k, k from -30 to 17 (sums that round
  // at every binade, cross halfway points, underflow and overflow f16)
  const n = 256, r = 3;
  const a = new Float32Array(n * r);
  for (let i = 0; i < n; i++) for (let k = 0; k < r; k++) a[i * r + k] = i % 4 === 0 ? 0 : (2 * g() - 1) * 2 ** ((i % 48) - 30);
  const bIn = randomF32(g, r * n);
  const patterns = Uint16Array.from({ length: n * n }, (_, h) => h);
  // a second W0 of 255 columns: every row ends in an edge tile (7 columns, element by element)
  for (const cols of [n, n - 1]) {
    using A = lw.matrix(n, r, a);
    using B = lw.matrix(r, cols, bIn.subarray(0, r * cols));
    using D = lw.delta(A, B);
    const d = D.toArray();
    for (const w0Type of ['f16', 'bf16'] as const) {
      using W0 = lw.matrix(n, cols, patterns.subarray(0, n * cols), { dtype: w0Type });
      const w0 = W0.toFloat32();
      // NaN W0's exact f32 bits (toFloat32 in JS may not keep a NaN's payload)
      const nanBits = (h: number): number => (w0Type === 'bf16' ? h << 16 : ((h & 0x8000) << 16) | 0x7f800000 | ((h & 0x3ff) << 13)) >>> 0;
      for (const outType of DTYPES) {
        using out = lw.matrix(n, cols, undefined, { dtype: outType as 'f16' });
        lw.mergeInto(out, W0, A, B);
        const got = bits(out);
        for (let q = 0; q < n * cols; q++) {
          const sum = Math.fround(w0[q]! + d[q]!);
          const want = Number.isNaN(w0[q]!) ? nanOut(nanBits(patterns[q]!), outType) : outType === 'f32' ? f32Bits(sum) : outType === 'f16' ? f16Bits(sum) : bf16Bits(sum);
          if (got[q] !== want) {
            assert.unreachable(`${cols} cols, W0 ${w0Type} 0x${patterns[q]!.toString(16)} + ${d[q]} → out ${outType} 0x${got[q]!.toString(16)}, want 0x${want.toString(16)}`);
          }
        }
        if (outType === w0Type) {
          using W = lw.matrix(n, cols, patterns.subarray(0, n * cols), { dtype: w0Type });
          lw.merge(W, A, B);
          assert.equal(bits(W), got, `${cols} cols, ${w0Type}: merge(W) == mergeInto(out, W0)`);
        }
      }
    }
  }
});

test('a half W0 gives zero-drift adapter swaps through mergeInto', async () => {
  const lw = await lwUnderTest();
  const g = rng(5);
  for (const dtype of ['f16', 'bf16'] as const) {
    using W0 = lw.matrix(37, 45, randomF32(g, 37 * 45), { dtype });
    const w0 = W0.toArray();
    using out = lw.matrix(37, 45, undefined, { dtype });
    using A1 = lw.matrix(37, 4, randomF32(g, 148)), B1 = lw.matrix(4, 45, randomF32(g, 180));
    using A2 = lw.matrix(37, 4, randomF32(g, 148)), B2 = lw.matrix(4, 45, randomF32(g, 180));
    lw.mergeInto(out, W0, A1, B1);
    const first = out.toArray();
    for (let swap = 0; swap < 5; swap++) {
      lw.mergeInto(out, W0, A2, B2);
      lw.mergeInto(out, W0, A1, B1);
    }
    assert.equal(Array.from(out.data), Array.from(first), `${dtype}: adapter 1 after 5 swaps is bit-identical`);
    assert.equal(Array.from(W0.data), Array.from(w0), `${dtype}: W0 untouched`);
  }
});

test('f16 overflow: safe: true refuses with W untouched; without safe the result is ±Inf as IEEE says', async () => {
  const lw = await lwUnderTest();
  using A = lw.matrix(2, 1, [1, -1]);
  using B = lw.matrix(1, 2, [10000, 1]);
  using W = lw.matrix(2, 2, [60000, 1, -60000, 2], { dtype: 'f16' });
  const before = W.toArray();
  assertThrowsTyped(() => lw.merge(W, A, B, { safe: true }), LoRANonFiniteError, ['merge:', 'overflow f16', '65504', 'W was left untouched']);
  assert.equal(Array.from(W.data), Array.from(before), 'W untouched');
  lw.merge(W, A, B);
  assert.equal(Array.from(W.toFloat32()), [Infinity, 2, -Infinity, 1], 'IEEE overflow to ±Inf');
  using Wb = lw.matrix(2, 2, [60000, 1, -60000, 2], { dtype: 'bf16' });
  lw.merge(Wb, A, B, { safe: true }); // far inside bf16's range
  assert.equal(Array.from(Wb.toFloat32()), [roundTo(roundTo(60000, 'bf16') + 10000, 'bf16'), 2, -roundTo(roundTo(60000, 'bf16') + 10000, 'bf16'), 1]);
  using Wn = lw.matrix(1, 2, [Number.NaN, 1], { dtype: 'f16' });
  assertThrowsTyped(() => lw.merge(Wn, lw.matrix(1, 1, [1]), lw.matrix(1, 2, [1, 1]), { safe: true }), LoRANonFiniteError, ['W[0, 0] is not finite']);
  using An = lw.matrix(2, 1, [1, Number.NaN], { dtype: 'bf16' });
  assertThrowsTyped(() => lw.merge(W, An, B), LoRANonFiniteError, ['A[1, 0] is NaN']);
  using Dh = lw.delta(A, B, { dtype: 'f16' });
  assert.is(Dh.dtype, 'f16');
  assert.equal(Array.from(Dh.toFloat32()), [10000, 1, -10000, -1]);
});

test('operations that take f32 only refuse half matrices with a LoRATypeError that names the dtype', async () => {
  const lw = await lwUnderTest();
  using H = lw.matrix(4, 4, undefined, { dtype: 'f16' });
  using Hb = lw.matrix(4, 4, undefined, { dtype: 'bf16' });
  using F = lw.matrix(4, 4);
  const calls: [string, () => unknown][] = [
    ['gemm', () => lw.gemm(F, H as never, F)],
    ['gemm', () => lw.gemm(Hb as never, F, F)],
    ['matmul', () => lw.matmul(F, Hb as never)],
    ['linear', () => lw.linear({ W: H as never, r: 2 })],
    ['forward', () => lw.linear({ W: F, r: 2 }).forward(Hb as never)],
    ['mseLoss', () => lw.mseLoss(H as never, F)],
    ['softmaxCrossEntropy', () => lw.softmaxCrossEntropy(Hb as never, [0, 1, 2, 3])],
    ['sgd', () => lw.sgd([{ name: 'p', value: H as unknown as Matrix, grad: F }])],
  ];
  for (const [fn, call] of calls) {
    const e = assertThrowsTyped(call, LoRATypeError, [`${fn}:`]);
    assert.match(e.message, /is (f16|bf16)|supports f32 only|another|must be/, e.message);
    assert.match(e.message, /f16|bf16/, `${fn} names the dtype: ${e.message}`);
  }
  assertThrowsTyped(() => lw.merge(H, F, F, { dtype: 'f16' } as never), LoRATypeError, ['options.dtype is for delta']);
  assertThrowsTyped(() => lw.delta(F, F, { dtype: 'f8' as 'f16' }), LoRATypeError, ["options.dtype must be 'f32', 'f16' or 'bf16'"]);
});

test.run();
