/**
 * The embedded synthetic tasks of the demos (Node's npm start and the browser page): points in
 * [-1, 1]^D labelled by which of C hidden directions they project onto most. Task B turns the
 * directions part of the way towards new random ones: the "shifted task" LoRA adapts to.
 */
import { type LoRAWasm, type Linear, type Sequential, seededRandom } from '../src/index.js';

export interface Task {
  x: { rows: number; cols: number; data: Float32Array };
  y: Int32Array;
}

export function makeTask(seed: number, dirs: Float32Array, n: number, d: number, classes: number): Task {
  const next = seededRandom(seed);
  const x = new Float32Array(n * d);
  for (let i = 0; i < x.length; i++) x[i] = 2 * next() - 1;
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = -Infinity;
    for (let c = 0; c < classes; c++) {
      let s = 0;
      for (let j = 0; j < d; j++) s += x[i * d + j]! * dirs[c * d + j]!;
      if (s > best) {
        best = s;
        y[i] = c;
      }
    }
  }
  return { x: { rows: n, cols: d, data: x }, y };
}

/** Task A and the shifted task B, both seeded. */
export function makeTasks(n: number, d: number, classes: number): { a: Task; b: Task } {
  const next = seededRandom(7);
  const dirsA = Float32Array.from({ length: classes * d }, () => 2 * next() - 1);
  const dirsB = dirsA.map((v) => 0.55 * v + 0.9 * (2 * next() - 1));
  return { a: makeTask(1, dirsA, n, d, classes), b: makeTask(2, dirsB, n, d, classes) };
}

/** FNV-1a over the bytes of f32 data: a checksum to show W never changes. */
export function checksum(data: Float32Array): string {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193);
  return (h >>> 0).toString(16).padStart(8, '0');
}

/** Median wall time of `reps` calls, in ms. */
export function medianMs(fn: () => void, reps: number): number {
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    ts.push(performance.now() - t0);
  }
  return ts.sort((a, b) => a - b)[reps >> 1]!;
}

/**
 * The base model both demos start from: a d→hidden→hidden→classes ReLU MLP of dense layers,
 * "pretrained" on task A with AdamW. Returns the model and its dense layers (whose W LoRA freezes).
 */
export function pretrainMLP(
  lw: LoRAWasm, task: Task, d: number, hidden: number, classes: number, lr: number,
): { model: Sequential; dense: Linear[] } {
  const dense = [
    lw.dense({ dIn: d, dOut: hidden, seed: 1 }),
    lw.dense({ dIn: hidden, dOut: hidden, seed: 2 }),
    lw.dense({ dIn: hidden, dOut: classes, seed: 3 }),
  ];
  const model = lw.sequential([dense[0]!, lw.relu(), dense[1]!, lw.relu(), dense[2]!]);
  const opt = lw.adamw(model.parameters(), { lr, weightDecay: 0 });
  model.fit(task.x, task.y, { loss: 'cross-entropy', optimizer: opt, epochs: 8, batchSize: 64, seed: 1 });
  opt.dispose();
  return { model, dense };
}
