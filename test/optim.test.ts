import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRADisposedError, LoRANonFiniteError, LoRARangeError, LoRAShapeError, LoRATypeError, type Parameter } from '../src/index.js';
import { assertThrowsTyped, lwUnderTest, randomF32, rng } from './helpers.js';

async function setup(n: number, seed: number) {
  const lw = await lwUnderTest();
  const g = rng(seed);
  const p0 = randomF32(g, n);
  const value = lw.matrix(1, n, p0);
  const grad = lw.matrix(1, n);
  const grads = Array.from({ length: 6 }, () => randomF32(g, n));
  return { lw, value, grad, p0, grads, params: [{ name: 'p', value, grad }] as Parameter[] };
}

/** f32 rounding of O(1) values over a few steps stays ~1e-6; a wrong update is off by ~lr·g ≥ 1e-3. */
const close = (got: Float32Array, want: Float64Array, rel: number, label: string) => {
  for (let i = 0; i < got.length; i++) {
    if (!(Math.abs(got[i]! - want[i]!) <= rel * (Math.abs(want[i]!) + 1))) assert.unreachable(`${label}: [${i}] ${got[i]} vs ${want[i]}`);
  }
};

test('AdamW follows torch.optim.AdamW (bias correction, decoupled decay) over 6 steps', async () => {
  const n = 37; // vector body and scalar tail
  const { value, grad, p0, grads, params, lw } = await setup(n, 1);
  const opt = lw.adamw(params, { lr: 0.01, beta1: 0.9, beta2: 0.99, eps: 1e-6, weightDecay: 0.1 });
  const p = Float64Array.from(p0), m = new Float64Array(n), v = new Float64Array(n);
  grads.forEach((g, t) => {
    grad.data.set(g);
    opt.step();
    const bc1 = 1 - 0.9 ** (t + 1), bc2 = 1 - 0.99 ** (t + 1);
    for (let i = 0; i < n; i++) {
      p[i] = p[i]! * (1 - 0.01 * 0.1);
      m[i] = 0.9 * m[i]! + 0.1 * g[i]!;
      v[i] = 0.99 * v[i]! + 0.01 * g[i]! * g[i]!;
      p[i] = p[i]! - (0.01 * (m[i]! / bc1)) / (Math.sqrt(v[i]! / bc2) + 1e-6);
    }
    close(value.data, p, 1e-5, `adamw step ${t + 1}`);
  });
  assert.is(opt.t, 6);
  opt.dispose();
  assertThrowsTyped(() => opt.step(), LoRADisposedError, ['step:', 'this optimizer was disposed']);
});

test('SGD with momentum, weight decay and nesterov follows torch.optim.SGD', async () => {
  for (const nesterov of [false, true]) {
    const n = 23;
    const { value, grad, p0, grads, params, lw } = await setup(n, 2);
    const opt = lw.sgd(params, { lr: 0.1, momentum: 0.9, weightDecay: 0.01, nesterov });
    const p = Float64Array.from(p0), buf = new Float64Array(n);
    grads.forEach((g, t) => {
      grad.data.set(g);
      opt.step();
      for (let i = 0; i < n; i++) {
        const gi = g[i]! + 0.01 * p[i]!;
        buf[i] = t === 0 ? gi : 0.9 * buf[i]! + gi;
        p[i] = p[i]! - 0.1 * (nesterov ? gi + 0.9 * buf[i]! : buf[i]!);
      }
      close(value.data, p, 1e-5, `sgd${nesterov ? ' nesterov' : ''} step ${t + 1}`);
    });
    opt.dispose();
  }
});

test('AdamW and SGD update several parameters of different shapes, each by its own torch formula', async () => {
  const lw = await lwUnderTest();
  const shapes = [[3, 5], [1, 7], [4, 4], [9, 1]] as const;
  for (const kind of ['adamw', 'sgd'] as const) {
    const g = rng(kind === 'adamw' ? 31 : 32);
    const p0 = shapes.map(([r, c]) => randomF32(g, r * c));
    const params = shapes.map(([r, c], i) => ({ name: `p${i}`, value: lw.matrix(r, c, p0[i]!), grad: lw.matrix(r, c) }));
    const opt = kind === 'adamw' ? lw.adamw(params, { lr: 0.02, weightDecay: 0.05 }) : lw.sgd(params, { lr: 0.05, momentum: 0.8 });
    const ref = p0.map((p) => ({ p: Float64Array.from(p), m: new Float64Array(p.length), v: new Float64Array(p.length) }));
    for (let t = 1; t <= 4; t++) {
      const gs = params.map((q) => randomF32(g, q.value.length));
      params.forEach((q, i) => q.grad.data.set(gs[i]!));
      opt.step();
      ref.forEach((st, i) => {
        for (let j = 0; j < st.p.length; j++) {
          const gj = gs[i]![j]!;
          if (kind === 'adamw') {
            st.p[j] = st.p[j]! * (1 - 0.02 * 0.05);
            st.m[j] = 0.9 * st.m[j]! + 0.1 * gj;
            st.v[j] = 0.999 * st.v[j]! + 0.001 * gj * gj;
            st.p[j] = st.p[j]! - (0.02 * (st.m[j]! / (1 - 0.9 ** t))) / (Math.sqrt(st.v[j]! / (1 - 0.999 ** t)) + 1e-8);
          } else {
            st.m[j] = t === 1 ? gj : 0.8 * st.m[j]! + gj;
            st.p[j] = st.p[j]! - 0.05 * st.m[j]!;
          }
        }
        close(params[i]!.value.data, st.p, 1e-5, `${kind} step ${t}, parameter ${i} [${shapes[i]!.join(', ')}]`);
      });
    }
    opt.dispose();
    for (const q of params) {
      q.value.dispose();
      q.grad.dispose();
    }
  }
});

test('optimizers reject bad params and options', async () => {
  const lw = await lwUnderTest();
  assertThrowsTyped(() => lw.adamw([]), LoRATypeError, ['adamw: params must be a non-empty array']);
  assertThrowsTyped(() => lw.sgd([{ name: 'x', value: lw.matrix(2, 2), grad: lw.matrix(2, 3) }]), LoRAShapeError, ['params[0]', 'must match']);
  const ok = [{ name: 'x', value: lw.matrix(2, 2), grad: lw.matrix(2, 2) }];
  assertThrowsTyped(() => lw.adamw(ok, { lr: -1 }), LoRARangeError, ['options.lr', '[0, Infinity]', '-1']);
  assertThrowsTyped(() => lw.adamw(ok, { beta1: 1 }), LoRARangeError, ['options.beta1', '[0, 1)']);
  assertThrowsTyped(() => lw.sgd(ok, { momentum: Number.NaN }), LoRANonFiniteError, ['options.momentum']);
  assertThrowsTyped(() => lw.sgd(ok, { momentum: 0.5, lr: '0.1' as unknown as number }), LoRATypeError, ['options.lr', '"0.1"']);
});

test('MSE loss and gradient match float64', async () => {
  const lw = await lwUnderTest();
  const g = rng(8);
  const p = randomF32(g, 7 * 5), t = randomF32(g, 7 * 5);
  using grad = lw.matrix(7, 5);
  const loss = lw.mseLoss({ rows: 7, cols: 5, data: p }, { rows: 7, cols: 5, data: t }, grad);
  let want = 0;
  for (let i = 0; i < 35; i++) want += (p[i]! - t[i]!) ** 2;
  assert.ok(Math.abs(loss - want / 35) < 1e-12, `loss ${loss} vs ${want / 35}`);
  for (let i = 0; i < 35; i++) assert.ok(Math.abs(grad.data[i]! - (2 * (p[i]! - t[i]!)) / 35) < 1e-7);
  assertThrowsTyped(() => lw.mseLoss(lw.matrix(7, 5), lw.matrix(5, 7)), LoRAShapeError, ['pred is [7, 5]', 'target is [5, 7]']);
});

test('softmax cross-entropy: value, gradient by finite differences, accuracy, and stability at huge logits', async () => {
  const lw = await lwUnderTest();
  const g = rng(9);
  const n = 6, c = 5;
  const z = Float64Array.from(randomF32(g, n * c, 3));
  const labels = [0, 4, 2, 2, 1, 3];
  const ce = (zz: Float64Array) => {
    let s = 0;
    for (let i = 0; i < n; i++) {
      const row = zz.subarray(i * c, i * c + c);
      const mx = Math.max(...row);
      s += Math.log(row.reduce((a, v) => a + Math.exp(v - mx), 0)) - (row[labels[i]!]! - mx);
    }
    return s / n;
  };
  using grad = lw.matrix(n, c);
  const res = lw.softmaxCrossEntropy({ rows: n, cols: c, data: Float32Array.from(z) }, labels, grad);
  const z32 = Float64Array.from(Float32Array.from(z));
  assert.ok(Math.abs(res.loss - ce(z32)) < 1e-6, `loss ${res.loss} vs ${ce(z32)}`);
  let correct = 0;
  for (let i = 0; i < n; i++) {
    const row = Array.from(z32.subarray(i * c, i * c + c));
    if (row.indexOf(Math.max(...row)) === labels[i]) correct++;
  }
  assert.is(res.correct, correct);
  for (let i = 0; i < n * c; i++) {
    const keep = z32[i]!;
    z32[i] = keep + 1e-5;
    const up = ce(z32);
    z32[i] = keep - 1e-5;
    const down = ce(z32);
    z32[i] = keep;
    assert.ok(Math.abs(grad.data[i]! - (up - down) / 2e-5) < 1e-5, `∂/∂z[${i}]`);
  }
  const huge = lw.softmaxCrossEntropy({ rows: 2, cols: 3, data: Float32Array.from([1e4, -1e4, 0, 3e38, 3e38, -3e38]) }, [1, 0], grad.rows === 2 ? grad : undefined);
  assert.ok(Number.isFinite(huge.loss) && Math.abs(huge.loss - (2e4 + Math.log(2)) / 2) < 1, `stable: ${huge.loss}`);
  assertThrowsTyped(() => lw.softmaxCrossEntropy(lw.matrix(2, 3), [0, 3]), LoRARangeError, ['labels[1] is 3', '[0, 3)']);
  assertThrowsTyped(() => lw.softmaxCrossEntropy(lw.matrix(2, 3), [0]), LoRAShapeError, ['1 labels for 2 rows']);
  assertThrowsTyped(() => lw.softmaxCrossEntropy(lw.matrix(2, 3), 'ab' as unknown as number[]), LoRATypeError, ['labels must be']);
});

test.run();
