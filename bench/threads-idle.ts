/**
 * Threads after an idle gap: one merge call after `gap` ms of idling (the event loop sleeps), on 1 and
 * 2 threads, and the same calls back to back. Users' calls are rarely back to back: a pool that is fast
 * only when its workers are still spinning gains nothing in practice.
 *
 *   node --experimental-wasm-relaxed-simd --import tsx bench/threads-idle.ts [--calls 40] [--gap 30] [--roots dirA,dirB]
 *
 * --roots takes checkouts of this repository (default: this one) and imports each one's src/, so an old
 * and a new pool are measured in one process, interleaved: every round times each (root, threads) once
 * in a rotating order, and ratios are medians of per-round ratios (this 2-core machine is shared).
 * Each checkout's 2-thread merge must equal its 1-thread merge bit for bit before anything is timed.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { random } from './common.js';

const { values } = parseArgs({
  options: { calls: { type: 'string', default: '40' }, gap: { type: 'string', default: '30' }, roots: { type: 'string' }, shapes: { type: 'string' } },
});
const calls = Number(values.calls);
const gap = Number(values.gap);
const here = fileURLToPath(new URL('..', import.meta.url));
const roots = (values.roots ?? here).split(',').map((r) => path.resolve(r));
/** d×d W, rank r. */
const shapes: [number, number][] = (values.shapes ?? '4096x8,1024x16').split(',').map((s) => s.split('x').map(Number) as [number, number]);

interface Lw {
  threads: number;
  matrix(rows: number, cols: number, data?: Float32Array): { toFloat32(): Float32Array; dispose(): void };
  merge(W: unknown, A: unknown, B: unknown, o: { scale: number }): unknown;
}
interface Config { label: string; run: (sign: number) => void; dispose: () => void }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (x: number[]) => [...x].sort((p, q) => p - q)[x.length >> 1]!;
const fmt = (x: number) => x.toFixed(2);

async function configs(d: number, r: number): Promise<Config[]> {
  const w0 = random(d * d, 51 + r, 0.05), a = random(d * r, 52, 0.02), b = random(r * d, 53, 0.05);
  const out: Config[] = [];
  for (const root of roots) {
    const { init } = (await import(pathToFileURL(path.join(root, 'src/index.ts')).href)) as { init: (o: object) => Promise<Lw> };
    let first: Uint32Array | undefined;
    for (const threads of [1, 2]) {
      const lw = await init({ threads });
      if (lw.threads !== threads) throw new Error(`${root}: asked for ${threads} threads, got ${lw.threads}`);
      const W = lw.matrix(d, d, w0), A = lw.matrix(d, r, a), B = lw.matrix(r, d, b);
      lw.merge(W, A, B, { scale: 0.5 });
      const bits = new Uint32Array(W.toFloat32().buffer);
      first ??= bits;
      if (bits.some((v, i) => v !== first![i])) throw new Error(`${root}: ${threads} threads differ from 1 thread; refusing to time`);
      out.push({
        label: `${path.basename(root)} ${threads}t`,
        run: (sign) => void lw.merge(W, A, B, { scale: 0.5 * sign }),
        dispose: () => [W, A, B].forEach((m) => m.dispose()),
      });
    }
  }
  return out;
}

function report(title: string, cs: Config[], times: number[][]): void {
  console.log(`  ${title}`);
  for (let c = 0; c < cs.length; c++) console.log(`    ${cs[c]!.label.padEnd(24)} median ${fmt(median(times[c]!))} ms  (min ${fmt(Math.min(...times[c]!))})`);
  for (let c = 0; c + 1 < cs.length; c += 2) {
    const ratios = times[c]!.map((t, i) => t / times[c + 1]![i]!);
    console.log(`    ${path.basename(roots[c / 2]!)}: 1 thread / 2 threads, median of per-round ratios ${fmt(median(ratios))}×`);
  }
}

for (const [d, r] of shapes) {
  const cs = await configs(d, r);
  console.log(`merge ${d}×${d} r=${r}, ${calls} rounds`);
  // after an idle gap: each call alone
  const idle = cs.map(() => [] as number[]);
  for (let i = 0; i < calls; i++) {
    for (let k = 0; k < cs.length; k++) {
      const c = (i + k) % cs.length;
      await sleep(gap);
      const t = performance.now();
      cs[c]!.run(i % 2 ? -1 : 1);
      idle[c]!.push(performance.now() - t);
    }
  }
  report(`after ${gap} ms idle`, cs, idle);
  // back to back: bursts of 8 calls, the first of each burst not counted
  const b2b = cs.map(() => [] as number[]);
  for (let i = 0; i < calls; i++) {
    for (let k = 0; k < cs.length; k++) {
      const c = (i + k) % cs.length;
      await sleep(gap);
      cs[c]!.run(1);
      let sum = 0;
      for (let j = 0; j < 4; j++) {
        const t = performance.now();
        cs[c]!.run(j % 2 ? 1 : -1);
        sum += performance.now() - t;
      }
      cs[c]!.run(-1);
      b2b[c]!.push(sum / 4);
    }
  }
  report('back to back (mean of 4 calls after a warm call)', cs, b2b);
  cs.forEach((c) => c.dispose());
}
process.exit(0);
