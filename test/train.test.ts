import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRARangeError, LoRAShapeError, LoRATypeError, type LoRAWasm, type Matrix, init, seededRandom } from '../src/index.js';
import { assertBitIdentical, assertThrowsTyped, lwUnderTest, randomF32, rng } from './helpers.js';

/** A low-rank regression task: targets come from W + ΔW with a rank-2 ΔW the adapter must find. */
function task(seed: number, n: number, dIn: number, dOut: number) {
  const g = rng(seed);
  const w = randomF32(g, dOut * dIn, 0.5);
  const u = randomF32(g, dOut * 2), v = randomF32(g, 2 * dIn);
  const x = randomF32(g, n * dIn);
  const y = new Float32Array(n * dOut);
  for (let i = 0; i < n; i++) for (let o = 0; o < dOut; o++) {
    let acc = 0;
    for (let j = 0; j < dIn; j++) {
      const dw = u[o * 2]! * v[j]! + u[o * 2 + 1]! * v[dIn + j]!;
      acc += x[i * dIn + j]! * (w[o * dIn + j]! + dw);
    }
    y[i * dOut + o] = acc;
  }
  return { w, x, y };
}

function run(lw: LoRAWasm, seed: number) {
  const { w, x, y } = task(seed, 256, 24, 16);
  const W = lw.matrix(16, 24, w);
  const model = lw.sequential([lw.linear({ W, r: 4, alpha: 8, seed })]);
  const opt = lw.adamw(model.parameters(), { lr: 0.03, weightDecay: 0 });
  const steps: number[] = [];
  const res = model.fit({ rows: 256, cols: 24, data: x }, { rows: 256, cols: 16, data: y }, {
    loss: 'mse', optimizer: opt, epochs: 30, batchSize: 32, seed,
    onProgress: (p) => steps.push(p.step),
  });
  return { res, W, w, model, opt, steps };
}

test('LoRA fine-tuning converges on a tiny low-rank task, deterministically, with W untouched', async () => {
  const lw = await lwUnderTest();
  const a = run(lw, 3);
  const first = a.res.epochLoss[0]!, last = a.res.epochLoss.at(-1)!;
  assert.ok(last <= first / 10, `loss fell from ${first} to ${last}: at least 10×`);
  assert.is(a.res.steps, 30 * 8);
  assert.equal(a.steps, Array.from({ length: 240 }, (_, i) => i + 1), 'progress reported every step');
  assertBitIdentical(a.W.data, a.w, 'W bytes unchanged by fit');
  const b = run(lw, 3);
  assert.equal(b.res.epochLoss, a.res.epochLoss, 'same seed, same losses bit for bit');
  const c = run(lw, 4);
  assert.not.equal(c.res.epochLoss, a.res.epochLoss, 'another seed, another run');
  for (const r of [a, b, c]) {
    r.model.dispose();
    r.opt.dispose();
    r.W.dispose();
  }
});

test('an MLP pretrained with dense layers classifies, then LoRA adapts it to a shifted task', async () => {
  const lw = await lwUnderTest();
  const g = rng(21);
  const n = 300, d = 8, classes = 3;
  const x = randomF32(g, n * d);
  const label = (shift: number) => Int32Array.from({ length: n }, (_, i) => {
    const s = x[i * d]! + shift * x[i * d + 1]!;
    return s < -0.3 ? 0 : s < 0.3 ? 1 : 2;
  });
  const X = { rows: n, cols: d, data: x };
  const base = lw.sequential([lw.dense({ dIn: d, dOut: 32, seed: 1 }), lw.relu(), lw.dense({ dIn: 32, dOut: classes, seed: 2 })]);
  const opt = lw.adamw(base.parameters(), { lr: 0.02 });
  base.fit(X, label(0), { loss: 'cross-entropy', optimizer: opt, epochs: 40, batchSize: 30, seed: 1 });
  const accuracy = (model: { predict(x: typeof X): { data: Float32Array; dispose(): void } }, y: Int32Array) => {
    const p = model.predict(X);
    const res = lw.softmaxCrossEntropy({ rows: n, cols: classes, data: p.data }, y);
    p.dispose();
    return res.correct / n;
  };
  const accA = accuracy(base, label(0));
  assert.ok(accA > 0.9, `pretrained accuracy on task A ${accA}`);

  const [d1, , d2] = base.layers as [import('../src/index.js').Linear, unknown, import('../src/index.js').Linear];
  const tuned = lw.sequential([
    lw.linear({ W: d1.W, bias: d1.bias, r: 4, alpha: 8, seed: 3 }),
    lw.relu(),
    lw.linear({ W: d2.W, bias: d2.bias, r: 2, alpha: 4, seed: 4 }),
  ]);
  const w1 = d1.W.toArray();
  const before = accuracy(tuned, label(1.5));
  const opt2 = lw.adamw(tuned.parameters(), { lr: 0.02, weightDecay: 0 });
  tuned.fit(X, label(1.5), { loss: 'cross-entropy', optimizer: opt2, epochs: 40, batchSize: 30, seed: 2 });
  const after = accuracy(tuned, label(1.5));
  assert.ok(after > before + 0.1 && after > 0.8, `task B accuracy ${before} → ${after}`);
  assertBitIdentical(d1.W.data, w1, 'the pretrained W was not touched');
  const unmergedP = tuned.predict(X);
  tuned.merge();
  const mergedP = tuned.predict(X);
  for (let i = 0; i < mergedP.length; i++) assert.ok(Math.abs(mergedP.data[i]! - unmergedP.data[i]!) < 1e-4, 'merged == unmerged');
  assert.is(tuned.trainableParameters, 4 * (d + 32) + 2 * (32 + classes));
  assert.is(tuned.frozenParameters, 32 * d + 32 + classes * 32 + classes);
  for (const m of [unmergedP, mergedP, tuned, opt, opt2, base]) m.dispose();
});

test('fit with a partial last batch equals the same loop written out by hand, bit for bit', async () => {
  const lw = await lwUnderTest();
  const { w, x, y } = task(12, 10, 6, 5);
  const make = () => {
    const layer = lw.linear({ W: { rows: 5, cols: 6, data: w }, r: 2, seed: 4 });
    const model = lw.sequential([layer]);
    return { layer, model, opt: lw.sgd(model.parameters(), { lr: 0.05, momentum: 0.5 }) };
  };
  const a = make();
  const res = a.model.fit({ rows: 10, cols: 6, data: x }, { rows: 10, cols: 5, data: y }, { loss: 'mse', optimizer: a.opt, epochs: 3, batchSize: 4, seed: 9 });
  assert.is(res.steps, 9, '3 batches (4, 4, 2) per epoch');
  // the same: seeded Fisher–Yates per epoch, batches of 4, 4 and 2, MSE, backward, step
  const b = make();
  const next = seededRandom(9);
  const order = Array.from({ length: 10 }, (_, i) => i);
  const losses: number[] = [];
  for (let epoch = 0; epoch < 3; epoch++) {
    for (let i = 9; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    let sum = 0;
    for (let b0 = 0; b0 < 10; b0 += 4) {
      const rows = Math.min(4, 10 - b0);
      const bx = new Float32Array(rows * 6), by = new Float32Array(rows * 5);
      for (let r = 0; r < rows; r++) {
        bx.set(x.subarray(order[b0 + r]! * 6, order[b0 + r]! * 6 + 6), r * 6);
        by.set(y.subarray(order[b0 + r]! * 5, order[b0 + r]! * 5 + 5), r * 5);
      }
      const out = b.model.forward({ rows, cols: 6, data: bx });
      using G = lw.matrix(rows, 5);
      sum += lw.mseLoss(out, { rows, cols: 5, data: by }, G);
      b.model.backward(G);
      b.opt.step();
    }
    losses.push(sum / 3);
  }
  assertBitIdentical(a.layer.A.data, b.layer.A.data, 'A');
  assertBitIdentical(a.layer.B.data, b.layer.B.data, 'B');
  assert.equal(res.epochLoss, losses, 'epoch losses include the partial batch');
  for (const m of [a, b]) {
    m.model.dispose();
    m.opt.dispose();
  }
});

test('a training loop allocates nothing after its first step at each batch size (heap counters)', async () => {
  const lw = await lwUnderTest();
  const g = rng(13);
  using W1 = lw.matrix(32, 24, randomF32(g, 32 * 24));
  using W2 = lw.matrix(6, 32, randomF32(g, 6 * 32));
  const model = lw.sequential([lw.linear({ W: W1, r: 4 }), lw.relu(), lw.linear({ W: W2, r: 2 })]);
  const opt = lw.adamw(model.parameters(), { lr: 0.01 });
  using X = lw.matrix(16, 24, randomF32(g, 16 * 24));
  using T = lw.matrix(16, 6, randomF32(g, 16 * 6));
  using G = lw.matrix(16, 6);
  const labels = Int32Array.from({ length: 16 }, (_, i) => i % 6);
  const step = (loss: 'mse' | 'ce') => {
    const y = model.forward(X);
    if (loss === 'mse') lw.mseLoss(y, T, G);
    else lw.softmaxCrossEntropy(y, labels, G);
    model.backward(G);
    opt.step();
  };
  step('mse');
  step('ce');
  const before = lw.memoryStats().allocations;
  for (let i = 0; i < 5; i++) {
    step('mse');
    step('ce');
  }
  assert.is(lw.memoryStats().allocations, before, 'forward + loss + backward + step allocated nothing');
  // fit, 10 rows in batches of 4, 4 and 2: after the first epoch no step allocates
  const counts: number[] = [];
  model.fit({ rows: 10, cols: 24, data: randomF32(g, 240) }, Array.from({ length: 10 }, (_, i) => i % 6), {
    loss: 'cross-entropy', optimizer: opt, epochs: 4, batchSize: 4, onProgress: () => counts.push(lw.memoryStats().allocations),
  });
  assert.is(counts.length, 12);
  assert.equal(counts.slice(3), new Array(9).fill(counts[2]), `allocations per step after epoch 1: ${counts.join(' ')}`);
  model.dispose();
  opt.dispose();
});

test('fit rejects bad options and data with typed errors', async () => {
  const lw = await lwUnderTest();
  const model = lw.sequential([lw.linear({ W: lw.matrix(3, 4), r: 1 })]);
  const opt = lw.sgd(model.parameters());
  const X = lw.matrix(5, 4);
  assertThrowsTyped(() => model.fit(X, lw.matrix(5, 3), { loss: 'mse' } as never), LoRATypeError, ['fit:', 'optimizer']);
  assertThrowsTyped(() => model.fit(X, lw.matrix(5, 3), { loss: 'l1' as 'mse', optimizer: opt }), LoRATypeError, ["'mse' or 'cross-entropy'"]);
  assertThrowsTyped(() => model.fit(X, lw.matrix(4, 3), { loss: 'mse', optimizer: opt }), LoRAShapeError, ['targets is [4, 3]']);
  assertThrowsTyped(() => model.fit(X, [0, 1], { loss: 'cross-entropy', optimizer: opt }), LoRAShapeError, ['2 labels']);
  assertThrowsTyped(() => model.fit(X, lw.matrix(5, 3), { loss: 'mse', optimizer: opt, epochs: 0 }), LoRARangeError, ['options.epochs']);
  assertThrowsTyped(() => model.fit(lw.matrix(5, 7), lw.matrix(5, 3), { loss: 'mse', optimizer: opt }), LoRAShapeError, ['X is [5, 7]']);
  assertThrowsTyped(() => lw.sequential([]), LoRATypeError, ['sequential: layers']);
  model.dispose();
});

test("sequential refuses another instance's built-in layers, and runs a user-written layer", async () => {
  const lw = await lwUnderTest();
  const other = await init({ build: lw.build, maxMemoryBytes: 2 ** 24 }); // a second instance
  const foreign = other.relu();
  assertThrowsTyped(() => lw.sequential([lw.relu(), foreign]), LoRATypeError, ['sequential: layers[1] belongs to another lora-wasm instance']);
  foreign.dispose();
  const negate = {
    inputGrad: true, trainableParameters: 0, frozenParameters: 0, disposed: 0,
    forward: (x: Matrix) => { const y = lw.matrix(x.rows, x.cols, x.data); y.data.forEach((v, i, d) => (d[i] = -v)); return y; },
    backward: () => undefined,
    parameters: () => [],
    dispose() { this.disposed++; },
  };
  const model = lw.sequential([lw.relu(), negate]);
  using y = model.forward({ rows: 1, cols: 3, data: Float32Array.from([1, -2, 3]) });
  assert.equal(Array.from(y.data), [-1, -0, -3]);
  model.dispose();
  assert.is(negate.disposed, 1, 'the model disposes user layers too');
});

test.run();
