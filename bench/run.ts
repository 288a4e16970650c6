/**
 * npm run bench [-- --quick] [-- --only=merge,half,gemm,lora,cli,threads,adapters,onnxruntime]
 *
 * Runs every benchmark in one process, so each ratio compares figures from the same run, prints
 * the tables, checks the targets, and (full runs of every group) rewrites bench/RESULTS.md. benny's JSON, CSV and
 * chart.html land in bench/results/ (gitignored). Single thread, except the threads tables.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import { detectFeatures, init } from '../src/index.js';
import type { Ctx, Row } from './common.js';
import { benchAdapters } from './adapters.bench.js';
import { benchCli } from './cli.bench.js';
import { benchGemm } from './gemm.bench.js';
import { benchHalf } from './half.bench.js';
import { benchLora } from './lora.bench.js';
import { benchOnnxruntime } from './onnxruntime.bench.js';
import { benchRank } from './rank.bench.js';
import { benchThreads } from './threads.bench.js';

const quick = process.argv.includes('--quick');
const onlyArg = process.argv.find((a) => a.startsWith('--only='))?.slice(7);
const only = new Set((onlyArg ?? 'merge,half,gemm,lora,cli,threads,adapters,onnxruntime').split(','));
const started = performance.now();

setWasmPaths(`${path.resolve('node_modules/@tensorflow/tfjs-backend-wasm/dist')}/`);
await tf.setBackend('wasm');
await tf.ready();

const ctx: Ctx = { quick, builds: [await init({ build: 'baseline', threads: 1 })], rows: [], notes: [] };
// --quick times the best build only (relaxed where the engine has it): half the cases
if (detectFeatures().relaxed) ctx.builds = quick ? [await init({ build: 'relaxed', threads: 1 })] : [...ctx.builds, await init({ build: 'relaxed', threads: 1 })];
else ctx.notes.push('relaxed SIMD is not available in this engine (Node 20 needs --experimental-wasm-relaxed-simd): baseline only');
ctx.notes.push(`tfjs-backend-wasm ${tf.version_core}, multithreading ${tf.env().getBool('WASM_HAS_MULTITHREAD_SUPPORT') ? 'on' : 'off'} (single thread)`);

const groups: [string, (c: Ctx) => Promise<void>][] = [
  ['merge', benchRank], ['half', benchHalf], ['gemm', benchGemm], ['lora', benchLora], ['cli', benchCli],
  ['threads', benchThreads], ['adapters', benchAdapters], ['onnxruntime', benchOnnxruntime],
];
/** Wall seconds per group, printed at the end: where a run's time goes. */
const spent: string[] = [];
for (const [name, run] of groups) {
  if (!only.has(name)) continue;
  const t = performance.now();
  await run(ctx);
  spent.push(`${name} ${((performance.now() - t) / 1000).toFixed(0)} s`);
}

// ---------------------------------------------------------------- tables
const fmt = (v: number, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : '-');
const gflops = (r: Row) => (r.flops && !floor(r.by) ? r.flops / (r.ms * 1e6) : Number.NaN);
const gbs = (r: Row) => (r.bytes ? r.bytes / (r.ms * 1e6) : Number.NaN);
const peer = (shapeRows: Row[], by: Row['by']) => shapeRows.find((x) => x.by === by);
/** Floors (a copy of W, `cp` of a file): the tables give a row's time over theirs, not their time over the row's. */
const floor = (by: Row['by']) => by === 'copy' || by === 'cp';

function tables(markdown: boolean): string {
  const out: string[] = [];
  const groups = [...new Set(ctx.rows.map((r) => r.group))];
  for (const group of groups) {
    const rows = ctx.rows.filter((r) => r.group === group);
    const peers = (['copy', 'cp', 'plain JS', 'ml-matrix', 'tfjs-wasm', 'numpy', 'onnxruntime-web', 'onnxruntime-node'] as const).filter((p) => rows.some((r) => r.by === p));
    const threaded = rows.some((r) => r.threads !== undefined);
    const head = ['shape', 'case', 'ms', 'GFLOP/s', 'GB/s', ...peers.map((p) => (floor(p) ? `× ${p}` : `vs ${p}`)), ...(threaded ? ['× 1 thread'] : [])];
    const lines = rows.map((r) => {
      const same = rows.filter((x) => x.shape === r.shape);
      const one = same.find((x) => x.by === 'lora-wasm' && x.threads === 1);
      const scaling = threaded ? [r.by === 'lora-wasm' && one && r.threads !== undefined ? fmt(one.ms / r.ms, 2) : ''] : [];
      const ratios = peers.map((p) => {
        const q = peer(same, p);
        if (!q || r.by === p) return '';
        return floor(p) ? fmt(r.ms / q.ms, 2) : `${fmt(q.ms / r.ms, q.ms / r.ms < 10 ? 2 : 0)}×`;
      });
      return [r.shape, r.name, fmt(r.ms, 2), fmt(gflops(r)), fmt(gbs(r)), ...ratios, ...scaling];
    });
    out.push(markdown ? `### ${group}\n` : `\n${group}`);
    if (markdown) {
      out.push(`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...lines.map((l) => `| ${l.join(' | ')} |`), '');
    } else {
      const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
      const pad = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
      out.push(pad(head), ...lines.map(pad));
    }
  }
  return out.join('\n');
}

// ---------------------------------------------------------------- targets
interface Target { claim: string; met: boolean; detail: string }
const targets: Target[] = [];
const find = (group: string, pred: (r: Row) => boolean) => ctx.rows.filter((r) => r.group === group && pred(r));
for (const lw of ctx.builds) {
  const build = lw.build;
  const merges = find('merge', (r) => r.name === `merge (${build})`);
  const big8 = merges.find((r) => r.shape.startsWith('4096×4096 r=8'));
  const copy8 = find('merge', (r) => r.by === 'copy' && r.shape.startsWith('4096×4096 r=8'))[0];
  if (big8 && copy8) {
    const ratio = big8.ms / copy8.ms;
    targets.push({ claim: `merge 4096×4096 r=8 ≤ 1.3× the W copy (${build})`, met: ratio <= 1.3, detail: `${fmt(ratio, 2)}× (${fmt(big8.ms, 2)} ms vs ${fmt(copy8.ms, 2)} ms)` });
  }
  for (const [by, need, label, filter] of [
    ['tfjs-wasm', 5, 'tfjs-backend-wasm W + s·matMul(A, B)', () => true],
    ['plain JS', 20, 'plain JS', () => true],
    ['numpy', 1.5, 'the numpy seed code (r ≤ 16)', (r: Row) => Number(r.shape.match(/r=(\d+)/)![1]) <= 16],
  ] as const) {
    const pairs = merges.filter(filter).map((r) => ({ r, q: find('merge', (x) => x.by === by && x.shape === r.shape)[0] })).filter((p) => p.q);
    if (pairs.length === 0) continue;
    const worst = pairs.reduce((a, p) => (p.q!.ms / p.r.ms < a.q!.ms / a.r.ms ? p : a));
    const speedup = worst.q!.ms / worst.r.ms;
    targets.push({ claim: `merge ≥ ${need}× faster than ${label}, every case (${build})`, met: speedup >= need, detail: `worst ${fmt(speedup, 1)}× at ${worst.r.shape}` });
  }
  const r64 = merges.find((r) => r.shape.startsWith('4096×4096 r=64'));
  const micro = find('micro-kernel', (r) => r.build === build)[0];
  if (r64 && micro) {
    const frac = gflops(r64) / gflops(micro);
    targets.push({ claim: `rank-r kernel at r=64 ≥ 85 % of the GEMM micro-kernel's GFLOP/s (${build})`, met: frac >= 0.85, detail: `${fmt(100 * frac, 0)} % (${fmt(gflops(r64))} vs ${fmt(gflops(micro))} GFLOP/s)` });
  }
  const g = find('gemm', (r) => r.name === `X·Wᵀ, W [out, in] (${build})`)[0];
  const tfFast = find('gemm', (r) => r.name === 'tfjs-wasm matMul(X, Wt)')[0];
  const tfT = find('gemm', (r) => r.name === 'tfjs-wasm matMul(X, W, false, true)')[0];
  if (g && tfFast) {
    const need = build === 'relaxed' ? 1.3 : 1.0;
    targets.push({ claim: `GEMM X·Wᵀ ≥ ${need}× tfjs matMul(X, Wt) (${build})`, met: tfFast.ms / g.ms >= need, detail: `${fmt(tfFast.ms / g.ms, 2)}×` });
  }
  if (g && tfT) targets.push({ claim: `GEMM X·Wᵀ ≥ 10× tfjs matMul(X, W, false, true) (${build})`, met: tfT.ms / g.ms >= 10, detail: `${fmt(tfT.ms / g.ms, 1)}×` });
  const f32Merge = find('half merge', (r) => r.name === `merge, W f32 (${build})`)[0];
  for (const [dtype, need] of [['f16', 1.8], ['bf16', 1.25]] as const) {
    const h = find('half merge', (r) => r.name === `merge, W ${dtype} (${build})`)[0];
    if (h && f32Merge) {
      targets.push({ claim: `merge 4096×4096 r=16 with W in ${dtype} ≤ ${need}× the f32 merge (${build})`, met: h.ms / f32Merge.ms <= need, detail: `${fmt(h.ms / f32Merge.ms, 2)}× (${fmt(h.ms, 2)} ms vs ${fmt(f32Merge.ms, 2)} ms)` });
    }
  }
  // batch-1 GEMV against tfjs-wasm (gemv group) and onnxruntime-web (its own group, relaxed lora-wasm only), 1 thread
  const gv = find('gemv', (r) => r.by === 'lora-wasm' && r.build === build)[0];
  const tfGv = find('gemv', (r) => r.by === 'tfjs-wasm')[0];
  if (gv && tfGv) targets.push({ claim: `batch-1 GEMV 4096×4096 ≥ 1.2× tfjs-wasm, 1 thread (${build})`, met: tfGv.ms / gv.ms >= 1.2, detail: `${fmt(tfGv.ms / gv.ms, 2)}× (${fmt(gv.ms, 2)} ms vs ${fmt(tfGv.ms, 2)} ms)` });
  const step = find('training step', (r) => r.name === `training step (${build})`)[0];
  const fwd = find('training step', (r) => r.name === `forward GEMM X·Wᵀ alone (${build})`)[0];
  if (step && fwd) targets.push({ claim: `training step ≤ 1.25× the forward GEMM (${build})`, met: step.ms / fwd.ms <= 1.25, detail: `${fmt(step.ms / fwd.ms, 2)}×` });
}

// threads (one run, ratios within it)
const threadRow = (group: string, shape: string, threads: number) =>
  find(group, (r) => r.by === 'lora-wasm' && r.shape.startsWith(shape) && r.threads === threads)[0];
{
  const m2 = threadRow('threads: merge', '4096×4096 r=8', 2);
  const copy = find('threads: merge', (r) => r.by === 'copy' && r.shape.startsWith('4096×4096 r=8'))[0];
  const pc = ctx.paired?.find((p) => p.group === 'threads: merge vs copy' && p.shape.startsWith('4096×4096 r=8'));
  if (m2 && copy && pc) {
    targets.push({
      claim: 'merge 4096×4096 r=8 on 2 threads ≤ 1.0× the single-thread copy of W (paired, interleaved)', met: 1 / pc.ratio <= 1.0,
      detail: `${fmt(1 / pc.ratio, 2)}× over ${pc.pairs} pairs (medians ${fmt(pc.msTwo, 2)} vs ${fmt(pc.msOne, 2)} ms); the benny medians above give ${fmt(m2.ms / copy.ms, 2)}×`,
    });
  }
  for (const [group, shape, need, label] of [
    ['threads: merge', '4096×4096 r=16', 1.8, 'merge 4096×4096 r=16'],
    ['threads: gemm', '256×4096×4096', 1.8, 'GEMM 256×4096×4096'],
    ['threads: training step', 'batch 64', 1.7, 'LoRA training step (batch 64, 4096×4096 r=16)'],
  ] as const) {
    const [one, two] = [threadRow(group, shape, 1), threadRow(group, shape, 2)];
    const paired = ctx.paired?.find((p) => p.group === group && p.shape.startsWith(shape));
    if (one && two && paired) {
      targets.push({
        claim: `${label}: 2 threads ≥ ${need}× one thread (paired, interleaved)`, met: paired.ratio >= need,
        detail: `${fmt(paired.ratio, 2)}× over ${paired.pairs} pairs (medians ${fmt(paired.msTwo, 2)} vs ${fmt(paired.msOne, 2)} ms); the benny medians above give ${fmt(one.ms / two.ms, 2)}×`,
      });
    }
  }
  const po = ctx.paired?.find((p) => p.group === 'threads: per-call overhead');
  if (po) {
    targets.push({
      claim: `a merge below the split threshold costs the same with a pool (${po.shape}, threads: 2 vs 1, paired)`, met: 1 / po.ratio <= 1.1,
      detail: `${fmt(1 / po.ratio, 2)}× over ${po.pairs} pairs (${fmt(po.msTwo * 1e3, 0)} µs vs ${fmt(po.msOne * 1e3, 0)} µs)`,
    });
  }
}

{
  const big = find('adapters: extract', (r) => r.name.startsWith('GEMM 256'))[0];
  const thin = find('adapters: extract', (r) => r.name.startsWith('GEMM 4096'))[0];
  const ex = find('adapters: extract', (r) => r.name.startsWith('extractAdapter'))[0];
  const pe = ctx.paired?.find((p) => p.group === 'adapters: extract');
  if (big && thin && ex && pe) {
    targets.push({
      claim: 'extractAdapter 4096×4096 k=16 at ≥ 60 % of the GEMM\'s GFLOP/s on its own products (paired: the 6 GEMM passes alone over the whole call)', met: pe.ratio >= 0.6,
      detail: `${fmt(100 * pe.ratio, 0)} % over ${pe.pairs} pairs (medians ${fmt(pe.msOne, 0)} ms of GEMM passes vs ${fmt(pe.msTwo, 0)} ms in all); benny: ${fmt(gflops(ex))} vs ${fmt(gflops(thin))} GFLOP/s on 4096×4096·4096×32 (${fmt(100 * gflops(ex) / gflops(thin), 0)} %), ${fmt(100 * gflops(ex) / gflops(big), 0)} % of the 256×4096×4096 GEMM's ${fmt(gflops(big))}`,
    });
  }
  const base = find('adapters: serve', (r) => r.name.startsWith('base GEMM'))[0];
  const set = find('adapters: serve', (r) => r.name.startsWith('adapterSet'))[0];
  const ps = ctx.paired?.find((p) => p.group === 'adapters: serve');
  if (base && set && ps) {
    targets.push({
      claim: 'adapterSet.forward, batch 32 over 64 adapters r=16, ≤ 1.3× the base GEMM alone (paired, interleaved)', met: 1 / ps.ratio <= 1.3,
      detail: `${fmt(1 / ps.ratio, 2)}× over ${ps.pairs} pairs (medians ${fmt(ps.msTwo, 1)} vs ${fmt(ps.msOne, 1)} ms); the benny medians above give ${fmt(set.ms / base.ms, 2)}×`,
    });
  }
}

// GEMV against onnxruntime-web, 1 and 2 threads (its group times lora-wasm's best build beside it)
for (const threads of [1, 2]) {
  const group = `onnxruntime, ${threads} thread${threads > 1 ? 's' : ''}`;
  const mine = find(group, (r) => r.by === 'lora-wasm' && r.shape.startsWith('GEMV'))[0];
  const ort = find(group, (r) => r.by === 'onnxruntime-web' && r.shape.startsWith('GEMV'))[0];
  if (mine && ort) targets.push({ claim: `batch-1 GEMV 4096×4096 ≥ 1.2× onnxruntime-web, ${threads} thread${threads > 1 ? 's' : ''}`, met: ort.ms / mine.ms >= 1.2, detail: `${fmt(ort.ms / mine.ms, 2)}× (${fmt(mine.ms, 2)} ms vs ${fmt(ort.ms, 2)} ms)` });
}

// after an idle gap (threads group): the pool must keep its gain when calls are not back to back
for (const [shape, need, label] of [['4096×4096 r=8', 1.6, '≥ 1.6×'], ['1024×1024 r=16', 1.0, 'never slower than']] as const) {
  const p = ctx.paired?.find((x) => x.group.startsWith('threads: merge after') && x.shape === shape);
  if (p) {
    targets.push({
      claim: `merge ${shape} after a 30 ms idle gap: 2 threads ${label} 1 thread (paired, interleaved)`, met: p.ratio >= need,
      detail: `${fmt(p.ratio, 2)}× over ${p.pairs} pairs (medians ${fmt(p.msOne, 2)} ms on 1 thread, ${fmt(p.msTwo, 2)} ms on 2)`,
    });
  }
}

// the CLI file merges against cp && sync (a full run; --quick merges the GPT-NeoX-shaped base only)
for (const [pick, need, label] of [
  [(r: Row) => r.shape.includes('r=16 on all'), 2.0, 'every tensor targeted'],
  [(r: Row) => r.shape.includes('q_proj, v_proj'), 1.3, 'attention-only adapter (half the tensors)'],
] as const) {
  const copy = find('cli merge', (r) => r.by === 'copy' && pick(r))[0];
  const merge = find('cli merge', (r) => r.by === 'lora-wasm' && pick(r))[0];
  if (copy && merge) {
    targets.push({ claim: `CLI merge of the ${merge.shape.split(',')[0]} base, ${label}: ≤ ${need}× the time of cp && sync`, met: merge.ms / copy.ms <= need, detail: `${fmt(merge.ms / copy.ms, 2)}× (${fmt(merge.ms / 1000, 2)} s vs ${fmt(copy.ms / 1000, 2)} s)` });
  }
}
{
  const neox = find('cli merge', (r) => r.by === 'lora-wasm' && r.shape.includes('NeoX'))[0];
  if (neox) {
    const mbs = neox.bytes / 2 / 1e6 / (neox.ms / 1000);
    targets.push({ claim: 'CLI merge of the 604 MB F16 GPT-NeoX-shaped base, r=1 on 24 tensors: ≥ 500 MB/s', met: mbs >= 500, detail: `${fmt(mbs, 0)} MB/s (${fmt(neox.ms / 1000, 2)} s)` });
  }
  const merges = find('cli merge', (r) => r.by === 'lora-wasm' && r.rssMiB !== undefined);
  if (merges.length) {
    const worst = Math.max(...merges.map((r) => r.rssMiB!));
    targets.push({ claim: 'peak RSS of every CLI merge ≤ 300 MiB', met: worst <= 300, detail: `${merges.map((r) => `${fmt(r.rssMiB!, 0)} MiB (${r.shape.split(',')[0]})`).join(', ')}` });
  }
}

const seconds = (performance.now() - started) / 1000;
const machine = `${os.cpus()[0]?.model.trim() ?? 'unknown CPU'}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.arch()}`;
const command = `npm run bench${quick ? ' -- --quick' : ''}`;
console.log(`\nMedians, single thread unless a case names its threads. Ratios: "× copy" is time over the W copy; "vs X" is X's time over this row's.\n${machine}`);
console.log(tables(false));
console.log('\nTargets');
for (const t of targets) console.log(`  ${t.met ? 'met   ' : 'MISSED'}  ${t.claim}: ${t.detail}`);
for (const n of ctx.notes) console.log(`note: ${n}`);
console.log(`\n${quick ? 'quick' : 'full'} run: ${fmt(seconds, 0)} s (${spent.join(', ')}; the rest is start-up and tables)`);

const md = [
  '# Benchmark results',
  '',
  `Latest ${quick ? 'quick' : 'full'} run: ${new Date().toISOString().slice(0, 10)}, ${fmt(seconds, 0)} s. Reproduce with \`${command}\`.`,
  '',
  `Machine: ${machine}. Single thread except the threads tables (\`init({ threads })\`); relaxed SIMD through \`--experimental-wasm-relaxed-simd\`.`,
  'Medians of benny samples; every case was checked against a float64 reference before it was timed.',
  '"× copy" is the time over one `Float32Array.prototype.set` copy of W in the same run; "vs X" is X\'s time over the row\'s (higher is faster).',
  'GB/s counts W read and written once (merge), written once (delta), or C written once (GEMM).',
  '',
  '## Targets',
  '',
  '| target | met | measured |',
  '|---|---|---|',
  ...targets.map((t) => `| ${t.claim} | ${t.met ? 'yes' : '**no**'} | ${t.detail} |`),
  '',
  '## Notes',
  '',
  ...ctx.notes.map((n) => `- ${n}`),
  '',
  '## Figures',
  '',
  tables(true),
  '',
].join('\n');
mkdirSync('bench/results', { recursive: true });
// bench/RESULTS.md is the full run of every group; a quick or partial run writes beside the raw results
const everything = !quick && onlyArg === undefined;
const out = everything ? 'bench/RESULTS.md' : `bench/results/RESULTS-${quick ? 'quick' : 'full'}${onlyArg ? `-${[...only].join('-')}` : ''}.md`;
// the hand-kept "## Notes from earlier runs" section of bench/RESULTS.md outlives the run that rewrites the rest
const NOTES = '## Notes from earlier runs';
const kept = everything && existsSync(out) ? readFileSync(out, 'utf8').split(NOTES)[1] : undefined;
writeFileSync(out, kept === undefined ? md : `${md}\n${NOTES}${kept}`);
console.log(`wrote ${out}`);
