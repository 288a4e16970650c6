import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRANonFiniteError, type LoRAWasm, type Matrix, loraScale } from '../src/index.js';
import { BUILD, assertBitIdentical, assertThrowsTyped, lwUnderTest, randInt, randomF32, rng } from './helpers.js';
import { U, assertWithinBound, rankReference } from './reference.js';
import { SHAPES, type Shape } from './shapes.js';

interface Case {
  shape: Shape;
  s: number;
  w: Float32Array;
  a: Float32Array;
  b: Float32Array;
}

function makeCase(shape: Shape, seed: number): Case {
  const r = rng(seed);
  const scales = [1, 0.5, 2, -0.75, loraScale({ alpha: 16, r: shape.r }), loraScale({ alpha: 8, r: shape.r, rslora: true })];
  return {
    shape,
    s: Math.fround(scales[seed % scales.length]!),
    w: randomF32(r, shape.dOut * shape.dIn, 2),
    a: randomF32(r, shape.dOut * shape.r),
    b: randomF32(r, shape.r * shape.dIn),
  };
}

const label = (c: Case): string => `[${c.shape.dOut}×${c.shape.dIn}, r=${c.shape.r}, s=${c.s}] (${BUILD})`;

test(`delta, merge, mergeInto and unmerge match the float64 reference on ${SHAPES.length} shapes`, async () => {
  const lw = await lwUnderTest();
  SHAPES.forEach((shape, n) => {
    const c = makeCase(shape, n + 1);
    const { dOut, dIn, r } = shape;
    const A = lw.matrix(dOut, r, c.a);
    const B = lw.matrix(r, dIn, c.b);
    const W = lw.matrix(dOut, dIn, c.w);
    const out = lw.matrix(dOut, dIn);
    try {
      const ref = rankReference(c.w, c.a, c.b, dOut, r, dIn, c.s);
      const refDelta = rankReference(undefined, c.a, c.b, dOut, r, dIn, c.s);

      const D = lw.delta(A, B, { scale: c.s });
      assertWithinBound(D.data, refDelta, r, `delta ${label(c)}`);

      lw.mergeInto(out, W, A, B, { scale: c.s });
      assertWithinBound(out.data, ref, r, `mergeInto ${label(c)}`);
      assertBitIdentical(W.data, c.w, `mergeInto left W0 untouched ${label(c)}`);

      lw.merge(W, A, B, { scale: c.s });
      assertWithinBound(W.data, ref, r, `merge ${label(c)}`);
      assertBitIdentical(out.data, W.data, `mergeInto is bit-identical to merge ${label(c)}`);

      // One Δ̂ for every mode: merge == fl(W0 + delta) exactly.
      const fused = new Float32Array(c.w.length);
      const d = D.data;
      for (let i = 0; i < fused.length; i++) fused[i] = c.w[i]! + d[i]!;
      assertBitIdentical(W.data, fused, `merge == fl(W0 + delta) ${label(c)}`);

      // merge → unmerge: |W'' − W0| ≤ u·(2|W0| + |Δ̂|)·(1 + 2u), i.e. within ~2 ulp.
      lw.unmerge(W, A, B, { scale: c.s });
      const back = W.data;
      for (let i = 0; i < back.length; i++) {
        const bound = U * (2 * Math.abs(c.w[i]!) + Math.abs(d[i]!)) * (1 + 2 * U);
        const err = Math.abs(back[i]! - c.w[i]!);
        if (!(err <= bound)) assert.unreachable(`round trip ${label(c)}: element ${i} drifted ${err} > ${bound}`);
      }
      D.dispose();
    } finally {
      for (const m of [A, B, W, out]) m.dispose();
    }
  });
});

test('the bound helper rejects a kernel that is off by one rank-1 term', () => {
  const r = rng(7);
  const dOut = 5, dIn = 6, k = 3;
  const a = randomF32(r, dOut * k);
  const b = randomF32(r, k * dIn);
  const ref = rankReference(undefined, a, b, dOut, k, dIn, 1);
  const wrong = Float32Array.from(ref.value);
  assertWithinBound(wrong, ref, k, 'exact'); // the f32 rounding of the reference passes
  // Drop the k = 0 term from element 7: the kind of bug an edge tile makes.
  const i = 1, j = 1;
  wrong[i * dIn + j] = wrong[i * dIn + j]! - a[i * k]! * b[j]!;
  let caught = '';
  try {
    assertWithinBound(wrong, ref, k, 'perturbed');
  } catch (e) {
    caught = (e as Error).message; // uvu's assert.throws rethrows assertion errors, so catch by hand
  }
  assert.match(caught, /perturbed: element 7 /);
});

test('plain { rows, cols, data } operands give bit-identical results and are written back', async () => {
  const lw = await lwUnderTest();
  const c = makeCase({ dOut: 37, dIn: 45, r: 6 }, 99);
  const W = { rows: 37, cols: 45, data: c.w.slice() };
  const A = { rows: 37, cols: 6, data: c.a };
  const B = { rows: 6, cols: 45, data: c.b };
  const returned = lw.merge(W, A, B, { scale: c.s });
  assert.is(returned, W, 'merge returns its W argument');
  using Wm = lw.matrix(37, 45, c.w);
  using Am = lw.matrix(37, 6, c.a);
  using Bm = lw.matrix(6, 45, c.b);
  lw.merge(Wm, Am, Bm, { scale: c.s });
  assertBitIdentical(W.data, Wm.data, 'plain merge == resident merge');

  const out = { rows: 37, cols: 45, data: new Float32Array(37 * 45) };
  lw.mergeInto(out, { rows: 37, cols: 45, data: c.w }, A, B, { scale: c.s });
  assertBitIdentical(out.data, Wm.data, 'plain mergeInto == resident merge');

  using D = lw.delta(A, Bm, { scale: c.s });
  assertWithinBound(D.data, rankReference(undefined, c.a, c.b, 37, 6, 45, c.s), 6, 'delta on mixed operands');
  const before = lw.memoryStats().liveBlocks;
  lw.unmerge(W, A, B, { scale: c.s });
  assert.is(lw.memoryStats().liveBlocks, before, 'staging copies are freed');
});

test('a plain object whose data is a Matrix view is used in place, without a copy', async () => {
  const lw = await lwUnderTest();
  const c = makeCase({ dOut: 9, dIn: 10, r: 2 }, 5);
  using W = lw.matrix(9, 10, c.w);
  using A = lw.matrix(9, 2, c.a);
  using B = lw.matrix(2, 10, c.b);
  lw.merge({ rows: 9, cols: 10, data: W.data }, A, B, { scale: c.s });
  assertWithinBound(W.data, rankReference(c.w, c.a, c.b, 9, 2, 10, c.s), 2, 'merge through W.data');
});

test('scale defaults to 1 and is applied in f32', async () => {
  const lw = await lwUnderTest();
  const c = makeCase({ dOut: 6, dIn: 10, r: 3 }, 11);
  using A = lw.matrix(6, 3, c.a);
  using B = lw.matrix(3, 10, c.b);
  using D1 = lw.delta(A, B);
  assertWithinBound(D1.data, rankReference(undefined, c.a, c.b, 6, 3, 10, 1), 3, 'default scale');
  using D2 = lw.delta(A, B, { scale: 0.1 });
  assertWithinBound(D2.data, rankReference(undefined, c.a, c.b, 6, 3, 10, Math.fround(0.1)), 3, 'scale 0.1');
  using D3 = lw.delta(A, B, { scale: 0 });
  assert.ok(D3.data.every((v) => v === 0), 'scale 0 gives a zero delta');
});

function nonFiniteAdapterCase(lw: LoRAWasm, seed: number, bad: number) {
  const r = rng(seed);
  const dOut = randInt(r, 1, 40), dIn = randInt(r, 1, 40), k = randInt(r, 1, Math.min(dOut, dIn));
  const a = randomF32(r, dOut * k), b = randomF32(r, k * dIn), w = randomF32(r, dOut * dIn);
  const inA = r() < 0.5;
  const target = inA ? a : b;
  const at = randInt(r, 0, target.length - 1);
  target[at] = bad;
  const cols = inA ? k : dIn;
  const name = `${inA ? 'A' : 'B'}[${Math.floor(at / cols)}, ${at % cols}]`;
  return { W: lw.matrix(dOut, dIn, w), A: lw.matrix(dOut, k, a), B: lw.matrix(k, dIn, b), w, name };
}

test('NaN/±Inf anywhere in A or B is rejected by every operation, naming the element, with W untouched', async () => {
  const lw = await lwUnderTest();
  const bads = [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY];
  for (let seed = 1; seed <= 90; seed++) {
    const { W, A, B, w, name } = nonFiniteAdapterCase(lw, seed, bads[seed % 3]!);
    const out = lw.matrix(W.rows, W.cols, w);
    const ops: [string, () => unknown][] = [
      ['merge', () => lw.merge(W, A, B, { scale: 0.5 })],
      ['unmerge', () => lw.unmerge(W, A, B, { scale: 0.5, safe: true })],
      ['mergeInto', () => lw.mergeInto(out, W, A, B)],
      ['delta', () => lw.delta(A, B)],
    ];
    const live = lw.memoryStats().liveBlocks;
    for (const [fn, call] of ops) {
      assertThrowsTyped(call, LoRANonFiniteError, [`${fn}:`, name]);
      assertBitIdentical(W.data, w, `${fn} left W untouched (${name})`);
      assertBitIdentical(out.data, w, `${fn} left out untouched (${name})`);
      assert.is(lw.memoryStats().liveBlocks, live, `${fn} freed its scratch after rejecting`);
    }
    for (const m of [W, A, B, out]) m.dispose();
  }
});

function bigW(lw: LoRAWasm, rows: number, cols: number, value: number): { W: Matrix; w: Float32Array } {
  const w = new Float32Array(rows * cols).fill(value);
  for (let i = 0; i < w.length; i += 7) w[i] = -value / 3;
  return { W: lw.matrix(rows, cols, w), w };
}

test('safe: true leaves W bit-for-bit untouched when W holds NaN/Inf anywhere, and names the element', async () => {
  const lw = await lwUnderTest();
  const rows = 11, cols = 13; // 143 elements: vector body and scalar tail of every scan
  using A = lw.matrix(rows, 2, randomF32(rng(1), rows * 2));
  using B = lw.matrix(2, cols, randomF32(rng(2), 2 * cols));
  for (const at of [0, 1, 15, 16, 74, 127, 128, 140, 142]) {
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      const { W, w } = bigW(lw, rows, cols, 0.5);
      W.data[at] = bad;
      w[at] = bad;
      const where = `W[${Math.floor(at / cols)}, ${at % cols}] is not finite`;
      assertThrowsTyped(() => lw.merge(W, A, B, { safe: true }), LoRANonFiniteError, [where, 'untouched']);
      assertBitIdentical(W.data, w, `W untouched (${bad} at ${at})`);
      W.dispose();
    }
  }
});

test('safe: true refuses a merge that would overflow f32, leaving W untouched', async () => {
  const lw = await lwUnderTest();
  // W near f32 max (3.4e38); Δ = +1e38 on every element overflows the positive entries.
  for (const shape of [{ rows: 4, cols: 8 }, { rows: 37, cols: 41 }]) {
    const { W, w } = bigW(lw, shape.rows, shape.cols, 3e38);
    using A = lw.matrix(shape.rows, 1, new Float32Array(shape.rows).fill(1e19));
    using B = lw.matrix(1, shape.cols, new Float32Array(shape.cols).fill(1e19));
    assertThrowsTyped(() => lw.merge(W, A, B, { safe: true }), LoRANonFiniteError, ['overflow', 'untouched']);
    assertBitIdentical(W.data, w, 'W untouched after refused overflow');
    using out = lw.matrix(shape.rows, shape.cols);
    assertThrowsTyped(() => lw.mergeInto(out, W, A, B, { safe: true }), LoRANonFiniteError, ['mergeInto:', 'overflow']);
    assert.ok(out.data.every((v) => v === 0), 'mergeInto left out untouched');
    // Without safe the same merge goes through and W holds +Infinity: safe is what prevents it.
    lw.merge(W, A, B);
    assert.ok(W.data.some((v) => v === Number.POSITIVE_INFINITY), 'unsafe merge overflowed as documented');
    W.dispose();
  }
});

test('safe: true accepts near-overflow values whose exact result is finite (no false alarm)', async () => {
  const lw = await lwUnderTest();
  const rows = 9, cols = 19;
  const { W, w } = bigW(lw, rows, cols, 3e38);
  const a = new Float32Array(rows).fill(1e19);
  const b = new Float32Array(cols).fill(-1e19); // Δ = -1e38 pulls values down, never over
  using A = lw.matrix(rows, 1, a);
  using B = lw.matrix(1, cols, b);
  lw.merge(W, A, B, { safe: true });
  assertWithinBound(W.data, rankReference(w, a, b, rows, 1, cols, 1), 1, 'safe near-overflow merge');
  W.dispose();
});

test.run();
