// adapterSet: many adapters over one base layer in one batch. Every row against a float64 reference
// of its own LoRA forward (BGMV rows, SGMV segments contiguous and gathered, base rows); the adapter
// forms it takes (factors, an Adapter, { adapter, module }); the snapshot rule for factors; outputs
// that alias an input; disposal; every error path; every row against its own LoRALinear.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  type Adapter, type DType, LoRADisposedError, LoRARangeError, LoRAShapeError, LoRATypeError, type Matrix, encodeSafetensors,
} from '../src/index.js';
import { assertThrowsTyped, lwUnderTest, randomF32, rng } from './helpers.js';
import { type Reference, assertWithinBound, bound, gemm64, loraReference } from './reference.js';

const lw = await lwUnderTest();
const PEFT = 'base_model.model.';

/** Factors as plain f32 values: A [dOut, r], B [r, dIn], and the scale. */
interface Factors64 {
  a: Float32Array;
  b: Float32Array;
  r: number;
  scale: number;
}

/**
 * The float64 reference of a whole batch: row i is x_i·Wᵀ [+ bias] + s·(x_i·Bᵀ)·Aᵀ through adapter
 * rowAdapter[i], or the bare base row for −1 (loraReference on each row alone).
 */
function setReference(
  x: Float32Array, w: Float32Array, bias: Float32Array | undefined, adapters: Factors64[], rowAdapter: readonly number[], dIn: number, dOut: number,
): Reference {
  const n = rowAdapter.length;
  const value = new Float64Array(n * dOut);
  const mag = new Float64Array(n * dOut);
  rowAdapter.forEach((a, i) => {
    const xi = x.subarray(i * dIn, (i + 1) * dIn);
    const ref = a < 0
      ? gemm64({ data: xi, rows: 1, cols: dIn }, { data: w, rows: dOut, cols: dIn, trans: true }, bias ? { beta: 1, c0: Float64Array.from(bias) } : {})
      : loraReference(xi, w, adapters[a]!.a, adapters[a]!.b, bias, 1, dIn, dOut, adapters[a]!.r, adapters[a]!.scale);
    value.set(ref.value, i * dOut);
    mag.set(ref.mag, i * dOut);
  });
  return { value, mag };
}

/** A PEFT adapter over the named modules, each [dOut, dIn] of rank r (f32), alpha 2r. */
async function peft(seed: number, r: number, dOut: number, dIn: number, modules: string[], config: Record<string, unknown> = {}): Promise<Adapter> {
  const g = rng(seed);
  const tensors = modules.flatMap((m) => [
    { name: `${PEFT}${m}.lora_A.weight`, dtype: 'F32', shape: [r, dIn], data: new Uint8Array(randomF32(g, r * dIn, 0.3).buffer) },
    { name: `${PEFT}${m}.lora_B.weight`, dtype: 'F32', shape: [dOut, r], data: new Uint8Array(randomF32(g, dOut * r, 0.3).buffer) },
  ]);
  return lw.loadAdapter({ weights: encodeSafetensors(tensors), config: { peft_type: 'LORA', r, lora_alpha: 2 * r, ...config } });
}

const factorsOf = (m: { A: Matrix<DType>; B: Matrix<DType>; scale: number }): Factors64 =>
  ({ a: m.A.toFloat32(), b: m.B.toFloat32(), r: m.A.cols, scale: m.scale });

test('every row matches its float64 LoRA forward: BGMV rows, SGMV segments (contiguous and gathered), base rows, a bias, ranks and scales that differ', () => {
  const g = rng(1);
  const [dOut, dIn] = [45, 70];
  const w = randomF32(g, dOut * dIn, 0.2);
  const bias = randomF32(g, dOut, 0.1);
  const W = lw.matrix(dOut, dIn, w);
  const Bias = lw.matrix(1, dOut, bias);
  const specs = [[4, 1.5], [7, 0.25], [1, -2], [16, 1]] as const;
  const served = specs.map(([r, scale]) => ({ A: lw.matrix(dOut, r, randomF32(g, dOut * r, 0.3)), B: lw.matrix(r, dIn, randomF32(g, r * dIn, 0.3)), scale }));
  const set = lw.adapterSet(W, served, { bias: Bias });
  // rows 0–5 adapter 1 (contiguous), adapter 0 scattered (gathered), adapters 2 and 3 alone, base rows
  const rowAdapter = [1, 1, 1, 1, 1, 1, 0, 2, 0, -1, 0, 3, 0, -1, 2];
  const n = rowAdapter.length;
  const x = randomF32(g, n * dIn);
  const X = lw.matrix(n, dIn, x);
  const ref = setReference(x, w, bias, served.map(factorsOf), rowAdapter, dIn, dOut);
  const Y = set.forward(X, rowAdapter);
  assertWithinBound(Y.data, ref, dIn + 16, 'a new Y', 8);
  // out: written in place, its old contents ignored
  const out = lw.matrix(n, dOut, new Float32Array(n * dOut).fill(Number.NaN));
  assert.is(set.forward(X, Int32Array.from(rowAdapter), out), out);
  assertWithinBound(out.data, ref, dIn + 16, 'into out', 8);
  set.dispose();
  for (const m of [W, Bias, X, Y, out, ...served.flatMap((s) => [s.A, s.B])]) m.dispose();
});

test('a plain { rows, cols, data } X and out give the same rows as matrices', () => {
  const g = rng(2);
  const [dOut, dIn, n] = [24, 40, 9];
  const w = randomF32(g, dOut * dIn, 0.2);
  const W = lw.matrix(dOut, dIn, w);
  const served = [3, 5].map((r) => ({ A: lw.matrix(dOut, r, randomF32(g, dOut * r, 0.3)), B: lw.matrix(r, dIn, randomF32(g, r * dIn, 0.3)), scale: 0.5 }));
  const set = lw.adapterSet(W, served);
  const rowAdapter = [0, 1, 0, 0, 1, -1, 0, 1, 0];
  const x = randomF32(g, n * dIn);
  const ref = setReference(x, w, undefined, served.map(factorsOf), rowAdapter, dIn, dOut);
  const Y = set.forward({ rows: n, cols: dIn, data: x }, rowAdapter);
  assertWithinBound(Y.data, ref, dIn + 5, 'plain X', 8);
  const out = { rows: n, cols: dOut, data: new Float32Array(n * dOut) };
  assert.is(set.forward({ rows: n, cols: dIn, data: x }, rowAdapter, out), out);
  assertWithinBound(out.data, ref, dIn + 5, 'plain X into plain out', 8);
  set.dispose();
  for (const m of [W, Y, ...served.flatMap((s) => [s.A, s.B])]) m.dispose();
});

test('takes an Adapter with one module as it is, and { adapter, module } for one module of several', async () => {
  const [dOut, dIn] = [20, 12];
  const g = rng(3);
  const w = randomF32(g, dOut * dIn, 0.2);
  const W = lw.matrix(dOut, dIn, w);
  const one = await peft(4, 3, dOut, dIn, ['l.q']);
  const two = await peft(5, 2, dOut, dIn, ['l.q', 'l.v']);
  const set = lw.adapterSet(W, [one, { adapter: two, module: 'l.v' }, { A: two.modules[0]!.A, B: two.modules[0]!.B, scale: 3 }]);
  assert.is(set.size, 3);
  const rowAdapter = [0, 1, 2, 1, -1, 0];
  const x = randomF32(g, rowAdapter.length * dIn);
  const X = lw.matrix(rowAdapter.length, dIn, x);
  const lv = two.modules.find((m) => m.name === 'l.v')!;
  const ref = setReference(x, w, undefined, [factorsOf(one.modules[0]!), factorsOf(lv), { ...factorsOf(two.modules[0]!), scale: 3 }], rowAdapter, dIn, dOut);
  const Y = set.forward(X, rowAdapter);
  assertWithinBound(Y.data, ref, dIn + 3, 'Adapter forms', 8);
  set.dispose();
  for (const m of [W, X, Y]) m.dispose();
  for (const a of [one, two]) a.dispose();
});

test('an Adapter with several modules and none named is a LoRATypeError that says what to pass; so is an unknown module name', async () => {
  const [dOut, dIn] = [8, 6];
  const W = lw.matrix(dOut, dIn);
  const names = ['layers.0.q_proj', 'layers.0.k_proj', 'layers.0.v_proj', 'layers.0.o_proj', 'layers.1.q_proj'];
  const many = await peft(6, 2, dOut, dIn, names);
  const live = lw.memoryStats().liveBlocks;
  assertThrowsTyped(() => lw.adapterSet(W, [many]), LoRATypeError, [
    'adapterSet: adapters[0] is an Adapter with 5 modules', 'layers.0.q_proj', 'layers.0.k_proj', "pass { adapter, module: 'layers.0.k_proj' }",
  ]);
  assertThrowsTyped(() => lw.adapterSet(W, [{ adapter: many, module: 'layers.9.q_proj' }]), LoRATypeError, [
    "adapters[0].module 'layers.9.q_proj' is not a module of the adapter", 'layers.0.q_proj',
  ]);
  assertThrowsTyped(() => lw.adapterSet(W, [{ adapter: many, module: 3 } as never]), LoRATypeError, ['adapters[0].module must be a module name']);
  assertThrowsTyped(() => lw.adapterSet(W, [{ adapter: {}, module: 'x' } as never]), LoRATypeError, ['adapters[0].adapter must be an Adapter']);
  assertThrowsTyped(() => lw.adapterSet(W, [{ A: 1, B: 2, scale: 1 } as never]), LoRATypeError, ['adapters[0].A must be a Matrix']);
  const bias = lw.matrix(1, dOut);
  assertThrowsTyped(() => lw.adapterSet(W, [], { biass: bias } as never), LoRATypeError, ["adapterSet: unknown option 'biass'", 'bias']);
  assertThrowsTyped(() => lw.adapterSet(W, [], { bias: [1] } as never), LoRATypeError, [`options.bias must be an f32 Matrix [1, ${dOut}]`]);
  bias.dispose();
  assert.is(lw.memoryStats().liveBlocks, live, 'a refused set allocates nothing');
  many.dispose();
  // a GPT-2 Conv1D module (W stored [in, out]) does not compute x·Wᵀ: refused with the reason
  const conv1d = await peft(7, 2, dOut, dIn, ['h.0.attn.c_attn'], { fan_in_fan_out: true });
  assertThrowsTyped(() => lw.adapterSet(lw.matrix(dIn, dOut), [conv1d]), LoRATypeError, ['adapters[0]', 'fan_in_fan_out']);
  conv1d.dispose();
  // a PEFT lora_bias module: its bias delta is not served, so it is refused rather than ignored
  const biased = await lw.loadAdapter({ weights: encodeSafetensors([
    { name: `${PEFT}l.q.lora_A.weight`, dtype: 'F32', shape: [1, dIn], data: new Uint8Array(dIn * 4) },
    { name: `${PEFT}l.q.lora_B.weight`, dtype: 'F32', shape: [dOut, 1], data: new Uint8Array(dOut * 4) },
    { name: `${PEFT}l.q.lora_B.bias`, dtype: 'F32', shape: [dOut], data: new Uint8Array(dOut * 4) },
  ]), config: { peft_type: 'LORA', r: 1, lora_alpha: 1, lora_bias: true } });
  assertThrowsTyped(() => lw.adapterSet(W, [biased]), LoRATypeError, ['adapters[0] (module l.q)', 'lora_bias']);
  biased.dispose();
  W.dispose();
});

for (const dtype of ['f32', 'f16'] as const) {
  test(`${dtype} factors are snapshotted: later changes to the caller's factors do not show, and disposing them is fine`, () => {
    const g = rng(8);
    const [dOut, dIn, r] = [16, 20, 4];
    const w = randomF32(g, dOut * dIn, 0.2);
    const W = lw.matrix(dOut, dIn, w);
    const A = lw.matrix(dOut, r, randomF32(g, dOut * r, 0.3), { dtype: dtype as 'f16' }) as Matrix<DType>;
    const B = lw.matrix(r, dIn, randomF32(g, r * dIn, 0.3), { dtype: dtype as 'f16' }) as Matrix<DType>;
    const factors = factorsOf({ A, B, scale: 2 });
    const set = lw.adapterSet(W, [{ A, B, scale: 2 }]);
    const rowAdapter = [0, 0, 0, 0, 0, 0, -1, 0];
    const x = randomF32(g, rowAdapter.length * dIn);
    const X = lw.matrix(rowAdapter.length, dIn, x);
    const ref = setReference(x, w, undefined, [factors], rowAdapter, dIn, dOut);
    A.data.fill(0);
    B.data.fill(0);
    const Y1 = set.forward(X, rowAdapter);
    assertWithinBound(Y1.data, ref, dIn + r, `${dtype}: after the caller zeroed its factors`, 8);
    A.dispose();
    B.dispose();
    const Y2 = set.forward(X, rowAdapter);
    assertWithinBound(Y2.data, ref, dIn + r, `${dtype}: after the caller disposed its factors`, 8);
    set.dispose();
    for (const m of [W, X, Y1, Y2]) m.dispose();
  });
}

test('an out that shares memory with W, X, the bias or a factor is refused (LoRATypeError), and the next forward is still right', () => {
  const g = rng(9);
  const [d, r, n] = [16, 16, 16]; // square, so out [n, d] fits W, X and A by shape
  const w = randomF32(g, d * d, 0.2);
  const bias = randomF32(g, d, 0.1);
  const W = lw.matrix(d, d, w);
  const Bias = lw.matrix(1, d, bias);
  const A = lw.matrix(d, r, randomF32(g, d * r, 0.3));
  const B = lw.matrix(r, d, randomF32(g, r * d, 0.3));
  const set = lw.adapterSet(W, [{ A, B, scale: 0.5 }], { bias: Bias });
  const rowAdapter = Array.from({ length: n }, (_, i) => (i % 3 === 0 ? -1 : 0));
  const x = randomF32(g, n * d);
  const X = lw.matrix(n, d, x);
  const ref = setReference(x, w, bias, [factorsOf({ A, B, scale: 0.5 })], rowAdapter, d, d);
  const cases: [string, unknown, string][] = [
    ['W', W, 'shares memory with W'],
    ['X', X, 'shares memory with X'],
    ['A', A, 'shares memory with adapters[0].A'],
    ['a view of B', { rows: n, cols: d, data: B.data }, 'shares memory with adapters[0].B'],
    ['a view of the bias', { rows: 1, cols: d, data: Bias.data }, 'shares memory with bias'],
  ];
  for (const [what, out, part] of cases) {
    const rows = (out as { rows: number }).rows;
    const xs = rows === n ? X : { rows: 1, cols: d, data: x.slice(0, d) };
    const ra = rows === n ? rowAdapter : [0];
    const before = [W, X, A, B, Bias].map((m) => m.toFloat32());
    assertThrowsTyped(() => set.forward(xs, ra, out as Matrix), LoRATypeError, ['adapterSet.forward: out', part, 'must not alias']);
    [W, X, A, B, Bias].forEach((m, i) => assert.equal(m.toFloat32(), before[i], `out = ${what}: nothing was written`));
    const Y = set.forward(X, rowAdapter);
    assertWithinBound(Y.data, ref, d + r, `a normal forward after out = ${what}`, 8);
    Y.dispose();
  }
  // the plain convenience path: out's data the very array of a plain X
  const plainX = { rows: n, cols: d, data: x.slice() };
  assertThrowsTyped(() => set.forward(plainX, rowAdapter, plainX), LoRATypeError, ['shares memory with X']);
  set.dispose();
  for (const m of [W, Bias, A, B, X]) m.dispose();
});

test('a disposed set raises LoRADisposedError naming adapterSet; dispose is idempotent and frees what the set made', () => {
  const [dOut, dIn] = [8, 6];
  const W = lw.matrix(dOut, dIn);
  const A = lw.matrix(dOut, 2, undefined, { dtype: 'bf16' }) as Matrix<DType>;
  const B = lw.matrix(2, dIn);
  const X = lw.matrix(5, dIn);
  const live = lw.memoryStats().liveBlocks;
  const set = lw.adapterSet(W, [{ A, B, scale: 1 }]);
  set.forward(X, [0, 0, 0, 0, 0]).dispose(); // grows the scratch (SGMV) …
  set.forward(X, [0, -1, 0, -1, -1]).dispose(); // … and BGMV
  set.dispose();
  set.dispose();
  assert.is(lw.memoryStats().liveBlocks, live, 'the set freed its factor copies and scratch');
  assertThrowsTyped(() => set.forward(X, [0, 0, 0, 0, 0]), LoRADisposedError, ['adapterSet.forward', 'disposed']);
  for (const m of [W, A, B, X]) m.dispose();
});


// ---------------------------------------------------------------- moved from adapters.test.ts
const [D_OUT, D_IN] = [37, 29];

const twoModules = (seed: number, r: number) => peft(seed, r, D_OUT, D_IN, ['l.q', 'l.v']);
const mod = (a: Adapter, name = 'l.q') => a.modules.find((m) => m.name === name)!;

test('adapterSet: every row equals its own LoRALinear (BGMV rows, SGMV segments contiguous and gathered, base rows, ranks and scales that differ, a bias, f16 factors)', async () => {
  const g = rng(31);
  const [dOut, dIn] = [45, 70];
  const W = lw.matrix(dOut, dIn, randomF32(g, dOut * dIn, 0.2));
  const bias = lw.matrix(1, dOut, randomF32(g, dOut, 0.1));
  const specs = [[4, 1.5, 'f32'], [7, 0.25, 'f32'], [1, -2, 'f16'], [16, 1, 'f32']] as const;
  const served = specs.map(([r, scale, dtype]) => ({
    A: lw.matrix(dOut, r, randomF32(g, dOut * r, 0.3), { dtype: dtype as 'f16' }) as Matrix<DType>,
    B: lw.matrix(r, dIn, randomF32(g, r * dIn, 0.3), { dtype: dtype as 'f16' }) as Matrix<DType>,
    scale,
  }));
  const set = lw.adapterSet(W, served, { bias });
  // rows 0–5 adapter 1 (a contiguous segment), scattered adapter 0 (a gathered segment), singles, base rows
  const rowAdapter = [1, 1, 1, 1, 1, 1, 0, 2, 0, -1, 0, 3, 0, -1, 2];
  const n = rowAdapter.length;
  const X = lw.matrix(n, dIn, randomF32(g, n * dIn));
  const Y = set.forward(X, rowAdapter).toFloat32();
  const layers = served.map(({ A, B, scale }) => {
    const r = A.cols;
    const layer = lw.linear({ W, bias, r, alpha: scale * r });
    layer.A.data.set(A.toFloat32());
    layer.B.data.set(B.toFloat32());
    return layer;
  });
  const plain = lw.dense({ inFeatures: dIn, outFeatures: dOut });
  plain.W.data.set(W.toFloat32());
  plain.bias.data.set(bias.toFloat32());
  for (let i = 0; i < n; i++) {
    const xi = { rows: 1, cols: dIn, data: X.toFloat32().subarray(i * dIn, (i + 1) * dIn) };
    const a = rowAdapter[i]!;
    const want = (a < 0 ? plain.forward(xi) : layers[a]!.forward(xi)).toFloat32();
    const r = a < 0 ? 0 : served[a]!.A.cols;
    for (let j = 0; j < dOut; j++) {
      const got = Y[i * dOut + j]!;
      assert.ok(Math.abs(got - want[j]!) <= bound(dIn + r + 2, 8, 4), `row ${i} (adapter ${a}) [${j}]: ${got} vs ${want[j]}`);
    }
  }
  // out: written in place
  const out = lw.matrix(n, dOut);
  assert.is(set.forward(X, Int32Array.from(rowAdapter), out), out);
  assert.equal(out.toFloat32(), Float32Array.from(Y));
  set.dispose();
  for (const l of [...layers, plain]) l.dispose();
  for (const m of [W, bias, X, out, ...served.flatMap((s) => [s.A, s.B])]) m.dispose();
});

test('every argument error of adapterSet and forward has its typed error', async () => {
  const [a1, a2] = [await twoModules(41, 4), await twoModules(42, 4)];
  const W = lw.matrix(D_OUT, D_IN);
  const s = (w: unknown, ads: unknown) => () => lw.adapterSet(w as never, ads as never);
  assertThrowsTyped(s(W, [{ A: mod(a1).B, B: mod(a1).A, scale: 1 }]), LoRAShapeError, ['adapters[0] has A [4, 29]', `needs A [${D_OUT}, r]`]);
  assertThrowsTyped(s(W, [{ A: mod(a1).A, B: mod(a1).B, scale: Number.POSITIVE_INFINITY }]), LoRARangeError, ['scale must be a finite number']);
  assertThrowsTyped(s(W, [{ A: mod(a1).A, B: mod(a1).B, scale: '2' }]), LoRATypeError, ['adapters[0].scale must be a number', '"2"']);
  assertThrowsTyped(s(lw.matrix(2, 2, undefined, { dtype: 'f16' }), []), LoRATypeError, ['W is f16']);
  assertThrowsTyped(s(W, mod(a1)), LoRATypeError, ['adapters must be an array']);
  assertThrowsTyped(s(W, [3]), LoRATypeError, ['adapters[0] must be { A, B, scale }']);
  assertThrowsTyped(s(W, [{ A: [1], B: mod(a1).B, scale: 1 }]), LoRATypeError, ['adapters[0].A must be a Matrix']);
  assertThrowsTyped(s([1, 2], []), LoRATypeError, ['the base weight W must be an f32 Matrix']);
  assertThrowsTyped(() => lw.adapterSet(W, [], { bias: [1, 2] as never }), LoRATypeError, ['options.bias must be an f32 Matrix']);
  const wrongBias = lw.matrix(1, 3);
  assertThrowsTyped(() => lw.adapterSet(W, [], { bias: wrongBias }), LoRAShapeError, ['options.bias is [1, 3]', `needs [1, ${D_OUT}]`]);
  wrongBias.dispose();
  const set = lw.adapterSet(W, [mod(a1), mod(a2)]);
  const X = lw.matrix(3, D_IN);
  assertThrowsTyped(() => set.forward(X, 7 as never), LoRATypeError, ['rowAdapter must be an array']);
  const badOut = lw.matrix(2, D_OUT);
  assertThrowsTyped(() => set.forward(X, [0, 0, 0], badOut), LoRAShapeError, [`out is [2, ${D_OUT}] but needs [3, ${D_OUT}]`]);
  assertThrowsTyped(() => set.forward(X, [0, 0, 0], {} as never), LoRATypeError, ['out must be a Matrix']);
  badOut.dispose();
  const W2 = lw.matrix(D_OUT, D_IN);
  const set2 = lw.adapterSet(W2, [mod(a1)]);
  W2.dispose();
  assertThrowsTyped(() => set2.forward(X, [0, 0, 0]), LoRADisposedError, ['W was disposed; the set cannot run without it']);
  set2.dispose();
  assertThrowsTyped(() => set.forward(X, [0, 1]), LoRAShapeError, ['rowAdapter has 2 entries but X has 3 rows']);
  for (const bad of [2, -2, 0.5, Number.NaN]) assertThrowsTyped(() => set.forward(X, [0, bad, 1]), LoRARangeError, ['rowAdapter[1]', '[0, 2)']);
  assertThrowsTyped(() => set.forward(X, [0, '0' as never, 1]), LoRATypeError, ['rowAdapter[1] must be a number', '"0"']);
  assertThrowsTyped(() => set.forward(lw.matrix(3, 5), [0, 0, 0]), LoRAShapeError, ['X is [3, 5]', `takes ${D_IN} features`]);
  set.dispose();
  assertThrowsTyped(() => set.forward(X, [0, 0, 0]), LoRADisposedError, ['disposed']);
  for (const m of [W, X]) m.dispose();
  for (const a of [a1, a2]) a.dispose();
});

test.run();
