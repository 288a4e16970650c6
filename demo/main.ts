/** The demo page: controls, live loss chart and figures; the training itself runs in worker.ts. */
import type { WorkerMessage } from './worker.js';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const status = $('status');
const start = $<HTMLButtonElement>('start');
const canvas = $<HTMLCanvasElement>('chart');
/** [step, loss] as progress arrives. */
const points: [number, number][] = [];
let total = 1;

function setStatus(state: string, text: string): void {
  status.dataset.state = state;
  status.textContent = text;
}
const set = (id: string, text: string) => {
  $(id).textContent = text;
};
const pct = (x: number) => `${(100 * x).toFixed(1)} %`;
const ms = (x: number) => `${x.toFixed(2)} ms`;

/** Loss per step on a log scale, redrawn as progress arrives. */
function draw(): void {
  const ctx = canvas.getContext('2d')!;
  const w = canvas.width, h = canvas.height, pad = 36;
  ctx.clearRect(0, 0, w, h);
  ctx.font = '12px system-ui';
  ctx.fillStyle = '#4a5263';
  ctx.fillText('loss (log scale) per step', pad, 18);
  if (points.length < 2) return;
  const losses = points.map((p) => p[1]);
  const lo = Math.log10(Math.max(1e-4, Math.min(...losses)));
  const hi = Math.log10(Math.max(...losses));
  const y = (v: number) => h - pad - ((Math.log10(Math.max(v, 1e-4)) - lo) / Math.max(hi - lo, 1e-6)) * (h - 2 * pad);
  const x = (step: number) => pad + ((step - 1) / Math.max(total - 1, 1)) * (w - 2 * pad);
  ctx.strokeStyle = '#d5d9e2';
  ctx.beginPath();
  ctx.moveTo(pad, pad / 2);
  ctx.lineTo(pad, h - pad);
  ctx.lineTo(w - pad / 2, h - pad);
  ctx.stroke();
  ctx.fillText(Math.max(...losses).toFixed(3), 2, y(Math.max(...losses)) + 4);
  ctx.fillText(Math.min(...losses).toFixed(3), 2, y(Math.min(...losses)) + 4);
  ctx.strokeStyle = '#2f6fde';
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach(([step, v], i) => (i ? ctx.lineTo(x(step), y(v)) : ctx.moveTo(x(step), y(v))));
  ctx.stroke();
}

const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
worker.onmessage = (e: MessageEvent<WorkerMessage>) => {
  const m = e.data;
  switch (m.type) {
    case 'ready':
      set('build', `${m.build}${m.build === 'relaxed' ? ' (relaxed FMA)' : ' (SIMD128)'}`);
      start.disabled = false;
      setStatus('ready', `Ready (${m.build} build, ${m.threads} thread${m.threads > 1 ? 's' : ''}${m.crossOriginIsolated ? ', cross-origin isolated' : ''}). Pick r, alpha and a learning rate, then fine-tune.`);
      break;
    case 'pretrained':
      set('accA', pct(m.accA));
      set('accBefore', pct(m.accB));
      setStatus('training', 'Fine-tuning the adapters on task B…');
      break;
    case 'params':
      set('trainable', m.trainable.toLocaleString('en-US'));
      set('frozen', m.frozen.toLocaleString('en-US'));
      break;
    case 'progress':
      total = m.total;
      points.push([m.step, m.loss]);
      set('step', `${m.step} / ${m.total}`);
      set('loss', m.loss.toFixed(4));
      set('sps', Math.round(m.sps).toLocaleString('en-US'));
      draw();
      break;
    case 'done':
      set('accAfter', pct(m.accAfter));
      set('onTheFly', ms(m.onTheFlyMs));
      set('merged', ms(m.mergedMs));
      set('mergeMs', ms(m.mergeMs));
      set('agree', `max |Δ| ${m.maxDiff.toExponential(1)}`);
      set('frozenW', m.frozenUnchanged ? 'unchanged (checksums)' : 'CHANGED');
      Object.assign(status.dataset, {
        firstLoss: String(points[0]?.[1]), lastLoss: String(points.at(-1)?.[1]), accBefore: String(m.accBefore), accAfter: String(m.accAfter),
        lossBefore: String(m.lossBefore), lossAfter: String(m.lossAfter), maxDiff: String(m.maxDiff), frozenUnchanged: String(m.frozenUnchanged),
        onTheFlyMs: String(m.onTheFlyMs), mergedMs: String(m.mergedMs),
      });
      start.disabled = false;
      setStatus('done', `Done: task B accuracy ${pct(m.accBefore)} → ${pct(m.accAfter)}; cross-entropy ${m.lossBefore.toFixed(3)} → ${m.lossAfter.toFixed(3)}.`);
      break;
    case 'error':
      start.disabled = false;
      setStatus('error', `Error: ${m.message}`);
      break;
  }
};

$<HTMLFormElement>('controls').addEventListener('submit', (e) => {
  e.preventDefault();
  points.length = 0;
  draw();
  start.disabled = true;
  setStatus('training', 'Pretraining the base model on task A…');
  const num = (id: string) => Number($<HTMLInputElement>(id).value);
  worker.postMessage({ type: 'start', r: num('r'), alpha: num('alpha'), lr: num('lr'), epochs: num('epochs') });
});
draw();
