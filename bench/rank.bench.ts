/**
 * Merge / delta benchmarks (benny), with peers in the same run:
 *   - the memory floor: one Float32Array.prototype.set copy of W (reads and writes W once, like a merge)
 *   - plain JS loops, written the way the seed article's W + A·B reads
 *   - both wasm flavours (relaxed needs node --experimental-wasm-relaxed-simd on Node 20)
 *
 *   npm run bench            full run
 *   npm run bench -- --quick shorter samples, fewer shapes
 *
 * Each case checks its output against a float64 reference before it is timed.
 * Results: terminal table, plus benny JSON/CSV/chart under bench/results/.
 */
import b from 'benny';
import { type LoRAWasm, type Matrix, detectFeatures, init, seededRandom } from '../src/index.js';

const quick = process.argv.includes('--quick');
const caseOptions = quick ? { minSamples: 5, maxTime: 0.6 } : { minSamples: 10, maxTime: 2 };

interface Shape {
  label: string;
  dOut: number;
  dIn: number;
  r: number;
}
const SHAPES: Shape[] = quick
  ? [
      { label: '4096×4096 r=8', dOut: 4096, dIn: 4096, r: 8 },
      { label: '4096×4096 r=64', dOut: 4096, dIn: 4096, r: 64 },
    ]
  : [
      { label: '768×768 r=8 (BERT-base attention)', dOut: 768, dIn: 768, r: 8 },
      { label: '4096×4096 r=8 (7B attention)', dOut: 4096, dIn: 4096, r: 8 },
      { label: '4096×4096 r=16', dOut: 4096, dIn: 4096, r: 16 },
      { label: '4096×4096 r=64', dOut: 4096, dIn: 4096, r: 64 },
      { label: '4096×11008 r=16 (7B MLP)', dOut: 4096, dIn: 11008, r: 16 },
    ];

const random = (n: number, next: () => number, amp: number) => {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (2 * next() - 1) * amp;
  return x;
};

/** Throws unless rows `rowsToCheck` of got == w0 + s·A·B within the f32 summation bound. */
function verify(name: string, got: Float32Array, w0: Float32Array | undefined, a: Float32Array, bm: Float32Array, sh: Shape, s: number): void {
  const { dIn, r } = sh;
  for (const i of [0, 1, 2, 3, 5, sh.dOut >> 1, sh.dOut - 1]) {
    if (i >= sh.dOut) continue;
    for (let j = 0; j < dIn; j++) {
      let acc = 0;
      let mag = 0;
      for (let k = 0; k < r; k++) {
        const p = a[i * r + k]! * bm[k * dIn + j]!;
        acc += p;
        mag += Math.abs(p);
      }
      const w = w0 ? w0[i * dIn + j]! : 0;
      const want = w + s * acc;
      const tol = (r + 4) * 2 ** -24 * (Math.abs(w) + Math.abs(s) * mag);
      if (!(Math.abs(got[i * dIn + j]! - want) <= tol)) {
        throw new Error(`${name}: wrong result at [${i}, ${j}]: ${got[i * dIn + j]} vs ${want}; refusing to time a wrong kernel`);
      }
    }
  }
}

interface Row {
  shape: string;
  name: string;
  ms: number;
  gflops: number;
  gbs: number;
}
const rows: Row[] = [];

async function benchShape(sh: Shape, builds: LoRAWasm[]): Promise<void> {
  const { dOut, dIn, r } = sh;
  const next = seededRandom(dOut * 31 + dIn * 7 + r);
  const s = 0.5;
  const w0 = random(dOut * dIn, next, 0.05);
  const a = random(dOut * r, next, 0.02);
  const bm = random(r * dIn, next, 0.05);
  const flops = 2 * r * dOut * dIn;
  const wBytes = 2 * 4 * dOut * dIn; // W read once and written once
  const held: Matrix[] = [];

  const cases = [];
  const copyDst = new Float32Array(dOut * dIn);
  cases.push(b.add('copy of W (Float32Array.set)', () => () => copyDst.set(w0), caseOptions));

  for (const lw of builds) {
    const W = lw.matrix(dOut, dIn, w0), A = lw.matrix(dOut, r, a), B = lw.matrix(r, dIn, bm), out = lw.matrix(dOut, dIn);
    held.push(W, A, B, out);
    lw.mergeInto(out, W, A, B, { scale: s });
    verify(`mergeInto ${lw.build}`, out.data, w0, a, bm, sh, s);
    using D = lw.delta(A, B, { scale: s });
    verify(`delta ${lw.build}`, D.data, undefined, a, bm, sh, s);
    lw.merge(W, A, B, { scale: s, safe: true });
    verify(`merge ${lw.build}`, W.data, w0, a, bm, sh, s);
    lw.unmerge(W, A, B, { scale: s });
    // merge and unmerge cost the same; alternating keeps W bounded across thousands of calls.
    cases.push(b.add(`merge (${lw.build})`, () => {
      let sign = 1;
      return () => {
        if (sign > 0) lw.merge(W, A, B, { scale: s });
        else lw.unmerge(W, A, B, { scale: s });
        sign = -sign;
      };
    }, caseOptions));
    cases.push(b.add(`merge safe (${lw.build})`, () => {
      let sign = 1;
      return () => {
        if (sign > 0) lw.merge(W, A, B, { scale: s, safe: true });
        else lw.unmerge(W, A, B, { scale: s, safe: true });
        sign = -sign;
      };
    }, caseOptions));
    cases.push(b.add(`mergeInto (${lw.build})`, () => () => lw.mergeInto(out, W, A, B, { scale: s }), caseOptions));
  }
  if (dOut * dIn * r <= 4096 * 4096 * 16) {
    const plain = new Float32Array(w0);
    const run = (sign: number) => {
      for (let i = 0; i < dOut; i++) {
        for (let j = 0; j < dIn; j++) {
          let acc = 0;
          for (let k = 0; k < r; k++) acc += a[i * r + k]! * bm[k * dIn + j]!;
          plain[i * dIn + j] = plain[i * dIn + j]! + sign * s * acc;
        }
      }
    };
    run(1);
    verify('plain JS', plain, w0, a, bm, sh, s);
    run(-1);
    cases.push(b.add('plain JS loops', () => {
      let sign = 1;
      return () => {
        run(sign);
        sign = -sign;
      };
    }, { minSamples: quick ? 2 : 3, maxTime: quick ? 0.5 : 2 }));
  }

  const file = sh.label.split(' ')[0]!.replace('×', 'x') + `-r${r}`;
  await b.suite(
    `merge ${sh.label}`,
    ...cases,
    b.cycle((result) => `  ${result.name.padEnd(30)} ${(result.details.median * 1e3).toFixed(2).padStart(8)} ms`),
    b.complete((summary) => {
      for (const res of summary.results) {
        const ms = res.details.median * 1e3;
        const isCopy = res.name.startsWith('copy');
        rows.push({ shape: sh.label, name: res.name, ms, gflops: isCopy ? 0 : flops / (ms * 1e6), gbs: wBytes / (ms * 1e6) });
      }
    }),
    b.save({ folder: 'bench/results', file: `merge-${file}`, format: 'json', details: false }),
    b.save({ folder: 'bench/results', file: `merge-${file}`, format: 'csv', details: false }),
    b.save({ folder: 'bench/results', file: `merge-${file}`, format: 'chart.html', details: false }),
  );
  for (const m of held) m.dispose();
}

const builds: LoRAWasm[] = [await init({ simd: 'baseline' })];
if (detectFeatures().relaxed) builds.push(await init({ simd: 'relaxed' }));
else console.log('relaxed SIMD unavailable in this engine (Node 20: run with --experimental-wasm-relaxed-simd); baseline only');

for (const sh of SHAPES) await benchShape(sh, builds);

console.log('\nMedians, single thread. GB/s counts W read + written once. Ratios: time / copy of W, and plain JS time / this.');
console.log(`${'shape'.padEnd(36)} ${'case'.padEnd(28)} ${'ms'.padStart(8)} ${'GFLOP/s'.padStart(8)} ${'GB/s'.padStart(7)} ${'×copy'.padStart(7)} ${'vs JS'.padStart(7)}`);
for (const row of rows) {
  const copy = rows.find((x) => x.shape === row.shape && x.name.startsWith('copy'))!;
  const js = rows.find((x) => x.shape === row.shape && x.name === 'plain JS loops');
  console.log(
    `${row.shape.padEnd(36)} ${row.name.padEnd(28)} ${row.ms.toFixed(2).padStart(8)} ${(row.gflops ? row.gflops.toFixed(1) : '-').padStart(8)} ` +
      `${row.gbs.toFixed(1).padStart(7)} ${(row.ms / copy.ms).toFixed(2).padStart(7)} ${(js ? `${(js.ms / row.ms).toFixed(0)}×` : '-').padStart(7)}`,
  );
}
