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
import type { LoRAWasm, Linear } from '../src/index.js';
import { type Task, checksum, makeTasks, pretrainMLP } from './tasks.js';

const D = 32;
const HIDDEN = 256;
const CLASSES = 4;
const N = 4096;

export function finetuneDemo(lw: LoRAWasm): boolean {
  const { a: taskA, b: taskB } = makeTasks(N, D, CLASSES);

  const accuracy = (model: { predict(x: Task['x']): { data: Float32Array; dispose(): void } }, t: Task) => {
    const p = model.predict(t.x);
    const { loss, correct } = lw.softmaxCrossEntropy({ rows: N, cols: CLASSES, data: p.data }, t.y);
    p.dispose();
    return { loss, acc: correct / N };
  };

  console.log(`\nPart 2: LoRA fine-tuning with W frozen (a ${D}→${HIDDEN}→${HIDDEN}→${CLASSES} MLP, ${N} samples per task)`);
  const t0 = performance.now();
  const { model: base, dense } = pretrainMLP(lw, taskA, D, HIDDEN, CLASSES, 2e-3);
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
  for (const m of [onTheFly, merged, tuned, opt, base]) m.dispose();
  return agree && unchanged && fell >= 10;
}
