// Error paths of the dense and ReLU layers, optimizers, losses and fit that the other suites do not reach.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRADisposedError, LoRAError, LoRARangeError, LoRAShapeError, LoRAStateError, LoRATypeError, init } from '../src/index.js';
import { WasmHeap } from '../src/memory/heap.js';
import { BUILD, assertBitIdentical, assertThrowsTyped, lwUnderTest, randomF32, rng } from './helpers.js';
import { assertWithinBound, gemm64 } from './reference.js';

test('dense layer: bad options, wrong widths and call order give typed errors', async () => {
  const lw = await lwUnderTest();
  assertThrowsTyped(() => lw.dense(null as never), LoRATypeError, ['dense: options must be an object']);
  assertThrowsTyped(() => lw.dense({ dIn: 0, dOut: 3 }), LoRAShapeError, ['dense: dIn must be a positive integer']);
  assertThrowsTyped(() => lw.dense({ inFeatures: 0, outFeatures: 3 }), LoRAShapeError, ['dense: inFeatures must be a positive integer']);
  assertThrowsTyped(() => lw.dense({ dIn: 5 } as never), LoRAShapeError, ['dense: dOut must be a positive integer, got undefined']);
  assertThrowsTyped(() => lw.dense({ dIn: 5, dOut: 3, inFeatures: 4 } as never), LoRATypeError, ['dense: dIn is 5 but inFeatures (its alias) is 4']);
  const d = lw.dense({ dIn: 5, dOut: 3 });
  assertThrowsTyped(() => d.backward(lw.matrix(2, 3)), LoRAStateError, ['backward:', 'forward() before backward()']);
  assertThrowsTyped(() => d.forward(lw.matrix(2, 4)), LoRAShapeError, ['forward:', 'X is [2, 4]', '5 input features']);
  d.forward(lw.matrix(2, 5));
  assertThrowsTyped(() => d.backward(lw.matrix(2, 4)), LoRAShapeError, ['G is [2, 4]', 'Y [2, 3]']);
  d.dispose();
  assertThrowsTyped(() => d.forward(lw.matrix(2, 5)), LoRADisposedError, ['forward:', 'Linear [3, 5] was disposed']);
  assertThrowsTyped(() => d.backward(lw.matrix(2, 3)), LoRADisposedError, ['backward:', 'disposed']);
  assertThrowsTyped(() => d.parameters(), LoRADisposedError, ['parameters:', 'disposed']);
});

test('dense accepts PyTorch names inFeatures/outFeatures as aliases of dIn/dOut, with the same init', async () => {
  const lw = await lwUnderTest();
  const a = lw.dense({ dIn: 4, dOut: 3, seed: 7 });
  const b = lw.dense({ inFeatures: 4, outFeatures: 3, seed: 7 });
  const c = lw.dense({ dIn: 4, dOut: 3, inFeatures: 4, outFeatures: 3, seed: 7 } as never);
  for (const l of [b, c]) {
    assert.is(l.dIn, 4);
    assert.is(l.dOut, 3);
    assertBitIdentical(l.W.data, a.W.data, 'same W');
    assertBitIdentical(l.bias.data, a.bias.data, 'same bias');
  }
  for (const l of [a, b, c]) l.dispose();
});

test('ReLU layer: backward before forward and a wrong G shape give typed errors', async () => {
  const lw = await lwUnderTest();
  const r = lw.relu();
  assertThrowsTyped(() => r.backward(lw.matrix(2, 2)), LoRAStateError, ['forward() before backward()']);
  const y = r.forward({ rows: 1, cols: 4, data: Float32Array.from([-1, 0, 2, -3]) });
  assert.equal(Array.from(y.data), [0, 0, 2, 0]);
  assertThrowsTyped(() => r.backward(lw.matrix(1, 3)), LoRAShapeError, ['G is [1, 3]', 'Y [1, 4]']);
  assert.equal(Array.from(r.backward({ rows: 1, cols: 4, data: Float32Array.from([5, 6, 7, 8]) }).data), [0, 0, 7, 0]);
  r.dispose();
  assertThrowsTyped(() => r.forward(lw.matrix(1, 4)), LoRADisposedError, ['forward:', 'ReLU was disposed']);
  assertThrowsTyped(() => r.backward(lw.matrix(1, 4)), LoRADisposedError, ['backward:', 'disposed']);
  r.dispose(); // idempotent
});

test('an optimizer over a disposed parameter, and losses with a bad grad, throw typed errors', async () => {
  const lw = await lwUnderTest();
  const value = lw.matrix(2, 2), grad = lw.matrix(2, 2);
  const opt = lw.sgd([{ name: 'p', value, grad }]);
  value.dispose();
  assertThrowsTyped(() => opt.step(), LoRADisposedError, ['step:', 'disposed']);
  opt.dispose();
  const p = lw.matrix(2, 3), t = lw.matrix(2, 3);
  assertThrowsTyped(() => lw.mseLoss(p, t, lw.matrix(3, 2)), LoRAShapeError, ['grad is [3, 2]', 'pred is [2, 3]']);
  assertThrowsTyped(() => lw.mseLoss(p, t, t), LoRATypeError, ['grad [2, 3] shares memory with target']);
  assertThrowsTyped(() => lw.softmaxCrossEntropy(p, [0, 1], lw.matrix(2, 2)), LoRAShapeError, ['grad is [2, 2]', 'logits is [2, 3]']);
  assertThrowsTyped(() => lw.gemm(lw.matrix(2, 2), p, p, 7 as never), LoRATypeError, ['gemm: options must be an object']);
});

test('fit rejects labels for mse, a Matrix for cross-entropy, a bad batch size, and mismatched output widths', async () => {
  const lw = await lwUnderTest();
  const model = lw.sequential([lw.dense({ dIn: 3, dOut: 2 })]);
  const opt = lw.sgd(model.parameters());
  const X = lw.matrix(4, 3);
  assertThrowsTyped(() => model.fit(X, [0, 1, 0, 1] as never, { loss: 'mse', optimizer: opt }), LoRATypeError, ['fit: targets must be a Matrix']);
  assertThrowsTyped(() => model.fit(X, lw.matrix(4, 2) as never, { loss: 'cross-entropy', optimizer: opt }), LoRATypeError, ['integer labels']);
  assertThrowsTyped(() => model.fit(X, lw.matrix(4, 2), { loss: 'mse', optimizer: opt, batchSize: 0 }), LoRARangeError, ['options.batchSize']);
  assertThrowsTyped(() => model.fit(X, lw.matrix(4, 5), { loss: 'mse', optimizer: opt }), LoRAShapeError, ['outputs 2 columns but targets have 5']);
  // one seed rule everywhere (ops/operands.ts seedOption): an integer in [0, 2³² − 1]
  assertThrowsTyped(() => lw.linear({ W: lw.matrix(3, 3), r: 1, seed: '7' as never }), LoRATypeError, ['linear: seed must be an integer in [0, 4294967295]']);
  for (const seed of [Number.NaN, 1.5, -1, 2 ** 32]) {
    assertThrowsTyped(() => lw.linear({ W: lw.matrix(3, 3), r: 1, seed }), LoRARangeError, ['linear: seed must be an integer in [0, 4294967295]']);
    assertThrowsTyped(() => lw.dense({ dIn: 2, dOut: 2, seed }), LoRARangeError, ['seed must be an integer in [0, 4294967295]']);
  }
  const w = model.layers[0]!.parameters()[0]!.value.toArray();
  assertThrowsTyped(() => model.fit(X, [0, 1, 2, 0], { loss: 'cross-entropy', optimizer: opt }), LoRARangeError, ['labels[2] is 2', '[0, 2)']);
  assertThrowsTyped(() => model.fit(X, [0, -1, 1, 0], { loss: 'cross-entropy', optimizer: opt }), LoRARangeError, ['labels[1] is -1', 'integers in [0, 2³¹)']);
  assert.equal(Array.from(model.layers[0]!.parameters()[0]!.value.data), Array.from(w), 'no update was made');
  model.dispose();
});

test('init reports an engine without SIMD128 as a LoRAError', async () => {
  const validate = WebAssembly.validate;
  WebAssembly.validate = () => false;
  try {
    await init({ build: BUILD, maxMemoryBytes: 3 * 2 ** 20 });
    assert.unreachable('init succeeded without SIMD');
  } catch (e) {
    assert.instance(e, LoRAError);
    assert.match((e as Error).message, /no WebAssembly SIMD128 support/);
  } finally {
    WebAssembly.validate = validate;
  }
});

test('freeing a block twice is reported as an internal LoRAError', () => {
  const heap = new WasmHeap(new WebAssembly.Memory({ initial: 1, maximum: 4 }), 0, 4 * 65536);
  const p = heap.alloc(100, 'test');
  heap.free(p);
  try {
    heap.free(p);
    assert.unreachable('double free accepted');
  } catch (e) {
    assert.instance(e, LoRAError);
    assert.match((e as Error).message, /internal: free of a wasm block that is not live/);
  }
});

test('dense layer gradients (gradW, gradBias, dX) match float64', async () => {
  const lw = await lwUnderTest();
  for (const [n, dIn, dOut] of [[1, 1, 1], [5, 9, 7], [33, 17, 12]] as const) {
    const d = lw.dense({ dIn, dOut, seed: n });
    const g = rng(n + 40);
    const x = randomF32(g, n * dIn), gy = randomF32(g, n * dOut);
    const w = d.W.toArray(), bias = d.bias.toArray();
    const y = d.forward({ rows: n, cols: dIn, data: x });
    const X = { data: x, rows: n, cols: dIn };
    const G = { data: gy, rows: n, cols: dOut };
    const c0 = Float64Array.from({ length: n * dOut }, (_, q) => bias[q % dOut]!);
    assertWithinBound(y.data, gemm64(X, { data: w, rows: dOut, cols: dIn, trans: true }, { beta: 1, c0 }), dIn, `forward ${n}×${dIn}→${dOut}`, 6);
    const dx = d.backward(G)!;
    assertWithinBound(d.gradW.data, gemm64({ ...G, trans: true }, X), n, 'gradW = Gᵀ·X', 6);
    assertWithinBound(d.gradBias.data, gemm64({ data: new Float64Array(n).fill(1), rows: 1, cols: n }, G), n, 'gradBias = Σ rows of G', 6);
    assertWithinBound(dx.data, gemm64(G, { data: w, rows: dOut, cols: dIn }), dOut, 'dX = G·W', 6);
    d.dispose();
  }
});

test.run();
