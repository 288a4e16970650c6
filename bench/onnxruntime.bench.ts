/**
 * lora-wasm against onnxruntime on 1 and 2 threads: the GEMM 256×4096×4096 (Y = X·Wᵀ), the batch-1
 * GEMV 1×4096 · (4096×4096)ᵀ and the merge W + s·A·B at 4096², r = 8 and 16
 * (bench/peers/onnxruntime-cases.ts). Peers:
 *   onnxruntime-web, wasm backend (SIMD, env.wasm.numThreads 1 and 2), in Node;
 *   onnxruntime-node, native CPU (MLAS, intraOpNumThreads 1 and 2), where its binary loads.
 * Each peer runs in its own process (bench/peers/onnxruntime.ts), checks its result against float64
 * and prints medians; lora-wasm runs here on the best build, 1 thread and init({ threads: 2 }), each
 * case checked against the same reference before benny times it. One table per thread count.
 * --quick: 1 thread, the GEMV and the r = 8 merge.
 */
import { spawnSync } from 'node:child_process';
import { type LoRAWasm, type Matrix, init } from '../src/index.js';
import { type Case, type Ctx, type Row, suite, verify } from './common.js';
import { ORT_CASES, ORT_S, caseBytes, caseData, caseFlops } from './peers/onnxruntime-cases.js';

const THREADS = [1, 2];
/** --quick: 1 thread, the GEMV and the r = 8 merge. */
const QUICK_CASES = new Set(['gemv', 'merge8']);

interface PeerRun { version: string; cases: { id: string; ms: number; reps: number }[] }

function runPeer(ctx: Ctx, runtime: 'web' | 'node', threads: number, only: string[]): PeerRun | undefined {
  const job = JSON.stringify({ runtime, threads, quick: ctx.quick, only });
  const run = spawnSync(process.execPath, ['--import', 'tsx', 'bench/peers/onnxruntime.ts', job], { encoding: 'utf8', timeout: 600_000, maxBuffer: 1 << 20 });
  if (run.error || run.status !== 0) {
    const why = run.error?.message ?? run.stderr.trim().split('\n').filter((l) => /Error|error|refusing/.test(l)).at(0) ?? `exit ${run.status}`;
    // a wrong result is a failure, not a missing peer
    if (/refusing to time/.test(run.stderr)) throw new Error(`onnxruntime-${runtime}: ${why}`);
    ctx.notes.push(`onnxruntime-${runtime} (${threads} thread${threads > 1 ? 's' : ''}) skipped: it did not load or run here (${why})`);
    return undefined;
  }
  return JSON.parse(run.stdout.trim().split('\n').at(-1)!) as PeerRun;
}

export async function benchOnnxruntime(ctx: Ctx): Promise<void> {
  const build = ctx.builds.at(-1)!.build;
  const instances: LoRAWasm[] = ctx.quick ? [ctx.builds.at(-1)!] : [ctx.builds.at(-1)!, await init({ build, threads: 2 })];
  const cases = ORT_CASES.filter((c) => !ctx.quick || QUICK_CASES.has(c.id));
  const group = (threads: number) => `onnxruntime, ${threads} thread${threads > 1 ? 's' : ''}`;
  for (const c of cases) {
    const d = caseData(c);
    for (const lw of instances) {
      const held: Matrix[] = [];
      let call: () => void;
      if (c.kind === 'linear') {
        const X = lw.matrix(c.n, c.k, d.arrays.X), W = lw.matrix(c.m, c.k, d.arrays.W), Y = lw.matrix(c.n, c.m);
        held.push(X, W, Y);
        call = () => lw.gemm(Y, X, W, { transY: true });
        call();
        verify(`${c.id} ${lw.threads} thread(s)`, Y.data, d.rows, d.cols, d.k, d.want);
      } else {
        // mergeInto: W stays, the result goes to a kept buffer (onnxruntime also reads W and writes a new Y)
        const W = lw.matrix(c.m, c.k, d.arrays.W), A = lw.matrix(c.m, c.n, d.arrays.A), B = lw.matrix(c.n, c.k, d.arrays.B), Y = lw.matrix(c.m, c.k);
        held.push(W, A, B, Y);
        call = () => lw.mergeInto(Y, W, A, B, { scale: ORT_S });
        call();
        verify(`${c.id} ${lw.threads} thread(s)`, Y.data, d.rows, d.cols, d.k, d.want);
      }
      const name = `lora-wasm ${c.kind === 'linear' ? 'gemm(Y, X, W, { transY })' : 'mergeInto(Y, W, A, B)'} (${build})`;
      const cases: Case[] = [{ name, by: 'lora-wasm', build, speed: c.id === 'gemm' ? 'slow' : 'fast', fn: () => call }];
      await suite(ctx, group(lw.threads), c.label, caseFlops(c), caseBytes(c), cases);
      for (const h of held) h.dispose();
    }
  }
  instances[1]?.dispose();

  for (const runtime of ['web', 'node'] as const) {
    for (const threads of ctx.quick ? [1] : THREADS) {
      const res = runPeer(ctx, runtime, threads, cases.map((c) => c.id));
      if (!res) continue;
      if (threads === 1) ctx.notes.push(`onnxruntime-${runtime} ${res.version}: ${runtime === 'web' ? 'wasm backend (SIMD) in Node, env.wasm.numThreads' : 'native CPU execution provider, intraOpNumThreads'} ${ctx.quick ? '1' : '1 and 2'}, one process each; GEMM/GEMV as Gemm(X, W, transB = 1) with W an initializer, the merge as one Gemm(A, B, W, alpha = s, beta = 1) node with every operand fed; ${runtime === 'node' ? 'output into a pre-allocated tensor' : 'a new output tensor per run (a pre-allocated CPU output is left unfilled by onnxruntime-web 1.31)'}; medians of ${res.cases.map((x) => `${x.reps}`).join('/')} runs after a warm-up`);
      for (const r of res.cases) {
        const c = ORT_CASES.find((x) => x.id === r.id)!;
        const row: Row = { group: group(threads), shape: c.label, name: `onnxruntime-${runtime} ${c.kind === 'linear' ? 'Gemm(X, W, transB)' : 'Gemm(A, B, W, alpha = s)'}`, by: `onnxruntime-${runtime}`, ms: r.ms, flops: caseFlops(c), bytes: caseBytes(c) };
        ctx.rows.push(row);
      }
    }
  }
}
