// The seed article's 6×6, r = 2 example, checked against numpy (test/fixtures/seed_6x6_r2.py).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { loraScale } from '../src/index.js';
import fixture from './fixtures/seed_6x6_r2.json' with { type: 'json' };
import { lwUnderTest } from './helpers.js';
import { assertWithinBound, loraReference, rankReference } from './reference.js';

const fx = fixture as {
  d_out: number; d_in: number; r: number; alpha: number; scale: number;
  params: { full: number; lora: number };
  W: number[]; A: number[]; B: number[]; x: number[];
  delta: number[]; merged: number[]; merged_scaled: number[]; y_on_the_fly: number[]; y_merged: number[];
};
const { d_out: dOut, d_in: dIn, r } = fx;
const f32 = (v: number[]) => Float32Array.from(v);
/** Magnitudes for the bound come from our own float64 reference of the same inputs. */
const mag = (s: number) => rankReference(f32(fx.W), f32(fx.A), f32(fx.B), dOut, r, dIn, s).mag;

test('W + A·B matches numpy on the 6×6, r = 2 example', async () => {
  const lw = await lwUnderTest();
  using W = lw.matrix(dOut, dIn, fx.W);
  using A = lw.matrix(dOut, r, fx.A);
  using B = lw.matrix(r, dIn, fx.B);
  using D = lw.delta(A, B);
  assertWithinBound(D.data, { value: Float64Array.from(fx.delta), mag: rankReference(undefined, f32(fx.A), f32(fx.B), dOut, r, dIn, 1).mag }, r, 'delta vs numpy');
  lw.merge(W, A, B);
  assertWithinBound(W.data, { value: Float64Array.from(fx.merged), mag: mag(1) }, r, 'merge vs numpy');
});

test('with s = alpha/r the scaled merge matches numpy', async () => {
  const lw = await lwUnderTest();
  const s = loraScale({ alpha: fx.alpha, r });
  assert.is(s, fx.scale);
  using W = lw.matrix(dOut, dIn, fx.W);
  using A = lw.matrix(dOut, r, fx.A);
  using B = lw.matrix(r, dIn, fx.B);
  lw.merge(W, A, B, { scale: s });
  assertWithinBound(W.data, { value: Float64Array.from(fx.merged_scaled), mag: mag(s) }, r, 'scaled merge vs numpy');
});

test("a LoRALinear on the example gives numpy's outputs, on the fly and merged", async () => {
  const lw = await lwUnderTest();
  using W = lw.matrix(dOut, dIn, fx.W);
  const layer = lw.linear({ W, r, alpha: fx.alpha });
  assert.is(layer.scale, fx.scale);
  layer.A.data.set(fx.A);
  layer.B.data.set(fx.B);
  const n = fx.x.length / dIn;
  const X = { rows: n, cols: dIn, data: f32(fx.x) };
  // magnitudes from our float64 reference of the same inputs; values are numpy's
  const { mag: m } = loraReference(fx.x, fx.W, fx.A, fx.B, undefined, n, dIn, dOut, r, fx.scale);
  const onTheFly = layer.forward(X).toArray();
  assertWithinBound(onTheFly, { value: Float64Array.from(fx.y_on_the_fly), mag: m }, dIn + r, 'on the fly vs numpy', 8);
  layer.merge();
  const merged = layer.forward(X).toArray();
  assertWithinBound(merged, { value: Float64Array.from(fx.y_merged), mag: m }, dIn + r, 'merged vs numpy', 8);
  layer.dispose();
});

test.run();
