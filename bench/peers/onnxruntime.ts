/**
 * The onnxruntime peers, one process per runtime and thread count (onnxruntime-web reads
 * env.wasm.numThreads once, when its wasm starts, so 1 and 2 threads cannot share a process):
 *
 *   node --import tsx bench/peers/onnxruntime.ts '{"runtime":"web","threads":2,"quick":true}'
 *
 * Builds each case's one-node ONNX model in code (bench/peers/onnx.ts), runs it once, checks the
 * result against float64 (bench/common.ts verify: a wrong peer fails the bench), then times `reps`
 * runs after one warm-up and prints one JSON line: { version, cases: [{ id, ms, reps }] }.
 * Each run includes what a user of the runtime pays per call: feeding the inputs (onnxruntime-web
 * copies them into its wasm heap) and receiving the output (onnxruntime-node into a pre-allocated
 * tensor; onnxruntime-web as a new one).
 */
import { verify } from '../common.js';
import { ORT_CASES, type OrtCase, caseData } from './onnxruntime-cases.js';
import { onnxModel } from './onnx.js';

interface Job { runtime: 'web' | 'node'; threads: number; quick: boolean; only?: string[] }
const job = JSON.parse(process.argv[2]!) as Job;

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the two packages share onnxruntime-common's API
type Ort = any;
const ort: Ort = job.runtime === 'node' ? await import('onnxruntime-node') : await import('onnxruntime-web');
if (job.runtime === 'web') {
  ort.env.wasm.numThreads = job.threads;
  ort.env.wasm.simd = true;
}
const sessionOptions = job.runtime === 'node'
  ? { executionProviders: ['cpu'], intraOpNumThreads: job.threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' }
  : { executionProviders: ['wasm'], graphOptimizationLevel: 'all' };

const median = (xs: number[]): number => xs.slice().sort((a, b) => a - b)[xs.length >> 1]!;

async function runCase(c: OrtCase): Promise<{ id: string; ms: number; reps: number }> {
  const d = caseData(c);
  const session = await ort.InferenceSession.create(onnxModel(d.graph), sessionOptions);
  const feeds = Object.fromEntries(d.feeds.map((f) => [f.name, new ort.Tensor('float32', f.data, f.shape)]));
  // onnxruntime-node writes into a pre-allocated output (no fresh 16–64 MiB per run, which costs page
  // faults); onnxruntime-web 1.31 leaves a pre-allocated CPU output unfilled, so it returns a new one
  const fetches = job.runtime === 'node' ? { Y: new ort.Tensor('float32', new Float32Array(d.rows * d.cols), [d.rows, d.cols]) } : undefined;
  const run = () => (fetches ? session.run(feeds, fetches) : session.run(feeds));
  const first = await run();
  verify(`onnxruntime-${job.runtime} ${job.threads} thread(s) ${c.id}`, first.Y.data as Float32Array, d.rows, d.cols, d.k, d.want);
  if (!fetches) first.Y.dispose?.();
  const reps = job.quick ? c.reps.quick : c.reps.full;
  const times: number[] = [];
  for (let i = 0; i <= reps; i++) {
    const t = performance.now();
    const out = await run();
    const ms = performance.now() - t;
    if (!fetches) out.Y.dispose?.();
    if (i > 0) times.push(ms); // the first is a warm-up
  }
  await session.release();
  return { id: c.id, ms: median(times), reps };
}

const cases = [];
for (const c of ORT_CASES.filter((x) => !job.only || job.only.includes(x.id))) cases.push(await runCase(c));
const version = job.runtime === 'node' ? ort.env.versions?.node : ort.env.versions?.web;
process.stdout.write(`${JSON.stringify({ version, cases })}\n`);
process.exit(0); // onnxruntime-web's worker threads keep the event loop alive
