// Adapters as values: combineAdapters (every method against float64 references written from PEFT's
// formulas), extractAdapter and resizeAdapter (against the optimal rank-k error from an independent
// float64 eigen-solver, or a spectrum built by hand), export round trips, and every error path.
// adapterSet has its own suite (adapter-set.test.ts).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  type Adapter, type DType, LoRADisposedError, LoRANonFiniteError, LoRARangeError, LoRAShapeError, LoRATypeError, type Matrix, encodeSafetensors, init,
} from '../src/index.js';
import { dareKeeps } from '../src/adapters/combine.js';
import { assertThrowsTyped, BUILD, lwUnderTest, randomF32, rng } from './helpers.js';
import { bound } from './reference.js';

const lw = await lwUnderTest();
const PEFT = 'base_model.model.';
const [D_OUT, D_IN] = [37, 29];

/** A PEFT adapter with modules l.q and l.v of rank r (f32), alpha 2r unless given. */
async function peft(seed: number, r: number, opts: { alpha?: number; dOut?: number; dIn?: number; modules?: string[] } = {}): Promise<Adapter> {
  const [dOut, dIn] = [opts.dOut ?? D_OUT, opts.dIn ?? D_IN];
  const g = rng(seed);
  const tensors = (opts.modules ?? ['l.q', 'l.v']).flatMap((m) => [
    { name: `${PEFT}${m}.lora_A.weight`, dtype: 'F32', shape: [r, dIn], data: new Uint8Array(randomF32(g, r * dIn).buffer) },
    { name: `${PEFT}${m}.lora_B.weight`, dtype: 'F32', shape: [dOut, r], data: new Uint8Array(randomF32(g, dOut * r).buffer) },
  ]);
  return lw.loadAdapter({ weights: encodeSafetensors(tensors), config: { peft_type: 'LORA', r, lora_alpha: opts.alpha ?? 2 * r } });
}

const mod = (a: Adapter, name = 'l.q') => a.modules.find((m) => m.name === name)!;

/** ΔW = s·A·B of a module in float64 from its f32 factors. */
function delta64(m: { A: Matrix<DType>; B: Matrix<DType>; scale: number }): Float64Array {
  const A = m.A.toFloat32();
  const B = m.B.toFloat32();
  const [rows, r, cols] = [m.A.rows, m.A.cols, m.B.cols];
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let k = 0; k < r; k++) {
    const a = A[i * r + k]! * m.scale;
    for (let j = 0; j < cols; j++) out[i * cols + j]! += a * B[k * cols + j]!;
  }
  return out;
}

const frob = (x: ArrayLike<number>, y?: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += (x[i]! - (y ? y[i]! : 0)) ** 2;
  return Math.sqrt(s);
};

/**
 * Singular values of a [rows, cols] f64 matrix, descending, as the square roots of the eigenvalues of
 * MᵀM by the classical cyclic Jacobi eigenvalue method (independent of the library's one-sided SVD).
 */
function singularValues64(m: Float64Array, rows: number, cols: number): number[] {
  const n = cols;
  const a = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
    let s = 0;
    for (let k = 0; k < rows; k++) s += m[k * cols + i]! * m[k * cols + j]!;
    a[i * n + j] = s;
  }
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p * n + q]! ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) {
      const apq = a[p * n + q]!;
      if (Math.abs(apq) < 1e-300) continue;
      const theta = (a[q * n + q]! - a[p * n + p]!) / (2 * apq);
      const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
      const c = 1 / Math.sqrt(t * t + 1);
      const s = t * c;
      for (let k = 0; k < n; k++) {
        const akp = a[k * n + p]!;
        const akq = a[k * n + q]!;
        a[k * n + p] = c * akp - s * akq;
        a[k * n + q] = s * akp + c * akq;
      }
      for (let k = 0; k < n; k++) {
        const apk = a[p * n + k]!;
        const aqk = a[q * n + k]!;
        a[p * n + k] = c * apk - s * aqk;
        a[q * n + k] = s * apk + c * aqk;
      }
    }
  }
  return Array.from({ length: n }, (_, i) => Math.sqrt(Math.max(0, a[i * n + i]!))).sort((x, y) => y - x);
}

/** The best rank-k Frobenius error of m: √(Σ_{i≥k} σᵢ²). */
const optimalError = (m: Float64Array, rows: number, cols: number, k: number): number =>
  Math.sqrt(singularValues64(m, rows, cols).slice(k).reduce((s, x) => s + x * x, 0));

/** The product of a result module in f64 (its scale is 1). */
const product = (m: { A: Matrix<DType>; B: Matrix<DType>; scale: number }) => delta64(m);

test('cat stacks s·w·A and B: ΔW = Σ wᵢsᵢAᵢBᵢ exactly, rank Σrᵢ, scale 1, different ranks allowed', async () => {
  const [a1, a2] = [await peft(1, 3), await peft(2, 5, { alpha: 7 })];
  const c = lw.combineAdapters([{ adapter: a1, weight: 0.75 }, { adapter: a2, weight: -1.5 }], { method: 'cat' });
  for (const name of ['l.q', 'l.v']) {
    const m = mod(c, name);
    assert.is(m.r, 8);
    assert.is(m.scale, 1);
    const want = delta64(mod(a1, name)).map((v, i) => 0.75 * v - 1.5 * delta64(mod(a2, name))[i]!);
    const got = product(m);
    const mag = frob(want) / Math.sqrt(want.length);
    for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i]! - want[i]!) <= bound(8, 8, 10 * mag), `${name} [${i}]: ${got[i]} vs ${want[i]}`);
  }
  assert.is(c.config.r, 8);
  assert.is(c.config.lora_alpha, 8);
  for (const a of [a1, a2, c]) a.dispose();
});

test("linear follows PEFT's _generalized_task_arithmetic_weighted_adapter: sign·√|ws| on lora_A (our B), √|ws| on lora_B (our A), summed; not Σ wᵢsᵢΔWᵢ; equal ranks required", async () => {
  const [a1, a2] = [await peft(3, 4), await peft(4, 4, { alpha: 2 })];
  const [w1, w2] = [0.6, -0.3];
  const c = lw.combineAdapters([{ adapter: a1, weight: w1 }, { adapter: a2, weight: w2 }], { method: 'linear' });
  const m = mod(c);
  assert.is(m.r, 4);
  assert.is(m.scale, 1);
  // peft/tuners/lora/model.py: weight_with_scaling = weight·scaling; sign = 1 if ≥ 0 else −1;
  // valid_weights_A = √|ws|·sign (for lora_A, our B), valid_weights_B = √|ws| (for lora_B, our A);
  // task_arithmetic sums the weighted factors. Written here in float64.
  const [m1, m2] = [mod(a1), mod(a2)];
  const [r, dOut, dIn] = [4, D_OUT, D_IN];
  const wA = (ws: number) => (ws >= 0 ? 1 : -1) * Math.sqrt(Math.abs(ws)); // lora_A's weight
  const wB = (ws: number) => Math.sqrt(Math.abs(ws)); // lora_B's weight
  const [ws1, ws2] = [w1 * m1.scale, w2 * m2.scale];
  const loraA1 = m1.B.toFloat32(), loraA2 = m2.B.toFloat32(); // PEFT's lora_A [r, in] is our B
  const loraB1 = m1.A.toFloat32(), loraB2 = m2.A.toFloat32(); // PEFT's lora_B [out, r] is our A
  const targetA = Float64Array.from({ length: r * dIn }, (_, i) => wA(ws1) * loraA1[i]! + wA(ws2) * loraA2[i]!);
  const targetB = Float64Array.from({ length: dOut * r }, (_, i) => wB(ws1) * loraB1[i]! + wB(ws2) * loraB2[i]!);
  const want = new Float64Array(dOut * dIn); // ΔW = target_lora_B · target_lora_A (scale 1)
  for (let i = 0; i < dOut; i++) for (let k = 0; k < r; k++) for (let j = 0; j < dIn; j++) want[i * dIn + j]! += targetB[i * r + k]! * targetA[k * dIn + j]!;
  const gotA = m.A.toFloat32(), gotB = m.B.toFloat32();
  for (let i = 0; i < gotB.length; i++) assert.ok(Math.abs(gotB[i]! - targetA[i]!) <= 4 * 2 ** -24 * (Math.abs(wA(ws1) * loraA1[i]!) + Math.abs(wA(ws2) * loraA2[i]!)) + 1e-30, `B[${i}] ${gotB[i]} vs lora_A ${targetA[i]}`);
  for (let i = 0; i < gotA.length; i++) assert.ok(Math.abs(gotA[i]! - targetB[i]!) <= 4 * 2 ** -24 * (Math.abs(wB(ws1) * loraB1[i]!) + Math.abs(wB(ws2) * loraB2[i]!)) + 1e-30, `A[${i}] ${gotA[i]} vs lora_B ${targetB[i]}`);
  const err = frob(product(m), want) / frob(want);
  assert.ok(err < 1e-5, `ΔW relative error ${err} against PEFT's formula`);
  const sum = delta64(m1).map((v, i) => w1 * v + w2 * delta64(m2)[i]!);
  assert.ok(frob(product(m), sum) > 1e-3 * frob(sum), 'the cross terms are there: linear is not the weighted sum of the ΔW');
  const odd = await peft(5, 6);
  assertThrowsTyped(() => lw.combineAdapters([{ adapter: a1, weight: 1 }, { adapter: odd, weight: 1 }], { method: 'linear' }), LoRAShapeError, ["'linear' needs equal ranks", 'l.q', 'r=4', 'r=6']);
  for (const a of [a1, a2, odd, c]) a.dispose();
});

test('svd: Σ wᵢsᵢAᵢBᵢ truncated to rank k from the factors: the optimal rank-k error, and clamp as PEFT\'s svd_clamp', async () => {
  const [a1, a2, a3] = [await peft(6, 4), await peft(7, 6), await peft(8, 3)];
  const items = [{ adapter: a1, weight: 1 }, { adapter: a2, weight: 0.5 }, { adapter: a3, weight: -2 }];
  const full = delta64(mod(a1)).map((v, i) => v + 0.5 * delta64(mod(a2))[i]! - 2 * delta64(mod(a3))[i]!);
  for (const k of [1, 5, 13]) {
    const c = lw.combineAdapters(items, { method: 'svd', rank: k });
    const m = mod(c);
    assert.is(m.r, k);
    const opt = optimalError(full, D_OUT, D_IN, k);
    const err = frob(product(m), full);
    assert.ok(err <= opt * (1 + 1e-5) + 1e-5 * frob(full), `rank ${k}: error ${err} vs optimal ${opt}`);
    c.dispose();
  }
  const dflt = lw.combineAdapters(items, { method: 'svd' });
  assert.is(mod(dflt).r, 6, 'default rank: the largest input rank');
  dflt.dispose();
  // clamp: every entry of U·S (our A) and Vᵀ (our B) within ± the 0.9-quantile of the unclamped entries
  const plain = lw.combineAdapters(items, { method: 'svd', rank: 5 });
  const clamped = lw.combineAdapters(items, { method: 'svd', rank: 5, clamp: 0.9 });
  const all = [...mod(plain).A.toFloat32(), ...mod(plain).B.toFloat32()].sort((x, y) => x - y);
  const pos = 0.9 * (all.length - 1);
  const hi = all[Math.floor(pos)]! + (all[Math.ceil(pos)]! - all[Math.floor(pos)]!) * (pos - Math.floor(pos));
  const ca = [...mod(clamped).A.toFloat32(), ...mod(clamped).B.toFloat32()];
  assert.ok(ca.every((v) => Math.abs(v) <= hi * (1 + 1e-6)), 'within ± the quantile');
  assert.ok(ca.some((v) => Math.abs(Math.abs(v) - hi) < 1e-6 * hi), 'the largest entries sit on the clamp');
  for (const a of [a1, a2, a3, plain, clamped]) a.dispose();
});

/** PEFT's merge_utils on ΔWᵢ = sᵢAᵢBᵢ (computed by lw.delta, so the masks see the same f32 values), in f64. */
function prunedReference(adapters: Adapter[], weights: number[], method: string, density: number, seed: number, name = 'l.q'): Float64Array {
  const ds = adapters.map((a) => {
    const m = mod(a, name);
    const d = lw.delta(m.A as Matrix, m.B as Matrix, { scale: m.scale });
    const v = d.toFloat32();
    d.dispose();
    return v;
  });
  const numel = ds[0]!.length;
  const pruned = ds.map((d, i) => {
    const out = new Float64Array(numel);
    if (method === 'ties' || method === 'magnitude_prune') {
      // torch.topk of |x| with k = int(density·numel); equal magnitudes: the first in row-major order
      const k = Math.floor(density * numel);
      const order = Array.from({ length: numel }, (_, j) => j).sort((x, y) => Math.abs(d[y]!) - Math.abs(d[x]!) || x - y);
      for (const j of order.slice(0, k)) out[j] = d[j]!;
    } else {
      for (let j = 0; j < numel; j++) out[j] = dareKeeps(seed, i, j, density) ? d[j]! / density : 0;
    }
    return out;
  });
  const res = new Float64Array(numel);
  for (let j = 0; j < numel; j++) {
    if (method === 'ties' || method === 'dare_ties') {
      const total = pruned.reduce((s, p) => s + p[j]!, 0);
      const major = total >= 0 ? 1 : -1;
      let sum = 0;
      let count = 0;
      pruned.forEach((p, i) => {
        if (Math.sign(p[j]!) === major) {
          sum += weights[i]! * p[j]!;
          count++;
        }
      });
      res[j] = sum / Math.max(1, count);
    } else {
      res[j] = pruned.reduce((s, p, i) => s + weights[i]! * p[j]!, 0);
    }
  }
  return res;
}

test('ties, dare_linear, dare_ties, magnitude_prune: the pruned ΔW of PEFT\'s formulas, truncated within 1.05× of the optimal rank-k error', async () => {
  const [a1, a2, a3] = [await peft(9, 5), await peft(10, 4), await peft(11, 6)];
  const adapters = [a1, a2, a3];
  const weights = [0.8, 0.5, -0.6];
  for (const method of ['ties', 'dare_linear', 'dare_ties', 'magnitude_prune'] as const) {
    // at full rank (29) nothing is truncated: the result IS the pruned, merged ΔW, to f32 rounding
    for (const [density, k] of [[0.5, 29], [0.3, 29], [0.5, 8], [0.2, 4], [1, 10]] as const) {
      const want = prunedReference(adapters, weights, method, density, 42);
      const c = lw.combineAdapters(adapters.map((adapter, i) => ({ adapter, weight: weights[i]! })), { method, density, rank: k, seed: 42 });
      const got = product(mod(c));
      const opt = optimalError(want, D_OUT, D_IN, k);
      const err = frob(got, want);
      assert.ok(err <= 1.05 * opt + 1e-5 * frob(want), `${method} density ${density} rank ${k}: error ${err} vs optimal ${opt}`);
      c.dispose();
    }
  }
  // the mask is the seed's: another seed gives another DARE result
  const [x, y] = [7, 8].map((seed) => lw.combineAdapters([{ adapter: a1, weight: 1 }, { adapter: a2, weight: 1 }], { method: 'dare_linear', density: 0.5, rank: 4, seed }));
  assert.ok(frob(product(mod(x!)), product(mod(y!))) > 1e-3, 'different seeds, different masks');
  for (const a of [...adapters, x!, y!]) a.dispose();
});

test('a pruned combination forms ΔW a row block at a time: 2000×2048 modules combine under a 24 MiB memory cap', async () => {
  // whole, each adapter's ΔW would take 16 MiB; the blocks (512 rows) take 4 MiB each
  const small = await init({ simd: BUILD, maxMemoryBytes: 24 * 2 ** 20 });
  const g = rng(12);
  const make = () => small.loadAdapter({
    weights: encodeSafetensors([
      { name: `${PEFT}l.q.lora_A.weight`, dtype: 'F32', shape: [4, 2048], data: new Uint8Array(randomF32(g, 4 * 2048).buffer) },
      { name: `${PEFT}l.q.lora_B.weight`, dtype: 'F32', shape: [2000, 4], data: new Uint8Array(randomF32(g, 2000 * 4).buffer) },
    ]),
    config: { peft_type: 'LORA', r: 4, lora_alpha: 4 },
  });
  const [a1, a2] = [await make(), await make()];
  const c = small.combineAdapters([{ adapter: a1, weight: 1 }, { adapter: a2, weight: 0.5 }], { method: 'ties', density: 0.3, rank: 8 });
  assert.is(mod(c).r, 8);
  assert.ok(small.memoryStats().memoryBytes <= 24 * 2 ** 20);
  for (const a of [a1, a2, c]) a.dispose();
  small.dispose();
});

/** Orthonormal columns [rows, k] (Gram–Schmidt twice on seeded Gaussian columns), f64 row-major. */
function orthonormal(rows: number, k: number, seed: number): Float64Array {
  const g = rng(seed);
  const q = new Float64Array(rows * k);
  for (let j = 0; j < k; j++) {
    const v = Array.from({ length: rows }, () => g() - 0.5);
    for (let pass = 0; pass < 2; pass++) {
      for (let p = 0; p < j; p++) {
        let dot = 0;
        for (let i = 0; i < rows; i++) dot += q[i * k + p]! * v[i]!;
        for (let i = 0; i < rows; i++) v[i]! -= dot * q[i * k + p]!;
      }
    }
    const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
    for (let i = 0; i < rows; i++) q[i * k + j] = v[i]! / norm;
  }
  return q;
}

test('extractAdapter: within 1.05× of the optimal rank-k error on a known spectrum (up to 1024 wide), singular values and energy reported', async () => {
  for (const [rows, cols, k] of [[1024, 768, 16], [300, 200, 1], [97, 61, 61]] as const) {
    const n = Math.min(rows, cols, 120);
    const sigma = Array.from({ length: n }, (_, i) => 0.5 * 0.93 ** i);
    const u = orthonormal(rows, n, rows + 1);
    const v = orthonormal(cols, n, cols + 2);
    const d = new Float64Array(rows * cols);
    for (let i = 0; i < rows; i++) for (let p = 0; p < n; p++) {
      const a = u[i * n + p]! * sigma[p]!;
      for (let j = 0; j < cols; j++) d[i * cols + j]! += a * v[j * n + p]!;
    }
    const g = rng(7);
    const base = randomF32(g, rows * cols, 0.05);
    const tuned = Float32Array.from(base, (x, i) => x + d[i]!);
    const [Wt, Wb] = [lw.matrix(rows, cols, tuned), lw.matrix(rows, cols, base)];
    // the difference as stored (f32 rounding of tuned included) is what can be approximated
    const stored = Float64Array.from(tuned, (x, i) => x - base[i]!);
    const opt = Math.sqrt(sigma.slice(k).reduce((s, x) => s + x * x, 0));
    const rounding = frob(stored, d);
    const res = lw.extractAdapter(Wt, Wb, { rank: k, name: 'layer.q' });
    const m = res.adapter.modules[0]!;
    assert.is(m.name, 'layer.q');
    assert.is(m.r, k);
    const err = frob(product(m), stored);
    assert.ok(err <= 1.05 * opt + 2 * rounding + 1e-6 * frob(stored), `[${rows}, ${cols}] k=${k}: error ${err} vs optimal ${opt}`);
    const s = res.modules[0]!.singularValues;
    for (let i = 0; i < Math.min(k, 5); i++) assert.ok(Math.abs(s[i]! - sigma[i]!) <= 1e-3 * sigma[0]!, `σ${i} ${s[i]} vs ${sigma[i]}`);
    const total = sigma.reduce((x, y) => x + y * y, 0);
    const kept = sigma.slice(0, k).reduce((x, y) => x + y * y, 0) / total;
    assert.ok(Math.abs(res.modules[0]!.energy - kept) < 1e-4, `energy ${res.modules[0]!.energy} vs ${kept}`);
    res.adapter.dispose();
    if (rows === 300) {
      // energy: the fewest singular values that keep 90 % of ‖ΔW‖²
      let acc = 0;
      const want = sigma.findIndex((x) => (acc += x * x) >= 0.9 * total) + 1;
      const byEnergy = lw.extractAdapter(Wt, Wb, { energy: 0.9 });
      assert.is(byEnergy.modules[0]!.rank, want);
      assert.ok(byEnergy.modules[0]!.energy >= 0.9);
      byEnergy.adapter.dispose();
    }
    for (const x of [Wt, Wb]) x.dispose();
  }
});

test('extractAdapter takes half-precision weights and whole tensor sets keyed by name; results export as PEFT', async () => {
  const g = rng(21);
  const [rows, cols] = [64, 48];
  const base = randomF32(g, rows * cols, 0.2);
  const A = randomF32(g, rows * 3, 0.3), B = randomF32(g, 3 * cols, 0.3);
  const tuned = base.map((x, idx) => {
    const [i, j] = [Math.floor(idx / cols), idx % cols];
    let s = 0;
    for (let k = 0; k < 3; k++) s += A[i * 3 + k]! * B[k * cols + j]!;
    return x + s;
  });
  const sets = (dtype: 'f16' | 'bf16') => [
    { 'model.q.weight': lw.matrix(rows, cols, tuned, { dtype }), 'model.v.weight': lw.matrix(rows, cols, tuned, { dtype }) },
    { 'model.q.weight': lw.matrix(rows, cols, base, { dtype }), 'model.v.weight': lw.matrix(rows, cols, base, { dtype }), 'model.only_in_base': lw.matrix(1, 2) },
  ] as const;
  for (const dtype of ['f16', 'bf16'] as const) {
    const [t, b] = sets(dtype);
    const res = lw.extractAdapter(t, b, { rank: 3 });
    assert.equal(res.adapter.modules.map((m) => m.name), ['model.q', 'model.v']);
    const diff = Float64Array.from({ length: rows * cols }, (_, i) => (t['model.q.weight'].toFloat32()[i]! - b['model.q.weight'].toFloat32()[i]!));
    // the difference of two rounded matrices is rank 3 plus rounding noise: compare with its best rank-3 error
    const opt = optimalError(diff, rows, cols, 3);
    assert.ok(frob(product(res.adapter.modules[0]!), diff) <= 1.05 * opt + 1e-6 * frob(diff), `${dtype}: rank 3 within 1.05× of the optimal`);
    assert.ok(opt < 0.05 * frob(diff), 'and the rank-3 part is most of it');
    const saved = lw.saveAdapter(res.adapter, { baseModel: 'test/base' });
    const back = await lw.loadAdapter(saved);
    assert.equal(back.modules.map((m) => [m.name, m.r, m.scale]), [['model.q', 3, 1], ['model.v', 3, 1]]);
    assert.ok(frob(product(back.modules[0]!), product(res.adapter.modules[0]!)) <= 1e-6 * frob(diff), 'the export round-trips');
    for (const x of [back, res.adapter]) x.dispose();
    for (const m of [...Object.values(t), ...Object.values(b)]) m.dispose();
  }
});

test('resizeAdapter truncates each module from its factors: the optimal error, energy reported, export round trip', async () => {
  const a = await peft(14, 8);
  const choices: ({ rank: number } | { energy: number })[] = [{ rank: 3 }, { rank: 8 }, { rank: 20 }, { energy: 0.8 }];
  for (const choice of choices) {
    const res = lw.resizeAdapter(a, choice);
    for (const name of ['l.q', 'l.v']) {
      const full = delta64(mod(a, name));
      const m = mod(res.adapter, name);
      const sv = singularValues64(full, D_OUT, D_IN);
      const total = sv.reduce((s, x) => s + x * x, 0);
      let want = 'rank' in choice ? Math.min(choice.rank, 8) : 0;
      if ('energy' in choice) {
        let acc = 0;
        want = sv.findIndex((x) => (acc += x * x) >= choice.energy * total) + 1;
      }
      assert.is(m.r, want, `${JSON.stringify(choice)} ${name}`);
      const opt = Math.sqrt(sv.slice(want).reduce((s, x) => s + x * x, 0));
      assert.ok(frob(product(m), full) <= opt * (1 + 1e-4) + 1e-6 * Math.sqrt(total), `${JSON.stringify(choice)} ${name}: the optimal rank-${want} error`);
      const r = res.modules.find((x) => x.name === name)!;
      assert.ok(Math.abs(r.energy - sv.slice(0, want).reduce((s, x) => s + x * x, 0) / total) < 1e-9);
    }
    const saved = lw.saveAdapter(res.adapter, { baseModel: 'x' });
    const back = await lw.loadAdapter(saved);
    assert.equal(back.modules.map((m) => m.r), res.adapter.modules.map((m) => m.r));
    for (const x of [back, res.adapter]) x.dispose();
  }
  a.dispose();
});

test('NaN/Inf in is refused, not passed on: combine (every method, ties included), extract and resize name the module and factor; results that overflow f32 are refused', async () => {
  const live = lw.memoryStats().liveBlocks;
  const [a1, bad] = [await peft(22, 4), await peft(23, 4)];
  (mod(bad).B as Matrix).data[1 * D_IN + 3] = Number.NaN;
  for (const method of ['cat', 'linear', 'svd', 'ties', 'dare_linear', 'dare_ties', 'magnitude_prune'] as const) {
    const opts = method === 'cat' || method === 'linear' ? { method } : method === 'svd' ? { method, rank: 2 } : { method, density: 0.5, rank: 2 };
    assertThrowsTyped(() => lw.combineAdapters([{ adapter: a1, weight: 1 }, { adapter: bad, weight: 0.5 }], opts), LoRANonFiniteError, ['combineAdapters:', "item 1's l.q B[1, 3] is NaN"]);
  }
  assertThrowsTyped(() => lw.resizeAdapter(bad, { rank: 2 }), LoRANonFiniteError, ['resizeAdapter:', "adapter's l.q B[1, 3] is NaN"]);
  (mod(bad).B as Matrix).data[1 * D_IN + 3] = Number.POSITIVE_INFINITY;
  assertThrowsTyped(() => lw.combineAdapters([{ adapter: bad, weight: 1 }], { method: 'ties', density: 0.5 }), LoRANonFiniteError, ["item 0's l.q B[1, 3] is Infinity"]);
  // finite inputs whose result overflows f32
  assertThrowsTyped(() => lw.combineAdapters([{ adapter: a1, weight: 3e38 }], { method: 'cat' }), LoRANonFiniteError, ['combineAdapters:', "the result's l.q A", "'cat' combination", 'overflows f32']);
  const huge = await peft(24, 4);
  for (const m of huge.modules) {
    (m.A as Matrix).data.fill(1e20);
    (m.B as Matrix).data.fill(-1e20);
  }
  assertThrowsTyped(() => lw.combineAdapters([{ adapter: huge, weight: 1 }], { method: 'dare_ties', density: 0.5 }), LoRANonFiniteError, ["item 0's l.q: ΔW = s·A·B may overflow f32"]);
  assertThrowsTyped(() => lw.resizeAdapter(huge, { rank: 1 }), LoRANonFiniteError, ['resizeAdapter:', "the result's l.q A", 'overflow f32']);
  // extract: a NaN weight is named (it used to report energy 1), and so is a difference that overflows
  const [rows, cols] = [12, 10];
  const base = randomF32(rng(25), rows * cols);
  const tuned = base.map((x) => x + 0.25);
  tuned[2 * cols + 3] = Number.NaN;
  const [Wt, Wb] = [lw.matrix(rows, cols, tuned), lw.matrix(rows, cols, base)];
  assertThrowsTyped(() => lw.extractAdapter(Wt, Wb, { rank: 2 }), LoRANonFiniteError, ['extractAdapter:', 'weight: Wtuned[2, 3] is NaN']);
  assertThrowsTyped(() => lw.extractAdapter({ 'x.weight': Wb }, { 'x.weight': Wt }, { energy: 0.9 }), LoRANonFiniteError, ['extractAdapter:', 'x: Wbase[2, 3] is NaN']);
  Wt.data.fill(3e38);
  Wb.data.fill(-3e38);
  assertThrowsTyped(() => lw.extractAdapter(Wt, Wb, { rank: 2 }), LoRANonFiniteError, ['extractAdapter:', 'ΔW = Wtuned − Wbase[0, 0] is Infinity', 'overflows f32']);
  for (const x of [Wt, Wb, a1, bad, huge]) x.dispose();
  assert.is(lw.memoryStats().liveBlocks, live, 'the refused calls left nothing allocated');
});

test('combine, extract and resize read options by one rule: wrong kind LoRATypeError, out of range LoRARangeError, unknown key LoRATypeError listing the known ones', async () => {
  const a1 = await peft(19, 4);
  const pair = [{ adapter: a1, weight: 1 }, { adapter: a1, weight: 0.5 }];
  const [Wt, Wb] = [lw.matrix(12, 10), lw.matrix(12, 10)];
  const calls: [string, (o: object) => unknown][] = [
    ['combineAdapters', (o) => lw.combineAdapters(pair, { method: 'dare_linear', density: 0.5, ...o } as never)],
    ['extractAdapter', (o) => lw.extractAdapter(Wt, Wb, { rank: 2, ...o } as never)],
    ['resizeAdapter', (o) => lw.resizeAdapter(a1, { ...o } as never)],
  ];
  for (const [fn, call] of calls) {
    // rank: a string is the wrong kind, 0 and 2.5 are out of range
    for (const rank of ['2', true, null]) assertThrowsTyped(() => call({ rank }), LoRATypeError, [`${fn}:`, 'options.rank must be an integer ≥ 1']);
    for (const rank of [0, 2.5]) assertThrowsTyped(() => call({ rank }), LoRARangeError, [`${fn}:`, 'options.rank must be an integer ≥ 1']);
    if (fn !== 'combineAdapters') assertThrowsTyped(() => call({ energy: '0.9', rank: undefined }), LoRATypeError, [`${fn}:`, 'options.energy must be a fraction in (0, 1]']);
    assertThrowsTyped(() => call({ rnak: 2 }), LoRATypeError, [`${fn}:`, "unknown option 'rnak'", fn === 'combineAdapters' ? 'method, rank, density' : 'rank, energy']);
  }
  // one seed rule wherever a seed is read: an integer in [0, 2³² − 1]
  for (const [fn, call] of calls.slice(0, 2)) {
    assertThrowsTyped(() => call({ seed: '7' }), LoRATypeError, [`${fn}:`, 'options.seed must be an integer in [0, 4294967295]']);
    for (const seed of [1.5, -1, 2 ** 32]) assertThrowsTyped(() => call({ seed }), LoRARangeError, [`${fn}:`, 'options.seed must be an integer in [0, 4294967295]', String(seed)]);
  }
  const c = (o: object) => () => lw.combineAdapters(pair, o as never);
  assertThrowsTyped(c({}), LoRATypeError, ['options.method is required']);
  assertThrowsTyped(c({ method: 'svd', seed: 3 }), LoRATypeError, ['options.seed applies to ties', "not 'svd'"]);
  assertThrowsTyped(c({ method: 'dare_linear', density: 0.5, majoritySign: 'total' }), LoRATypeError, ['options.majoritySign applies to ties, dare_ties', "not 'dare_linear'"]);
  assertThrowsTyped(c({ method: 'svd', clamp: '0.9' }), LoRATypeError, ['options.clamp must be a quantile in (0, 1)']);
  assertThrowsTyped(() => lw.extractAdapter(Wt, Wb, { rank: 2, name: 3 } as never), LoRATypeError, ['options.name must be a non-empty string']);
  for (const m of [Wt, Wb, a1]) m.dispose();
});

test('every error path of the adapter algebra has its typed error, and a failed call leaves nothing allocated', async () => {
  const [a1, a2] = [await peft(15, 4), await peft(16, 4)];
  const other = await peft(17, 4, { modules: ['l.q', 'l.k'] });
  const live = lw.memoryStats().liveBlocks;
  const c = (items: unknown, opts: unknown) => () => lw.combineAdapters(items as never, opts as never);
  const pair = [{ adapter: a1, weight: 1 }, { adapter: a2, weight: 1 }];
  assertThrowsTyped(c([], { method: 'svd' }), LoRATypeError, ['non-empty array']);
  assertThrowsTyped(c([{ adapter: {}, weight: 1 }], { method: 'svd' }), LoRATypeError, ['must be an Adapter']);
  assertThrowsTyped(c([{ adapter: a1 }], { method: 'svd' }), LoRATypeError, ['needs a weight']);
  assertThrowsTyped(c([{ adapter: a1, weight: Number.NaN }], { method: 'svd' }), LoRANonFiniteError, ["item 0's weight"]);
  assertThrowsTyped(c(pair, { method: 'average' }), LoRATypeError, ['options.method', "'cat', 'linear', 'svd'"]);
  assertThrowsTyped(c([...pair, { adapter: other, weight: 1 }], { method: 'cat' }), LoRAShapeError, ['mismatched module sets', 'adapter 2', 'lacks l.v', 'l.k']);
  for (const density of [0, 1.5, -1, Number.NaN]) assertThrowsTyped(c(pair, { method: 'ties', density }), LoRARangeError, ['options.density must be a fraction in (0, 1]']);
  assertThrowsTyped(c(pair, { method: 'ties', density: '0.5' }), LoRATypeError, ['options.density must be a fraction in (0, 1]', '"0.5"']);
  assertThrowsTyped(c(pair, { method: 'ties' }), LoRATypeError, ["method 'ties' needs options.density"]);
  assertThrowsTyped(c(pair, { method: 'svd', density: 0.5 }), LoRATypeError, ['density applies to']);
  for (const rank of [0, 2.5, -3]) assertThrowsTyped(c(pair, { method: 'svd', rank }), LoRARangeError, ['options.rank must be an integer ≥ 1']);
  assertThrowsTyped(c(pair, { method: 'svd', rank: 30 }), LoRARangeError, ['rank 30 exceeds min(out, in) = 29', 'l.q']);
  assertThrowsTyped(c(pair, { method: 'cat', rank: 3 }), LoRATypeError, ['options.rank applies to svd, ties', "not 'cat'"]);
  assertThrowsTyped(c(pair, { method: 'svd', clamp: 1 }), LoRARangeError, ['clamp must be a quantile in (0, 1)']);
  assertThrowsTyped(c(pair, { method: 'ties', density: 0.5, majoritySign: 'most' }), LoRATypeError, ['majoritySign']);
  assertThrowsTyped(c([7], { method: 'svd' }), LoRATypeError, ['item 0 must be { adapter, weight }']);
  assertThrowsTyped(c(pair, { method: 'cat', clamp: 0.9 }), LoRATypeError, ['options.clamp applies to svd, ties', "not 'cat'"]);
  assertThrowsTyped(c(pair, { method: 'dare_linear', density: 0.5, seed: 1.5 }), LoRARangeError, ['options.seed must be an integer in [0, 4294967295]']);
  const wide = await peft(18, 4, { dIn: D_IN + 1 });
  assertThrowsTyped(c([...pair, { adapter: wide, weight: 1 }], { method: 'cat' }), LoRAShapeError, ['module l.q', `adapter 2's ΔW is linear [${D_OUT}, ${D_IN + 1}]`]);
  wide.dispose();
  assertThrowsTyped(c([{ adapter: wide, weight: 1 }], { method: 'svd' }), LoRADisposedError, ["l.q A is a disposed Matrix"]);
  const other2 = await init({ simd: BUILD, maxMemoryBytes: 2 ** 27 });
  const foreign = await other2.loadAdapter({ weights: encodeSafetensors([
    { name: `${PEFT}l.q.lora_A.weight`, dtype: 'F32', shape: [1, D_IN], data: new Uint8Array(D_IN * 4) },
    { name: `${PEFT}l.q.lora_B.weight`, dtype: 'F32', shape: [D_OUT, 1], data: new Uint8Array(D_OUT * 4) },
  ]), config: { peft_type: 'LORA', r: 1, lora_alpha: 1 } });
  assertThrowsTyped(c([{ adapter: foreign, weight: 1 }], { method: 'svd' }), LoRATypeError, ['another lora-wasm instance']);
  // extract
  const [Wt, Wb, Wodd] = [lw.matrix(20, 10), lw.matrix(20, 10), lw.matrix(10, 20)];
  const ex = (t: unknown, b: unknown, o: unknown) => () => lw.extractAdapter(t as never, b as never, o as never);
  assertThrowsTyped(ex(Wt, Wb, {}), LoRATypeError, ['exactly one of options.rank', 'options.energy']);
  assertThrowsTyped(ex(Wt, Wb, { rank: 2, energy: 0.5 }), LoRATypeError, ['exactly one']);
  assertThrowsTyped(ex(Wt, Wb, { energy: 0 }), LoRARangeError, ['energy must be a fraction in (0, 1]']);
  assertThrowsTyped(ex(Wt, Wb, { rank: 11 }), LoRARangeError, ['rank 11 exceeds min(out, in) = 10']);
  assertThrowsTyped(ex(Wt, Wodd, { rank: 2 }), LoRAShapeError, ['Wtuned is [20, 10] but Wbase is [10, 20]']);
  assertThrowsTyped(ex(Wt, [1, 2], { rank: 2 }), LoRATypeError, ['Wbase must be a Matrix']);
  assertThrowsTyped(ex({ a: Wt }, { b: Wb }, { rank: 2 }), LoRAShapeError, ['share no name']);
  assertThrowsTyped(ex(Wt, Wb, { rank: 2, oversample: -1 }), LoRARangeError, ['options.oversample must be an integer ≥ 0']);
  Wodd.dispose();
  const gone = lw.matrix(20, 10);
  gone.dispose();
  assertThrowsTyped(ex(Wt, gone, { rank: 2 }), LoRADisposedError, ['Wbase is a disposed Matrix [20, 10]']);
  // resize
  assertThrowsTyped(() => lw.resizeAdapter(a1, { rank: 0 }), LoRARangeError, ['options.rank must be an integer ≥ 1']);
  assertThrowsTyped(() => lw.resizeAdapter({} as never, { rank: 2 }), LoRATypeError, ['must be an Adapter']);
  for (const m of [Wt, Wb]) m.dispose();
  for (const a of [a1, a2, other, foreign]) a.dispose();
  other2.dispose();
  assert.ok(lw.memoryStats().liveBlocks <= live + 2, 'the failed calls left nothing behind (two small matrices were made inline above)');
});

test.run();
