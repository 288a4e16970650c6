/**
 * npm start: the main demo, on embedded, seeded data (no downloads).
 *
 * A "pretrained" 4096×4096 layer W gets a rank-8 LoRA adapter (A: [4096, 8],
 * B: [8, 4096], seed naming). We merge it with the fused kernel, check that the
 * merged layer answers exactly like the on-the-fly LoRA path, and unmerge.
 */
import { init, loraScale, seededRandom } from '../src/index.js';
import { finetuneDemo } from './finetune.js';
import { gemm64, loraReference } from '../test/reference.js';
import { medianMs } from './tasks.js';

const D_OUT = 4096;
const D_IN = 4096;
const R = 8;
const ALPHA = 16;
const BATCH = 8;

/** Uniform with standard deviation `std`. */
function fill(x: Float32Array, next: () => number, std: number): Float32Array {
  const amp = std * Math.sqrt(3);
  for (let i = 0; i < x.length; i++) x[i] = (2 * next() - 1) * amp;
  return x;
}
const ms = (t: number) => `${t.toFixed(1)} ms`;
const fmt = (n: number) => n.toLocaleString('en-US');

/** y = x·Mᵀ (+ s·(x·Bᵀ)·Aᵀ) in float64: the independent reference the tests use (test/reference.ts). */
const forward = (x: Float32Array, m: Float32Array, lora?: { a: Float32Array; b: Float32Array; s: number }): Float64Array =>
  lora
    ? loraReference(x, m, lora.a, lora.b, undefined, BATCH, D_IN, D_OUT, R, lora.s).value
    : gemm64({ data: x, rows: BATCH, cols: D_IN }, { data: m, rows: D_OUT, cols: D_IN, trans: true }).value;

const lw = await init();
const next = seededRandom(42);
const s = loraScale({ alpha: ALPHA, r: R });

console.log('lora-wasm demo\n\nPart 1: merge a rank-8 LoRA adapter into a 4096×4096 layer\n');
console.log(`wasm build     ${lw.build}${lw.build === 'relaxed' ? ' (f32x4.relaxed_madd)' : ' (f32x4 mul + add; relaxed SIMD is not enabled in this engine)'}`);

using W = lw.matrix(D_OUT, D_IN, fill(new Float32Array(D_OUT * D_IN), next, 1 / Math.sqrt(D_IN)));
using A = lw.matrix(D_OUT, R, fill(new Float32Array(D_OUT * R), next, 0.02)); // PEFT lora_B.weight
using B = lw.matrix(R, D_IN, fill(new Float32Array(R * D_IN), next, 1 / Math.sqrt(D_IN))); // PEFT lora_A.weight
const w0 = W.toArray();
const x = fill(new Float32Array(BATCH * D_IN), next, 1);

const frozen = D_OUT * D_IN;
const trainable = D_OUT * R + R * D_IN;
console.log(`layer          W [${D_OUT}, ${D_IN}] frozen, A [${D_OUT}, ${R}] and B [${R}, ${D_IN}] trainable, alpha ${ALPHA}, s = alpha/r = ${s}`);
console.log(`parameters     ${fmt(trainable)} trainable vs ${fmt(frozen)} frozen (${((100 * trainable) / frozen).toFixed(2)} %)\n`);

// Timings: merge and unmerge run the same kernel at the same cost, so alternating
// them keeps W where it started (within an ulp) however often we time it.
using scratch = lw.matrix(D_OUT, D_IN);
const flops = 2 * R * D_OUT * D_IN;
const timeMerge = (safe: boolean) => {
  let sign = 1;
  return medianMs(() => {
    if (sign > 0) lw.merge(W, A, B, { scale: s, safe });
    else lw.unmerge(W, A, B, { scale: s, safe });
    sign = -sign;
  }, 10);
};
const tMerge = timeMerge(false);
const tSafe = timeMerge(true);
W.data.set(w0); // exactly the pretrained W again
const copy = new Float32Array(D_OUT * D_IN);
const tCopy = medianMs(() => copy.set(W.data), 9);
const tPlain = medianMs(() => {
  const a = A.data, b = B.data, w = W.data;
  for (let i = 0; i < D_OUT; i++)
    for (let j = 0; j < D_IN; j++) {
      let acc = 0;
      for (let k = 0; k < R; k++) acc += a[i * R + k]! * b[k * D_IN + j]!;
      copy[i * D_IN + j] = w[i * D_IN + j]! + s * acc;
    }
}, 1);
console.log('merge W += s·A·B in place (fused, one pass over W, median of 10)');
console.log(`  lora-wasm      ${ms(tMerge).padStart(9)}   ${(flops / tMerge / 1e6).toFixed(1)} GFLOP/s`);
console.log(`  safe: true     ${ms(tSafe).padStart(9)}   +${(100 * (tSafe / tMerge - 1)).toFixed(0)} % for the all-or-nothing guarantee`);
console.log(`  copy of W      ${ms(tCopy).padStart(9)}   Float32Array.set, the memory-bandwidth floor (merge = ${(tMerge / tCopy).toFixed(2)}× a copy)`);
console.log(`  plain JS loops ${ms(tPlain).padStart(9)}   ${(tPlain / tMerge).toFixed(0)}× slower\n`);

// On-the-fly LoRA output from the unmerged layer, then the merged layer's output.
const yFly = forward(x, w0, { a: A.data, b: B.data, s });
lw.merge(W, A, B, { scale: s, safe: true });
const merged = W.toArray();
const yMerged = forward(x, merged);
let maxDiff = 0;
let maxY = 0;
for (let i = 0; i < yFly.length; i++) {
  maxDiff = Math.max(maxDiff, Math.abs(yFly[i]! - yMerged[i]!));
  maxY = Math.max(maxY, Math.abs(yFly[i]!));
}
const agree = maxDiff <= 1e-5 * maxY;
console.log(`check on a random batch of ${BATCH}: on-the-fly y = x·Wᵀ + s·(x·Bᵀ)·Aᵀ vs merged y = x·(W + s·A·B)ᵀ`);
console.log(`  max |Δy| = ${maxDiff.toExponential(2)} (max |y| = ${maxY.toFixed(2)}): ${agree ? 'they agree' : 'MISMATCH'}\n`);

lw.unmerge(W, A, B, { scale: s });
const back = W.data;
let drift = 0;
let changed = 0;
for (let i = 0; i < back.length; i++) {
  const d = Math.abs(back[i]! - w0[i]!);
  drift = Math.max(drift, d);
  if (d !== 0) changed++;
}
console.log('unmerge W -= s·A·B');
console.log(`  max drift from the original W = ${drift.toExponential(2)}; ${fmt(back.length - changed)} of ${fmt(back.length)} weights are bit-exact again`);
console.log('  (each weight is within one rounding of W + s·A·B and one of W: about 1 ulp)');
// Hot-swapping adapters: keep W0 frozen and merge each adapter into a serving copy.
using W0 = lw.matrix(D_OUT, D_IN, w0);
lw.mergeInto(scratch, W0, A, B, { scale: -s }); // serve some other adapter in between
lw.mergeInto(scratch, W0, A, B, { scale: s });
const served = scratch.data;
let identical = served.length === merged.length;
for (let i = 0; identical && i < served.length; i++) identical = Object.is(served[i], merged[i]);
console.log(`  hot-swap instead: mergeInto(out, W0, A, B) from a frozen W0 is bit-identical to the merge: ${identical ? 'yes' : 'NO'}\n`);
W.dispose();
scratch.dispose();
W0.dispose();
const tuned = finetuneDemo(lw);
if (lw.build !== 'relaxed') console.log('\ntip: Node 20 runs the faster relaxed-SIMD build with node --experimental-wasm-relaxed-simd');
if (!agree || !identical || !tuned) process.exit(1);
