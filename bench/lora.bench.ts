/**
 * LoRALinear at 4096×4096, r = 16: the on-the-fly forward (X·Wᵀ + s·(X·Bᵀ)·Aᵀ) against the merged
 * forward (X·W'ᵀ) at batch 1, 16 and 256, and one training step (forward, backward for A and B,
 * AdamW) against the forward GEMM alone at batch 64.
 */
import type { LoRALinear, Matrix } from '../src/index.js';
import { gemm64, gemmElement, linearElement, loraElement } from '../test/reference.js';
import { type Case, type Ctx, random, suite, verify } from './common.js';

const D = 4096;
const R = 16;

export async function benchLora(ctx: Ctx): Promise<void> {
  const w = random(D * D, 21, 0.02);
  const batches = ctx.quick ? [16] : [1, 16, 256];
  for (const n of batches) {
    const x = random(n * D, 22 + n);
    const cases: Case[] = [];
    const held: (Matrix | LoRALinear)[] = [];
    for (const lw of ctx.builds) {
      const build = lw.build;
      const W = lw.matrix(D, D, w), X = lw.matrix(n, D, x);
      const onTheFly = lw.linear({ W, r: R, alpha: 32, seed: 1 });
      onTheFly.A.data.set(random(D * R, 23, 0.01));
      const merged = lw.linear({ W, r: R, alpha: 32, seed: 1 });
      merged.A.data.set(onTheFly.A.data);
      merged.merge();
      held.push(onTheFly, merged, X, W);
      const want = loraElement(x, w, onTheFly.A.toArray(), onTheFly.B.toArray(), n, D, D, R, onTheFly.scale);
      verify(`on-the-fly forward ${build}`, onTheFly.forward(X).data, n, D, D + R, want, 8);
      verify(`merged forward ${build}`, merged.forward(X).data, n, D, D + R, want, 8);
      cases.push({ name: `on-the-fly forward (${build})`, by: 'lora-wasm', build, fn: () => () => onTheFly.forward(X) });
      cases.push({ name: `merged forward (${build})`, by: 'lora-wasm', build, fn: () => () => merged.forward(X) });
    }
    await suite(ctx, 'lora forward', `batch ${n}, 4096×4096 r=16`, 2 * n * D * D, 4 * D * D, cases);
    for (const h of held) h.dispose();
  }

  const n = 64;
  const x = random(n * D, 31), target = random(n * D, 32);
  const cases: Case[] = [];
  const held: { dispose(): void }[] = [];
  for (const lw of ctx.builds) {
    const build = lw.build;
    const X = lw.matrix(n, D, x), W = lw.matrix(D, D, w), T = lw.matrix(n, D, target), G = lw.matrix(n, D), Y = lw.matrix(n, D);
    const layer = lw.linear({ W, r: R, alpha: 32, inputGrad: false });
    const opt = lw.adamw(layer.parameters(), { lr: 1e-4 });
    held.push(layer, opt, X, W, T, G, Y);
    verify(`training forward ${build}`, layer.forward(X).data, n, D, D, linearElement(x, w, n, D, D));
    lw.gemm(Y, X, W, { transY: true });
    verify(`forward GEMM ${build}`, Y.data, n, D, D, linearElement(x, w, n, D, D));
    // one training step's gradient: ∂A = s·Gᵀ·H with H = X·Bᵀ, against float64 (G from this step's loss)
    lw.mseLoss(layer.forward(X), T, G);
    layer.backward(G);
    const h = gemm64({ data: x, rows: n, cols: D }, { data: layer.B.toArray(), rows: R, cols: D, trans: true });
    const g = G.toArray();
    verify(`training step ∂A ${build}`, layer.gradA.data, D, R, n + D, (j, k) =>
      gemmElement({ data: g, rows: n, cols: D, trans: true }, { data: h.value, mag: h.mag, rows: n, cols: R }, j, k, { alpha: layer.scale }));
    cases.push({ name: `forward GEMM X·Wᵀ alone (${build})`, by: 'lora-wasm', build, fn: () => () => lw.gemm(Y, X, W, { transY: true }) });
    cases.push({ name: `training step (${build})`, by: 'lora-wasm', build, fn: () => () => {
      lw.mseLoss(layer.forward(X), T, G);
      layer.backward(G);
      opt.step();
    } });
  }
  await suite(ctx, 'training step', 'batch 64, 4096×4096 r=16', 2 * n * D * D, 0, cases);
  for (const h of held) h.dispose();
}
