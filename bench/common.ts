/**
 * What every bench file shares: the run context, seeded data, the benny
 * suite wrapper (saves JSON, CSV and chart.html under bench/results/) and the
 * result rows that bench/run.ts turns into tables and bench/RESULTS.md.
 */
import b from 'benny';
import { type LoRAWasm, seededRandom } from '../src/index.js';
import { bound } from '../test/reference.js';

export interface Row {
  /** Table the row belongs to, e.g. 'merge'. */
  group: string;
  /** Shape label, e.g. '4096×4096 r=8'. */
  shape: string;
  name: string;
  /** Who ran it: 'lora-wasm' or a peer ('copy' and 'cp' are floors: tables give time over theirs). */
  by: 'lora-wasm' | 'copy' | 'cp' | 'plain JS' | 'ml-matrix' | 'tfjs-wasm' | 'numpy' | 'onnxruntime-web' | 'onnxruntime-node';
  build?: 'baseline' | 'relaxed';
  /** Threads it ran on (threads tables only). */
  threads?: number;
  ms: number;
  /** Floating-point operations per call (0 when not meaningful). */
  flops: number;
  /** Bytes of W (or C) moved per call, for GB/s. */
  bytes: number;
  /** Peak resident memory of the process (CLI runs). */
  rssMiB?: number;
}

/** A paired, interleaved comparison of 1 thread against 2 (bench/threads.bench.ts pairedRatio). */
export interface Paired {
  group: string;
  shape: string;
  /** Median over pairs of time(1 thread) / time(2 threads). */
  ratio: number;
  msOne: number;
  msTwo: number;
  pairs: number;
}

export interface Ctx {
  quick: boolean;
  builds: LoRAWasm[];
  rows: Row[];
  notes: string[];
  paired?: Paired[];
}

export const random = (n: number, seed: number, amp = 1): Float32Array => {
  const next = seededRandom(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (2 * next() - 1) * amp;
  return x;
};

export type Speed = 'fast' | 'slow' | 'glacial';
const OPTIONS: Record<'quick' | 'full', Record<Speed, { minSamples: number; maxTime: number }>> = {
  quick: { fast: { minSamples: 4, maxTime: 0.5 }, slow: { minSamples: 2, maxTime: 0.5 }, glacial: { minSamples: 1, maxTime: 0.1 } },
  full: { fast: { minSamples: 8, maxTime: 1.5 }, slow: { minSamples: 3, maxTime: 2 }, glacial: { minSamples: 2, maxTime: 1 } },
};

export interface Case {
  name: string;
  by: Row['by'];
  build?: Row['build'];
  threads?: number;
  /** Runs once per sample; set up outside (benny's setup-returns-fn form). */
  fn: () => () => unknown;
  speed?: Speed;
}

/** Runs one benny suite and appends its medians to ctx.rows. */
export async function suite(ctx: Ctx, group: string, shape: string, flops: number, bytes: number, cases: Case[]): Promise<void> {
  const file = `${group}-${shape.split(' (')[0]}`.replace(/[×= ,]+/g, '-');
  const mode = ctx.quick ? 'quick' : 'full';
  await b.suite(
    `${group} ${shape}`,
    ...cases.map((c) => b.add(c.name, c.fn, OPTIONS[mode][c.speed ?? 'fast'])),
    b.cycle((r) => `  ${r.name.padEnd(50)} ${(r.details.median * 1e3).toFixed(2).padStart(9)} ms`),
    b.complete((summary) => {
      for (const r of summary.results) {
        const c = cases.find((x) => x.name === r.name)!;
        ctx.rows.push({ group, shape, name: r.name, by: c.by, build: c.build, threads: c.threads, ms: r.details.median * 1e3, flops, bytes });
      }
    }),
    b.save({ folder: 'bench/results', file, format: 'json', details: false }),
    b.save({ folder: 'bench/results', file, format: 'csv', details: false }),
    b.save({ folder: 'bench/results', file, format: 'chart.html', details: false }),
  );
}

/**
 * Checks sampled entries of `got` ([rows, cols]) against float64 `want(i, j)`
 * within the shared f32 bound (test/reference.ts, 6 roundings of slack); throws so that a wrong
 * fast kernel fails the bench instead of being timed.
 */
export function verify(
  name: string, got: ArrayLike<number>, rows: number, cols: number, k: number,
  want: (i: number, j: number) => { value: number; mag: number }, extra = 6,
): void {
  const sampleRows = [0, 1, 2, 3, 5, rows >> 1, rows - 1].filter((i) => i < rows);
  for (const i of sampleRows) {
    for (let j = 0; j < cols; j += j < 16 ? 1 : 13) {
      const { value, mag } = want(i, j);
      const g = got[i * cols + j]!;
      if (!(Math.abs(g - value) <= bound(k, extra, mag))) {
        throw new Error(`${name}: wrong result at [${i}, ${j}]: ${g} vs ${value}; refusing to time a wrong kernel`);
      }
    }
  }
}

/**
 * Times `cases` interleaved: `warm` warm-up calls each, then `rounds` rounds of one call per case. The
 * machine's load drifts between seconds, so compare cases by pairedRatio (the median over rounds of
 * the per-round ratio), not by a ratio of medians.
 */
export function interleaved(cases: readonly { run: () => unknown }[], rounds: number, warm = 2): {
  times: number[][]; median: (i: number) => number; pairedRatio: (i: number, j: number) => number;
} {
  for (const c of cases) for (let i = 0; i < warm; i++) c.run();
  const times = cases.map(() => [] as number[]);
  for (let r = 0; r < rounds; r++) {
    for (const [i, c] of cases.entries()) {
      const s = performance.now();
      c.run();
      times[i]!.push(performance.now() - s);
    }
  }
  const mid = (x: number[]) => [...x].sort((p, q) => p - q)[x.length >> 1]!;
  return { times, median: (i) => mid(times[i]!), pairedRatio: (i, j) => mid(times[i]!.map((t, r) => t / times[j]![r]!)) };
}
