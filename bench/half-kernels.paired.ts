/**
 * Half-precision kernels, paired and interleaved (one call of each case per round, medians over
 * rounds) because the machine is shared: the merge W ← round(f32(W) + s·A·B) at 4096×4096, r = 16
 * with W in f32, f16 and bf16, and the f32 ↔ f16/bf16 conversions of 4096×4096 values. Reports each
 * half merge against the f32 merge of the same build and round, and, with --old=DIR (a copy of
 * build/ from before a change), each case against the older build's.
 *
 *   node --experimental-wasm-relaxed-simd --import tsx bench/half-kernels.paired.ts [--rounds=30] [--old=DIR] [--build=relaxed]
 *
 * Every merge is checked against float64 rounded once before it is timed.
 */
import path from 'node:path';
import { type DType, type LoRAWasm, type Matrix, detectFeatures, init } from '../src/index.js';
import { halfUlp, rankElement, U } from '../test/reference.js';
import { interleaved, random } from './common.js';

const arg = (name: string): string | undefined => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1];
const rounds = Number(arg('rounds') ?? 30);
const oldDir = arg('old');
const builds = (arg('build')?.split(',') ?? (detectFeatures().relaxed ? ['baseline', 'relaxed'] : ['baseline'])) as ('baseline' | 'relaxed')[];
const D = 4096, R = 16, S = 0.5;

const w = random(D * D, 91, 0.05), a = random(D * R, 92, 0.02), b = random(R * D, 93, 0.05);

function verify(name: string, got: Float32Array, dtype: DType, w0: Float32Array): void {
  const want = rankElement(w0, a, b, D, R, D, S);
  for (const i of [0, 1, 5, D >> 1, D - 1]) {
    for (let j = 0; j < D; j += j < 16 ? 1 : 97) {
      const { value, mag } = want(i, j);
      const g = got[i * D + j]!;
      if (!(Math.abs(g - value) <= halfUlp(value, dtype) * 1.0001 + (R + 6) * U * mag * 2)) throw new Error(`${name}: [${i}, ${j}] ${g} vs ${value}; refusing to time a wrong kernel`);
    }
  }
}

interface Case { name: string; run: () => unknown }
const cases: Case[] = [];
const held: Matrix<DType>[] = [];
for (const build of builds) {
  const variants: [string, LoRAWasm][] = [['', await init({ build, threads: 1 })]];
  if (oldDir) variants.push(['old ', await init({ build, threads: 1, wasm: path.resolve(oldDir, `lora-${build}.wasm`) })]);
  for (const [tag, lw] of variants) {
    const A = lw.matrix(D, R, a), B = lw.matrix(R, D, b);
    held.push(A, B);
    for (const dtype of ['f32', 'f16', 'bf16'] as const) {
      const W = lw.matrix(D, D, w, { dtype: dtype as 'f16' });
      held.push(W);
      const w0 = W.toFloat32();
      lw.merge(W, A, B, { scale: S });
      verify(`${tag}merge ${dtype} ${build}`, W.toFloat32(), dtype, w0);
      lw.unmerge(W, A, B, { scale: S });
      let sign = 1;
      cases.push({ name: `${tag}merge, W ${dtype} (${build})`, run: () => { lw.merge(W, A, B, { scale: sign * S }); sign = -sign; } });
    }
    const F = lw.matrix(D, D, w);
    held.push(F);
    for (const dtype of ['f16', 'bf16'] as const) {
      const H = lw.matrix(D, D, w, { dtype: dtype as 'f16' });
      held.push(H);
      cases.push({ name: `${tag}convert f32 → ${dtype} (${build})`, run: () => lw.convert(H, F) });
      cases.push({ name: `${tag}convert ${dtype} → f32 (${build})`, run: () => lw.convert(F, H) });
    }
  }
}

const { median, pairedRatio } = interleaved(cases, rounds, 2);
const at = (name: string) => cases.findIndex((c) => c.name === name);
console.log(`half-precision kernels 4096×4096 (merge r = 16), ${rounds} interleaved rounds, medians`);
for (const [i, c] of cases.entries()) {
  const m = c.name.match(/^(old )?merge, W (f16|bf16) \((\w+)\)$/);
  const vsF32 = m ? `  ${pairedRatio(i, at(`${m[1] ?? ''}merge, W f32 (${m[3]})`)).toFixed(2)}× the f32 merge` : '';
  const old = !c.name.startsWith('old ') && oldDir ? `  new/old ${pairedRatio(i, at(`old ${c.name}`)).toFixed(2)}` : '';
  console.log(`  ${c.name.padEnd(34)} ${median(i).toFixed(2).padStart(8)} ms${vsF32}${old}`);
}
for (const m of held) m.dispose();
process.exit(0);
