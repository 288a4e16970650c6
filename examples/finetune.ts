/**
 * Part 2 of npm start: train only A and B, with W frozen.
 *
 * Task A: classify 32-d points into 4 classes by which of 4 hidden directions
 * they project onto most. A 32→256→256→4 MLP is "pretrained" on it with full
 * dense layers. Task B turns the hidden directions (a shifted task). LoRA
 * adapters (r = 8) on all three layers learn task B while every pretrained
 * weight stays byte-for-byte frozen. All data is generated here, seeded.
 */
import cliProgress from 'cli-progress';
import { type LoRAWasm, type Linear, seededRandom } from '../src/index.js';

const D = 32;
const HIDDEN = 256;
const CLASSES = 4;
const N = 4096;

function makeTask(seed: number, dirs: Float32Array) {
  const next = seededRandom(seed);
  const x = new Float32Array(N * D);
  for (let i = 0; i < x.length; i++) x[i] = 2 * next() - 1;
  const y = new Int32Array(N);
  for (let i = 0; i < N; i++) {
    let best = -Infinity;
    for (let c = 0; c < CLASSES; c++) {
      let s = 0;
      for (let j = 0; j < D; j++) s += x[i * D + j]! * dirs[c * D + j]!;
      if (s > best) {
        best = s;
        y[i] = c;
      }
    }
  }
  return { x: { rows: N, cols: D, data: x }, y };
}

/** FNV-1a over the bytes of f32 data: a checksum to show W never changes. */
function checksum(data: Float32Array): string {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193);
  return (h >>> 0).toString(16).padStart(8, '0');
}

export function finetuneDemo(lw: LoRAWasm): boolean {
  const next = seededRandom(7);
  const dirsA = Float32Array.from({ length: CLASSES * D }, () => 2 * next() - 1);
  // Task B: each hidden direction turned part of the way towards a new random one.
  const dirsB = dirsA.map((v) => 0.55 * v + 0.9 * (2 * next() - 1));
  const taskA = makeTask(1, dirsA);
  const taskB = makeTask(2, dirsB);

  const accuracy = (model: { predict(x: typeof taskA.x): { data: Float32Array; dispose(): void } }, t: typeof taskA) => {
    const p = model.predict(t.x);
    const { loss, correct } = lw.softmaxCrossEntropy({ rows: N, cols: CLASSES, data: p.data }, t.y);
    p.dispose();
    return { loss, acc: correct / N };
  };

  console.log(`\nPart 2: LoRA fine-tuning with W frozen (a ${D}→${HIDDEN}→${HIDDEN}→${CLASSES} MLP, ${N} samples per task)`);
  const t0 = performance.now();
  const dense = [
    lw.dense({ inFeatures: D, outFeatures: HIDDEN, seed: 1 }),
    lw.dense({ inFeatures: HIDDEN, outFeatures: HIDDEN, seed: 2 }),
    lw.dense({ inFeatures: HIDDEN, outFeatures: CLASSES, seed: 3 }),
  ];
  const base = lw.sequential([dense[0]!, lw.relu(), dense[1]!, lw.relu(), dense[2]!]);
  const pretrainOpt = lw.adamw(base.parameters(), { lr: 2e-3, weightDecay: 0 });
  base.fit(taskA.x, taskA.y, { loss: 'cross-entropy', optimizer: pretrainOpt, epochs: 8, batchSize: 64, seed: 1 });
  const onA = accuracy(base, taskA);
  const onBBase = accuracy(base, taskB);
  console.log(`  pretrained on task A in ${((performance.now() - t0) / 1000).toFixed(1)} s: accuracy ${(100 * onA.acc).toFixed(1)} % on A, ${(100 * onBBase.acc).toFixed(1)} % on the shifted task B`);

  const frozenSums = dense.map((l: Linear) => checksum(l.W.data));
  const tuned = lw.sequential([
    lw.linear({ W: dense[0]!.W, bias: dense[0]!.bias, r: 8, alpha: 16, seed: 11 }),
    lw.relu(),
    lw.linear({ W: dense[1]!.W, bias: dense[1]!.bias, r: 8, alpha: 16, seed: 12 }),
    lw.relu(),
    lw.linear({ W: dense[2]!.W, bias: dense[2]!.bias, r: 4, alpha: 8, seed: 13 }),
  ]);
  const trainable = tuned.trainableParameters;
  const total = trainable + tuned.frozenParameters;
  console.log(`  adapters: ${trainable.toLocaleString('en-US')} trainable of ${total.toLocaleString('en-US')} parameters (${((100 * trainable) / total).toFixed(2)} %)`);

  const epochs = 12;
  const bar = new cliProgress.SingleBar(
    { format: '  LoRA fine-tune |{bar}| {value}/{total} steps | loss {loss} | {sps} samples/s', hideCursor: true, noTTYOutput: false },
    cliProgress.Presets.shades_classic,
  );
  const opt = lw.adamw(tuned.parameters(), { lr: 5e-3, weightDecay: 0 });
  const t1 = performance.now();
  const res = tuned.fit(taskB.x, taskB.y, {
    loss: 'cross-entropy', optimizer: opt, epochs, batchSize: 64, seed: 2,
    onProgress: (p) => {
      if (p.step === 1) bar.start(p.totalSteps, 0, { loss: p.loss.toFixed(4), sps: '-' });
      bar.update(p.step, { loss: p.loss.toFixed(4), sps: Math.round(p.samplesPerSecond).toLocaleString('en-US') });
    },
  });
  bar.stop();
  const onB = accuracy(tuned, taskB);
  const fell = onBBase.loss / onB.loss;
  console.log(`  ${res.steps} steps (${epochs} epochs) in ${((performance.now() - t1) / 1000).toFixed(1)} s; epoch-mean loss ${res.epochLoss[0]!.toFixed(4)} → ${res.epochLoss.at(-1)!.toFixed(4)}`);
  console.log(`  cross-entropy on all of task B: ${onBBase.loss.toFixed(4)} before → ${onB.loss.toFixed(4)} after (${fell.toFixed(0)}× lower)`);
  console.log(`  accuracy on task B: ${(100 * onBBase.acc).toFixed(1)} % before → ${(100 * onB.acc).toFixed(1)} % after`);

  const onTheFly = tuned.predict(taskB.x);
  tuned.merge();
  const merged = tuned.predict(taskB.x);
  let maxDiff = 0;
  for (let i = 0; i < merged.length; i++) maxDiff = Math.max(maxDiff, Math.abs(merged.data[i]! - onTheFly.data[i]!));
  const agree = maxDiff < 1e-4;
  console.log(`  merged vs on-the-fly logits: max |Δ| = ${maxDiff.toExponential(2)} (${agree ? 'they agree' : 'MISMATCH'})`);
  const after = dense.map((l) => checksum(l.W.data));
  const unchanged = after.every((s, i) => s === frozenSums[i]);
  console.log(`  frozen W checksums (FNV-1a) ${frozenSums.join(' ')} → ${after.join(' ')}: ${unchanged ? 'unchanged' : 'CHANGED'}`);
  for (const m of [onTheFly, merged, tuned, opt, pretrainOpt, base]) m.dispose();
  return agree && unchanged && fell >= 10;
}
