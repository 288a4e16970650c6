import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRADisposedError, LoRAShapeError, LoRAStateError, LoRATypeError, type LoRALinear, type LoRAWasm } from '../src/index.js';
import { BUILD, assertBitIdentical, assertThrowsTyped, lwUnderTest, randInt, randomF32, rng } from './helpers.js';
import { assertWithinBound, loraReference } from './reference.js';

interface Net {
  n: number; dIn: number; dOut: number; r: number; s: number;
  x: Float64Array; w: Float64Array; a: Float64Array; b: Float64Array; bias: Float64Array | undefined;
}

/** float64 forward of a Net, through the shared reference. */
const forward64 = (t: Net) => {
  const ref = loraReference(t.x, t.w, t.a, t.b, t.bias, t.n, t.dIn, t.dOut, t.r, t.s);
  return { y: ref.value, mag: ref.mag };
};

/** A layer with random W, bias, A and B (A nonzero, unlike a fresh adapter) and its float64 twin. */
function makeLayer(lw: LoRAWasm, seed: number, shape?: { n: number; dIn: number; dOut: number; r: number }, withBias = true) {
  const g = rng(seed);
  const n = shape?.n ?? randInt(g, 1, 12), dIn = shape?.dIn ?? randInt(g, 1, 40), dOut = shape?.dOut ?? randInt(g, 1, 40);
  const r = shape?.r ?? randInt(g, 1, Math.min(dIn, dOut));
  const w = randomF32(g, dOut * dIn), x = randomF32(g, n * dIn), bias = randomF32(g, dOut);
  const layer = lw.linear({ W: { rows: dOut, cols: dIn, data: w }, bias: withBias ? { rows: 1, cols: dOut, data: bias } : undefined, r, alpha: 2 * r, seed });
  layer.A.data.set(randomF32(g, dOut * r));
  const net: Net = {
    n, dIn, dOut, r, s: layer.scale, x: Float64Array.from(x), w: Float64Array.from(w),
    a: Float64Array.from(layer.A.data), b: Float64Array.from(layer.B.data), bias: withBias ? Float64Array.from(bias) : undefined,
  };
  return { layer, net, x };
}

/** The LoRA forward makes two passes over Y: 8 roundings of slack beyond the k-term sums. */
const within = (got: Float32Array, want: Float64Array, mag: Float64Array, k: number, label: string) =>
  assertWithinBound(got, { value: want, mag }, k, label, 8);

test(`forward matches the float64 reference, unmerged and merged (${BUILD})`, async () => {
  const lw = await lwUnderTest();
  for (let seed = 1; seed <= 40; seed++) {
    const shape = seed === 1 ? { n: 70, dIn: 300, dOut: 260, r: 17 } : undefined;
    const { layer, net, x } = makeLayer(lw, seed, shape, seed % 3 !== 0);
    const ref = forward64(net);
    const y = layer.forward({ rows: net.n, cols: net.dIn, data: x });
    within(y.data, ref.y, ref.mag, net.dIn + net.r, `unmerged forward seed ${seed}`);
    const unmerged = y.toArray();
    layer.merge();
    assert.ok(layer.merged);
    const ym = layer.forward({ rows: net.n, cols: net.dIn, data: x });
    within(ym.data, ref.y, ref.mag, net.dIn + net.r, `merged forward seed ${seed}`);
    // merged vs on-the-fly: both within the bound of the same float64 value, so within twice of each other
    within(ym.data, Float64Array.from(unmerged), ref.mag, 2 * (net.dIn + net.r), `merged vs unmerged seed ${seed}`);
    layer.unmerge();
    assertBitIdentical(layer.forward({ rows: net.n, cols: net.dIn, data: x }).data, unmerged, 'unmerge is exact');
    layer.dispose();
  }
});

test('a fresh adapter (PEFT init) changes nothing: forward equals X·Wᵀ exactly', async () => {
  const lw = await lwUnderTest();
  const g = rng(5);
  using W = lw.matrix(24, 33, randomF32(g, 24 * 33));
  using X = lw.matrix(7, 33, randomF32(g, 7 * 33));
  const layer = lw.linear({ W, r: 4, alpha: 8 });
  assert.ok(layer.A.data.every((v) => v === 0), 'A (lora_B) starts at zero');
  const bound = 1 / Math.sqrt(33);
  assert.ok(layer.B.data.every((v) => Math.abs(v) <= bound) && layer.B.data.some((v) => v !== 0), 'B ~ U(±1/√dIn)');
  using plain = lw.matmul(X, W, { transY: true });
  assertBitIdentical(layer.forward(X).data, plain.data, 'fresh LoRA forward == X·Wᵀ');
  const again = lw.linear({ W, r: 4, alpha: 8 });
  assertBitIdentical(again.B.data, layer.B.data, 'same seed, same B');
  const other = lw.linear({ W, r: 4, alpha: 8, seed: 1 });
  assert.not.equal(Array.from(other.B.data), Array.from(layer.B.data));
  const gauss = lw.linear({ W: lw.matrix(400, 400), r: 8, init: 'gaussian' });
  const bData = gauss.B.data;
  const std = Math.sqrt(bData.reduce((s, v) => s + v * v, 0) / bData.length);
  assert.ok(Math.abs(std - 1 / 8) < 0.01, `gaussian std ${std} ≈ 1/r`);
  assert.is(layer.trainableParameters, 4 * (24 + 33));
  assert.is(layer.frozenParameters, 24 * 33);
  for (const l of [layer, again, other, gauss]) l.dispose();
  gauss.W.dispose();
});

test('gradients of A, B and X match central finite differences of the float64 forward', async () => {
  const lw = await lwUnderTest();
  for (let seed = 100; seed < 125; seed++) {
    const shape = seed === 100 ? { n: 1, dIn: 9, dOut: 5, r: 5 } : seed === 101 ? { n: 3, dIn: 4, dOut: 4, r: 4 } : undefined;
    const { layer, net, x } = makeLayer(lw, seed, shape);
    const rw = randomF32(rng(seed + 7), net.n * net.dOut); // L = Σ R ⊙ Y, so G = R
    layer.forward({ rows: net.n, cols: net.dIn, data: x });
    const dx = layer.backward({ rows: net.n, cols: net.dOut, data: rw })!.toArray();
    const grads: [string, Float64Array, Float32Array][] = [
      ['A', net.a, layer.gradA.toArray()], ['B', net.b, layer.gradB.toArray()], ['X', net.x, dx],
    ];
    const loss = () => forward64(net).y.reduce((s, v, i) => s + v * rw[i]!, 0);
    for (const [name, param, analytic] of grads) {
      const fd = new Float64Array(param.length);
      for (let i = 0; i < param.length; i++) {
        const keep = param[i]!;
        const h = 1e-3 * Math.max(1, Math.abs(keep));
        param[i] = keep + h;
        const up = loss();
        param[i] = keep - h;
        const down = loss();
        param[i] = keep;
        fd[i] = (up - down) / (2 * h); // L is linear in each single entry: exact up to f64 rounding
      }
      const scale = fd.reduce((m, v) => Math.max(m, Math.abs(v)), 0) + 1e-30;
      for (let i = 0; i < fd.length; i++) {
        const err = Math.abs(analytic[i]! - fd[i]!);
        // f32 products over at most n + dIn + dOut terms, relative to the gradient's scale
        if (!(err <= 2e-5 * scale)) assert.unreachable(`seed ${seed}: ∂L/∂${name}[${i}] = ${analytic[i]} but finite differences give ${fd[i]}`);
      }
    }
    layer.dispose();
  }
});

test('training never changes a byte of W or bias', async () => {
  const lw = await lwUnderTest();
  const { layer, x } = makeLayer(lw, 9, { n: 16, dIn: 37, dOut: 21, r: 3 });
  const w = layer.W.toArray();
  const bias = layer.bias!.toArray();
  const opt = lw.adamw(layer.parameters(), { lr: 0.05 });
  const target = randomF32(rng(10), 16 * 21);
  using grad = lw.matrix(16, 21);
  const a0 = layer.A.toArray();
  for (let step = 0; step < 20; step++) {
    const y = layer.forward({ rows: 16, cols: 37, data: x });
    lw.mseLoss(y, { rows: 16, cols: 21, data: target }, grad);
    layer.backward(grad);
    opt.step();
    if (step === 10) layer.merge().unmerge();
  }
  assert.not.equal(Array.from(layer.A.data), Array.from(a0), 'A was trained');
  assertBitIdentical(layer.W.data, w, 'W bytes unchanged');
  assertBitIdentical(layer.bias!.data, bias, 'bias bytes unchanged');
  opt.dispose();
  layer.dispose();
});

test('bad input and wrong call order give typed errors', async () => {
  const lw = await lwUnderTest();
  using W = lw.matrix(6, 10);
  const layer: LoRALinear = lw.linear({ W, r: 2, inputGrad: true });
  assertThrowsTyped(() => layer.backward(lw.matrix(3, 6)), LoRAStateError, ['backward:', 'forward() before backward()']);
  assertThrowsTyped(() => layer.forward(lw.matrix(3, 9)), LoRAShapeError, ['forward:', 'X is [3, 9]', '10 input features', '[6, 10]']);
  layer.forward(lw.matrix(3, 10));
  assertThrowsTyped(() => layer.backward(lw.matrix(3, 5)), LoRAShapeError, ['backward:', 'G is [3, 5]', 'Y [3, 6]']);
  assertThrowsTyped(() => layer.backward(lw.matrix(4, 6)), LoRAShapeError, ['G is [4, 6]']);
  layer.merge();
  assertThrowsTyped(() => layer.backward(lw.matrix(3, 6)), LoRAStateError, ['merged', 'unmerge()']);
  layer.unmerge();
  assertThrowsTyped(() => layer.backward(lw.matrix(3, 6)), LoRAStateError, ['forward() before backward()']);
  assertThrowsTyped(() => lw.linear({ W, r: 7 }), LoRAShapeError, ['linear:', 'r is 7', 'min(dOut, dIn) = 6']);
  assertThrowsTyped(() => lw.linear({ W, r: 0 }), LoRAShapeError, ['linear: r must be a positive integer']);
  assertThrowsTyped(() => lw.linear({ W, r: 2, bias: lw.matrix(1, 5) }), LoRAShapeError, ['bias is [1, 5]', '[1, 6]']);
  assertThrowsTyped(() => lw.linear({ W, r: 2, init: 'xavier' as 'kaiming' }), LoRATypeError, ["init must be 'kaiming' or 'gaussian'"]);
  assertThrowsTyped(() => lw.linear(null as never), LoRATypeError, ['linear: options must be an object']);
  layer.dispose();
  assertThrowsTyped(() => layer.forward(lw.matrix(3, 10)), LoRADisposedError, ['forward:', 'LoRALinear [6, 10] was disposed']);
  assertThrowsTyped(() => layer.merge(), LoRADisposedError, ['merge:', 'disposed']);
  assertThrowsTyped(() => layer.unmerge(), LoRADisposedError, ['unmerge:', 'disposed']);
  assertThrowsTyped(() => layer.parameters(), LoRADisposedError, ['parameters:', 'disposed']);
  assert.ok(!W.disposed, 'a W the user passed in stays the user’s');
});

test.run();
