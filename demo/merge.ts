/** The merge page: pick an adapter and a base model, see the modules, merge in a worker, download. */
import type { MergePageMessage, MergePageRequest } from './merge-worker.js';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const status = $('status');
const setStatus = (state: string, text: string) => {
  status.dataset.state = state;
  status.textContent = text;
};
const fmt = (n: number) => (n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`);
let adapterFiles: File[] = [];
let baseFile: File | undefined;
// ?simd=baseline|relaxed pins the wasm flavour (the Chromium check compares with a merge made in Node)
const worker = new Worker(new URL(`./merge-worker.js${location.search}`, import.meta.url), { type: 'module' });
const send = (m: MergePageRequest) => worker.postMessage(m);

function refresh(): void {
  $<HTMLButtonElement>('merge').disabled = !(adapterFiles.length && baseFile && status.dataset.state !== 'working');
}

function takeAdapter(files: File[]): void {
  adapterFiles = files;
  $('adapter-name').textContent = files.map((f) => f.name).join(', ');
  setStatus('working', 'reading the adapter…');
  send({ type: 'inspect', files });
}

for (const id of ['adapter', 'adapter-folder']) {
  $<HTMLInputElement>(id).addEventListener('change', (e) => takeAdapter(Array.from((e.target as HTMLInputElement).files ?? [])));
}
$<HTMLInputElement>('base').addEventListener('change', (e) => {
  baseFile = (e.target as HTMLInputElement).files?.[0];
  $('base-name').textContent = baseFile ? `${baseFile.name} (${fmt(baseFile.size)})` : '';
  refresh();
});
for (const [zone, take] of [['adapter-drop', (fs: File[]) => takeAdapter(fs)], ['base-drop', (fs: File[]) => {
  baseFile = fs[0];
  $('base-name').textContent = baseFile ? `${baseFile.name} (${fmt(baseFile.size)})` : '';
  refresh();
}]] as const) {
  const el = $(zone);
  el.addEventListener('dragover', (e) => e.preventDefault());
  el.addEventListener('drop', (e) => {
    e.preventDefault();
    take(Array.from(e.dataTransfer?.files ?? []));
  });
}
$('merge').addEventListener('click', () => {
  if (!baseFile) return;
  setStatus('working', 'merging…');
  refresh();
  send({ type: 'merge', files: adapterFiles, base: baseFile, dtype: $<HTMLSelectElement>('dtype').value as 'keep' | 'q8_0' });
});

worker.onmessage = (e: MessageEvent<MergePageMessage>) => {
  const m = e.data;
  if (m.type === 'ready') {
    $('build').textContent = `${m.build}, ${m.threads} thread${m.threads > 1 ? 's' : ''}`;
    $('status').dataset.threads = String(m.threads);
    setStatus('ready', 'pick an adapter and a base model');
  } else if (m.type === 'adapter') {
    $('summary').textContent = `${m.format === 'peft' ? 'PEFT' : m.format === 'gguf' ? 'llama.cpp' : 'kohya'} adapter${m.base ? ` for ${m.base}` : ''}: ${m.modules.length} modules, ${m.params.toLocaleString('en-US')} parameters, ${m.replacements} tensors to replace`;
    const rows = m.modules.map((x) => `<tr><td>${x.name}</td><td>${x.kind}</td><td>${x.r}</td><td>${x.alpha}</td><td>${+x.scale.toPrecision(6)}</td><td>${x.shape}</td><td>${x.dtype}</td></tr>`);
    $('modules').innerHTML = `<tr><th>module</th><th>kind</th><th>r</th><th>alpha</th><th>scale</th><th>ΔW</th><th>dtype</th></tr>${rows.join('')}`;
    setStatus('ready', 'adapter read; pick a base model and merge');
    refresh();
  } else if (m.type === 'progress') {
    const p = $<HTMLProgressElement>('progress');
    p.max = m.totalBytes;
    p.value = m.bytes;
    status.textContent = `merging: ${m.tensors} of ${m.totalTensors} tensors, ${fmt(m.bytes)} of ${fmt(m.totalBytes)}`;
  } else if (m.type === 'done') {
    const a = $<HTMLAnchorElement>('download');
    a.href = URL.createObjectURL(m.blob);
    const name = `merged.${m.gguf ? 'gguf' : 'safetensors'}`;
    a.download = name;
    a.hidden = false;
    a.textContent = `download ${name} (${fmt(m.blob.size)})`;
    status.dataset.merged = String(m.merged);
    status.dataset.replaced = String(m.replaced);
    setStatus('done', `merged ${m.merged} modules and replaced ${m.replaced} tensors in ${m.seconds.toFixed(2)} s (wasm memory peaked at ${fmt(m.peakWasmBytes)})`);
    refresh();
  } else {
    setStatus('error', m.message);
    refresh();
  }
};
