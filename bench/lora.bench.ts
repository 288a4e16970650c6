/**
 * LoRALinear at 4096×4096, r = 16: the on-the-fly forward (X·Wᵀ + s·(X·Bᵀ)·Aᵀ) against the merged
 * forward (X·W'ᵀ) at batch 1, 16 and 256, and one training step (forward, backward for A and B,
 * AdamW) against the forward GEMM alone at batch 64.
 */
import type { LoRALinear, Matrix } from '../src/index.js';
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
      const y1 = onTheFly.forward(X).toArray();
      const y2 = merged.forward(X).data;
      let worst = 0;
      for (let i = 0; i < y1.length; i++) worst = Math.max(worst, Math.abs(y1[i]! - y2[i]!));
      if (!(worst < 1e-4)) throw new Error(`lora forward ${build}: merged and on-the-fly differ by ${worst}`);
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
    verify(`training forward ${build}`, layer.forward(X).data, n, D, D, (i, j) => {
      let value = 0, mag = 0;
      for (let q = 0; q < D; q++) {
        value += x[i * D + q]! * w[j * D + q]!;
        mag += Math.abs(x[i * D + q]! * w[j * D + q]!);
      }
      return { value, mag };
    });
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
