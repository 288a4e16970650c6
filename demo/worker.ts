/**
 * The demo's training loop, off the main thread: pretrain a small MLP on task A (once), then
 * LoRA-fine-tune it on the shifted task B with every pretrained weight frozen, posting progress.
 */
import { type LoRAWasm, type Linear, type Sequential, init } from '../src/index.js';
import { checksum, makeTasks, medianMs, pretrainMLP } from '../examples/tasks.js';

export interface StartMessage {
  type: 'start';
  r: number;
  alpha: number;
  lr: number;
  epochs: number;
}

const D = 32;
const HIDDEN = 128;
const CLASSES = 4;
const N = 2048;
/** Everything the worker tells the page. */
export type WorkerMessage =
  | { type: 'ready'; build: string; crossOriginIsolated: boolean; threads: number }
  | { type: 'pretrained'; accA: number; accB: number; lossB: number }
  | { type: 'params'; trainable: number; frozen: number }
  | { type: 'progress'; step: number; total: number; loss: number; sps: number }
  | {
      type: 'done'; accBefore: number; accAfter: number; lossBefore: number; lossAfter: number;
      onTheFlyMs: number; mergedMs: number; mergeMs: number; maxDiff: number; frozenUnchanged: boolean;
    }
  | { type: 'error'; message: string };
const post = (m: WorkerMessage) => (self as unknown as Worker).postMessage(m);

let lw: LoRAWasm;
let base: { model: Sequential; dense: Linear[] } | undefined;
const tasks = makeTasks(N, D, CLASSES);

function accuracy(model: Sequential, task: typeof tasks.a): { loss: number; acc: number } {
  const p = model.predict(task.x);
  const { loss, correct } = lw.softmaxCrossEntropy(p, task.y);
  p.dispose();
  return { loss, acc: correct / N };
}

function pretrained(): { model: Sequential; dense: Linear[] } {
  base ??= pretrainMLP(lw, tasks.a, D, HIDDEN, CLASSES, 3e-3);
  return base;
}

function train(m: StartMessage): void {
  const { model: baseModel, dense } = pretrained();
  const onA = accuracy(baseModel, tasks.a);
  const before = accuracy(baseModel, tasks.b);
  post({ type: 'pretrained', accA: onA.acc, accB: before.acc, lossB: before.loss });
  const sums = dense.map((l) => checksum(l.W.data));
  const tuned = lw.sequential([
    lw.linear({ W: dense[0]!.W, bias: dense[0]!.bias, r: m.r, alpha: m.alpha, seed: 11 }),
    lw.relu(),
    lw.linear({ W: dense[1]!.W, bias: dense[1]!.bias, r: m.r, alpha: m.alpha, seed: 12 }),
    lw.relu(),
    lw.linear({ W: dense[2]!.W, bias: dense[2]!.bias, r: Math.min(m.r, CLASSES), alpha: m.alpha, seed: 13 }),
  ]);
  post({ type: 'params', trainable: tuned.trainableParameters, frozen: tuned.frozenParameters });
  const opt = lw.adamw(tuned.parameters(), { lr: m.lr, weightDecay: 0 });
  let last = 0;
  tuned.fit(tasks.b.x, tasks.b.y, {
    loss: 'cross-entropy', optimizer: opt, epochs: m.epochs, batchSize: 64, seed: 2,
    onProgress: (p) => {
      const now = performance.now();
      if (p.step === 1 || p.step === p.totalSteps || now - last > 15) {
        last = now;
        post({ type: 'progress', step: p.step, total: p.totalSteps, loss: p.loss, sps: p.samplesPerSecond });
      }
    },
  });
  const after = accuracy(tuned, tasks.b);
  // On-the-fly vs merged: forward time on the whole task, and the cost of merging itself.
  const onTheFlyMs = medianMs(() => tuned.forward(tasks.b.x), 5);
  const fly = tuned.predict(tasks.b.x);
  const mergeMs = medianMs(() => tuned.unmerge().merge(), 5);
  const mergedMs = medianMs(() => tuned.forward(tasks.b.x), 5);
  const merged = tuned.predict(tasks.b.x);
  let maxDiff = 0;
  for (let i = 0; i < merged.length; i++) maxDiff = Math.max(maxDiff, Math.abs(merged.data[i]! - fly.data[i]!));
  const frozenUnchanged = dense.every((l, i) => checksum(l.W.data) === sums[i]);
  post({ type: 'done', accBefore: before.acc, accAfter: after.acc, lossBefore: before.loss, lossAfter: after.loss, onTheFlyMs, mergedMs, mergeMs, maxDiff, frozenUnchanged });
  for (const x of [fly, merged, tuned, opt]) x.dispose();
}

self.onmessage = (e: MessageEvent<StartMessage>) => {
  try {
    train(e.data);
  } catch (err) {
    post({ type: 'error', message: String((err as Error).message ?? err) });
  }
};

init({ threads: 'auto' }) // in this worker the pool may block (Atomics.wait); the page's own thread never waits
  .then((instance) => {
    lw = instance;
    post({ type: 'ready', build: lw.build, crossOriginIsolated: globalThis.crossOriginIsolated === true, threads: lw.threads });
  })
  .catch((err) => post({ type: 'error', message: String(err.message ?? err) }));
