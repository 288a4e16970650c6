import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRANonFiniteError, LoRAShapeError, LoRATypeError } from '../src/index.js';
import { BUILD, assertThrowsTyped, lwUnderTest, randInt, randomF32, rng } from './helpers.js';
import { assertWithinBound, gemm64 } from './reference.js';

/** float64 C = alpha·op(X)·op(Y) + beta·C0 for X stored [n, k] (or [k, n] with tx), Y [k, m] (or [m, k] with ty). */
const reference = (
  x: Float32Array, y: Float32Array, c0: Float32Array, n: number, m: number, k: number, tx: boolean, ty: boolean, alpha: number, beta: number,
) => gemm64({ data: x, rows: tx ? k : n, cols: tx ? n : k, trans: tx }, { data: y, rows: ty ? m : k, cols: ty ? k : m, trans: ty }, { alpha, beta, c0 });
/** GEMM rounding: k-term sums, plus alpha, beta·C and the add (6 roundings of slack). */
const check = (got: Float32Array, ref: ReturnType<typeof gemm64>, k: number, label: string) => assertWithinBound(got, ref, k, label, 6);

const SHAPES: [number, number, number][] = [
  [1, 1, 1], [1, 7, 3], [5, 1, 9], [4, 8, 4], [3, 9, 257], [65, 17, 5], [66, 263, 300], [129, 8, 513], [7, 300, 64],
  [64, 256, 256], [2, 515, 40],
  // batch 1 (the matrix-vector kernel when Y is transposed): ragged m and K, long K
  [1, 4099, 37], [1, 13, 4096], [1, 5, 1], [1, 8, 4], [1, 3, 7],
];

test(`gemm matches float64 for every op combination, odd shapes and block edges (${BUILD})`, async () => {
  const lw = await lwUnderTest();
  const r = rng(77);
  const shapes = [...SHAPES];
  for (let i = 0; i < 30; i++) shapes.push([randInt(r, 1, 90), randInt(r, 1, 90), randInt(r, 1, 300)]);
  let cases = 0;
  for (const [n, m, k] of shapes) {
    for (const tx of [false, true]) {
      for (const ty of [false, true]) {
        const [alpha, beta] = [[1, 0], [0.5, 1], [-2, 0.25]][cases % 3]!;
        const x = randomF32(r, n * k), y = randomF32(r, k * m), c0 = randomF32(r, n * m);
        using X = lw.matrix(tx ? k : n, tx ? n : k, x);
        using Y = lw.matrix(ty ? m : k, ty ? k : m, y);
        using C = lw.matrix(n, m, c0);
        lw.gemm(C, X, Y, { transX: tx, transY: ty, alpha, beta });
        check(C.data, reference(x, y, c0, n, m, k, tx, ty, alpha!, beta!), k, `gemm ${n}×${m}×${k} ${tx ? 'T' : 'N'}${ty ? 'T' : 'N'} α=${alpha} β=${beta}`);
        cases++;
      }
    }
  }
  assert.ok(cases >= 160);
});

test('beta = 0 never reads C (NaN garbage in C does not leak through)', async () => {
  const lw = await lwUnderTest();
  const r = rng(3);
  for (const n of [9, 1]) {
    const x = randomF32(r, n * 11), y = randomF32(r, 13 * 11);
    using X = lw.matrix(n, 11, x);
    using Y = lw.matrix(13, 11, y);
    using C = lw.matrix(n, 13, new Float32Array(n * 13).fill(Number.NaN));
    lw.gemm(C, X, Y, { transY: true });
    check(C.data, reference(x, y, new Float32Array(n * 13), n, 13, 11, false, true, 1, 0), 11, `beta 0, n = ${n}`);
  }
});

test('batch 1 with every alpha/beta case matches float64 (the matrix-vector path)', async () => {
  const lw = await lwUnderTest();
  const r = rng(5);
  for (const [alpha, beta] of [[1, 0], [0.5, 1], [-2, 0.25], [0, 1]] as const) {
    const m = 11, k = 301;
    const x = randomF32(r, k), y = randomF32(r, m * k), c0 = randomF32(r, m);
    using X = lw.matrix(1, k, x);
    using Y = lw.matrix(m, k, y);
    using C = lw.matrix(1, m, c0);
    lw.gemm(C, X, Y, { transY: true, alpha, beta });
    check(C.data, reference(x, y, c0, 1, m, k, false, true, alpha, beta), k, `gemv α=${alpha} β=${beta}`);
  }
});

test('batch 1 matches float64 on ragged K around the 16- and 4-float steps, 1×1 and 1×4097 (the matrix-vector path)', async () => {
  const lw = await lwUnderTest();
  const r = rng(17);
  const ks = [1, 2, 3, 4, 5, 15, 16, 17, 19, 31, 32, 33, 47, 63, 64, 65, 4095, 4096, 4097];
  for (const [i, k] of ks.entries()) {
    for (const m of [1, 3, 9]) {
      const [alpha, beta] = ([[1, 0], [0.5, 1], [-2, 0.25]] as const)[(i + m) % 3]!;
      const x = randomF32(r, k), y = randomF32(r, m * k), c0 = randomF32(r, m);
      using X = lw.matrix(1, k, x);
      using Y = lw.matrix(m, k, y);
      using C = lw.matrix(1, m, c0);
      lw.gemm(C, X, Y, { transY: true, alpha, beta });
      check(C.data, reference(x, y, c0, 1, m, k, false, true, alpha, beta), k, `gemv 1×${m}×${k} α=${alpha} β=${beta}`);
    }
  }
  // more rows than one thread's share, each longer than 4096
  const k = 4097, m = 37;
  const x = randomF32(r, k), y = randomF32(r, m * k);
  using X = lw.matrix(1, k, x);
  using Y = lw.matrix(m, k, y);
  using C = lw.matrix(1, m);
  lw.gemm(C, X, Y, { transY: true });
  check(C.data, reference(x, y, new Float32Array(m), 1, m, k, false, true, 1, 0), k, 'gemv 1×37×4097');
});

test('matmul allocates its result, and plain operands work', async () => {
  const lw = await lwUnderTest();
  const r = rng(4);
  const x = randomF32(r, 6 * 5), y = randomF32(r, 5 * 7);
  using P = lw.matmul({ rows: 6, cols: 5, data: x }, { rows: 5, cols: 7, data: y }, { alpha: 2 });
  check(P.data, reference(x, y, new Float32Array(42), 6, 7, 5, false, false, 2, 0), 5, 'matmul');
  const C = { rows: 6, cols: 7, data: new Float32Array(42).fill(1) };
  lw.gemm(C, { rows: 6, cols: 5, data: x }, { rows: 5, cols: 7, data: y }, { beta: 1 });
  check(C.data, reference(x, y, new Float32Array(42).fill(1), 6, 7, 5, false, false, 1, 1), 5, 'plain gemm written back');
});

test('gemm rejects mismatched shapes, aliasing and bad options with typed errors', async () => {
  const lw = await lwUnderTest();
  using X = lw.matrix(4, 5);
  using Y = lw.matrix(6, 5);
  using C = lw.matrix(4, 6);
  assertThrowsTyped(() => lw.gemm(C, X, Y), LoRAShapeError, ['gemm:', 'X is [4, 5]', 'Y is [6, 5]', 'X·Y', '5 and 6']);
  assertThrowsTyped(() => lw.gemm(C, X, Y, { transX: true, transY: true }), LoRAShapeError, ['Xᵀ·Yᵀ']);
  using C2 = lw.matrix(4, 7);
  assertThrowsTyped(() => lw.gemm(C2, X, Y, { transY: true }), LoRAShapeError, ['C is [4, 7]', '[4, 6]']);
  using S = lw.matrix(5, 5);
  assertThrowsTyped(() => lw.gemm(S, S, S), LoRATypeError, ['shares memory with X']);
  assertThrowsTyped(() => lw.gemm(C, X, Y, { transY: 'yes' as unknown as boolean }), LoRATypeError, ['options.transY']);
  assertThrowsTyped(() => lw.gemm(C, X, Y, { transY: true, alpha: Number.NaN }), LoRANonFiniteError, ['options.alpha', 'NaN']);
  assertThrowsTyped(() => lw.gemm(C, X, Y, { transY: true, alpha: 1e39 }), LoRANonFiniteError, ['options.alpha', 'f32']);
  assertThrowsTyped(() => lw.gemm(C, X, Y, { transY: true, beta: -1e39 }), LoRANonFiniteError, ['options.beta', 'f32']);
  assertThrowsTyped(() => lw.matmul(X, { rows: 5, cols: 2, data: new Float64Array(10) as unknown as Float32Array }), LoRATypeError, ['matmul:', 'Y.data']);
});

test.run();
