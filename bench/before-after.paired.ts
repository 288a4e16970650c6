/**
 * Nothing else slows down: the merge, the GEMM and a LoRA training step of two checkouts of this
 * repository (each its own src/ and build/), on one thread, in one process, interleaved round by round
 * (the machine is shared: slow spells hit both sides of a round), medians of per-round ratios.
 *
 *   node --experimental-wasm-relaxed-simd --import tsx bench/before-after.paired.ts --roots=OLD,NEW [--rounds=15] [--build=relaxed]
 *
 * Each case is checked to give the same bits on both checkouts before it is timed (a kernel that
 * changed its results is not a speed comparison).
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { interleaved, random } from './common.js';

const { values } = parseArgs({ options: { roots: { type: 'string' }, rounds: { type: 'string', default: '15' }, build: { type: 'string', default: 'relaxed' } } });
const roots = (values.roots ?? '').split(',').filter(Boolean).map((r) => path.resolve(r));
if (roots.length !== 2) throw new Error('--roots=OLD,NEW: two checkouts');
const rounds = Number(values.rounds);

type M = { data: Float32Array; dispose(): void; toFloat32(): Float32Array };
interface Lw {
  matrix(r: number, c: number, d?: Float32Array): M;
  merge(W: M, A: M, B: M, o: { scale: number }): unknown;
  gemm(Y: M, X: M, W: M, o: { transY: boolean }): unknown;
  linear(o: object): { forward(x: M): M; backward(g: M): unknown; parameters(): unknown[]; dispose(): void };
  adamw(p: unknown[], o: object): { step(): void; dispose(): void };
  mseLoss(p: M, t: M, g: M): number;
}
const lws: Lw[] = [];
for (const root of roots) {
  const { init } = (await import(pathToFileURL(path.join(root, 'src/index.ts')).href)) as { init: (o: object) => Promise<Lw> };
  lws.push(await init({ build: values.build, threads: 1 }));
}

interface Case { label: string; make: (lw: Lw) => { run: () => void; bits: () => Float32Array } }
const cases: Case[] = [];
for (const [d, r] of [[768, 8], [4096, 8], [4096, 16]] as const) {
  const w = random(d * d, 1 + r, 0.05), a = random(d * r, 2, 0.02), b = random(r * d, 3, 0.05);
  cases.push({
    label: `merge ${d}×${d} r=${r}`,
    make: (lw) => {
      const W = lw.matrix(d, d, w), A = lw.matrix(d, r, a), B = lw.matrix(r, d, b);
      let s = 0.5;
      return { run: () => { lw.merge(W, A, B, { scale: s }); s = -s; }, bits: () => W.toFloat32() };
    },
  });
}
{
  const [n, D] = [256, 4096];
  const x = random(n * D, 4), w = random(D * D, 5, 0.05);
  cases.push({
    label: `GEMM ${n}×${D}×${D}, X·Wᵀ`,
    make: (lw) => {
      const X = lw.matrix(n, D, x), W = lw.matrix(D, D, w), Y = lw.matrix(n, D);
      return { run: () => void lw.gemm(Y, X, W, { transY: true }), bits: () => Y.toFloat32() };
    },
  });
}
{
  const [n, D, R] = [64, 4096, 16];
  const x = random(n * D, 6), w = random(D * D, 7, 0.02), t = random(n * D, 8);
  cases.push({
    label: `training step, batch ${n}, ${D}×${D} r=${R}`,
    make: (lw) => {
      const X = lw.matrix(n, D, x), W = lw.matrix(D, D, w), T = lw.matrix(n, D, t), G = lw.matrix(n, D);
      const layer = lw.linear({ W, r: R, alpha: 32, inputGrad: false, seed: 1 });
      const opt = lw.adamw(layer.parameters(), { lr: 1e-4 });
      return { run: () => { lw.mseLoss(layer.forward(X), T, G); layer.backward(G); opt.step(); }, bits: () => G.toFloat32() };
    },
  });
}

console.log(`before/after, ${values.build} build, 1 thread, ${rounds} interleaved rounds: ${roots.map((r) => path.basename(r)).join(' → ')}`);
console.log('| case | before ms | after ms | after / before |\n|---|---|---|---|');
for (const c of cases) {
  const [old, now] = lws.map((lw) => c.make(lw));
  old!.run();
  now!.run();
  const [p, q] = [new Uint32Array(old!.bits().buffer), new Uint32Array(now!.bits().buffer)];
  if (p.some((v, i) => v !== q[i])) throw new Error(`${c.label}: the two checkouts give different bits; refusing to time`);
  const res = interleaved([old!, now!], c.label.startsWith('merge 768') ? rounds * 20 : rounds);
  console.log(`| ${c.label} | ${res.median(0).toFixed(2)} | ${res.median(1).toFixed(2)} | ${res.pairedRatio(1, 0).toFixed(3)}× |`);
}
process.exit(0);
