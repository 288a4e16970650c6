// The seed article's 6×6, r = 2 example, checked against numpy (test/fixtures/seed_6x6_r2.py).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { loraScale } from '../src/index.js';
import fixture from './fixtures/seed_6x6_r2.json' with { type: 'json' };
import { U, assertWithinBound, lwUnderTest, reference } from './helpers.js';

const fx = fixture as {
  d_out: number; d_in: number; r: number; alpha: number; scale: number;
  params: { full: number; lora: number };
  W: number[]; A: number[]; B: number[]; x: number[];
  delta: number[]; merged: number[]; merged_scaled: number[]; y_on_the_fly: number[]; y_merged: number[];
};
const { d_out: dOut, d_in: dIn, r } = fx;
const f32 = (v: number[]) => Float32Array.from(v);
/** Magnitudes for the bound come from our own float64 reference of the same inputs. */
const mag = (s: number) => reference(f32(fx.W), f32(fx.A), f32(fx.B), dOut, r, dIn, s).mag;

test('W + A·B matches numpy on the 6×6, r = 2 example', async () => {
  const lw = await lwUnderTest();
  using W = lw.matrix(dOut, dIn, fx.W);
  using A = lw.matrix(dOut, r, fx.A);
  using B = lw.matrix(r, dIn, fx.B);
  using D = lw.delta(A, B);
  assertWithinBound(D.data, { value: Float64Array.from(fx.delta), mag: reference(undefined, f32(fx.A), f32(fx.B), dOut, r, dIn, 1).mag }, r, 'delta vs numpy');
  lw.merge(W, A, B);
  assertWithinBound(W.data, { value: Float64Array.from(fx.merged), mag: mag(1) }, r, 'merge vs numpy');
});

test('with s = alpha/r the merged and on-the-fly outputs match numpy', async () => {
  const lw = await lwUnderTest();
  const s = loraScale({ alpha: fx.alpha, r });
  assert.is(s, fx.scale);
  using W = lw.matrix(dOut, dIn, fx.W);
  using A = lw.matrix(dOut, r, fx.A);
  using B = lw.matrix(r, dIn, fx.B);
  lw.merge(W, A, B, { scale: s });
  assertWithinBound(W.data, { value: Float64Array.from(fx.merged_scaled), mag: mag(s) }, r, 'scaled merge vs numpy');
  // y = x·W'ᵀ from our merged W, in float64, against numpy's on-the-fly x·Wᵀ + s·(x·Bᵀ)·Aᵀ.
  const n = fx.x.length / dIn;
  const merged = W.data;
  for (let b = 0; b < n; b++) {
    for (let i = 0; i < dOut; i++) {
      let y = 0;
      let m = 0;
      for (let j = 0; j < dIn; j++) {
        y += fx.x[b * dIn + j]! * merged[i * dIn + j]!;
        m += Math.abs(fx.x[b * dIn + j]! * fx.merged_scaled[i * dIn + j]!);
      }
      const want = fx.y_on_the_fly[b * dOut + i]!;
      assert.ok(Math.abs(y - want) <= (r + 4) * U * 4 * m, `y[${b}, ${i}] = ${y} vs numpy ${want}`);
      assert.ok(Math.abs(fx.y_merged[b * dOut + i]! - want) <= 1e-12 * (1 + m), 'numpy agrees with itself');
    }
  }
});

test.run();
