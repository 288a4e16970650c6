#!/usr/bin/env node
// Opens the demo page in headless Chromium, starts a fine-tune, and checks that the loss falls, the
// numbers are finite, merged and on-the-fly agree, the frozen weights are unchanged, and the page
// stayed responsive (a main-thread timer kept ticking while the worker trained). Saves a screenshot
// to build/demo-screenshot.png. Prints uvu-style Total/Passed lines.
import { fileURLToPath } from 'node:url';
import { launch } from './browser.mjs';
import { buildDemo, serveDemo } from './demo.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const results = [];
const check = (name, ok, detail) => {
  results.push(ok);
  console.log(`  ${ok ? 'ok  ' : 'FAIL'}  ${name}${detail ? `: ${detail}` : ''}`);
};

const server = await serveDemo(await buildDemo(), 0);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 760 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  await page.goto(`${server.url}/demo/`);
  await page.waitForSelector('#status[data-state="ready"]', { timeout: 30_000 });
  check('page loads and reports its wasm flavour', true, await page.textContent('#build'));
  await page.selectOption('#r', '8');
  // A main-thread timer: its worst gap shows whether the page stayed responsive during training.
  await page.evaluate(() => {
    const w = window;
    w.__gap = 0;
    let last = performance.now();
    w.__tick = setInterval(() => {
      const now = performance.now();
      w.__gap = Math.max(w.__gap, now - last);
      last = now;
    }, 20);
  });
  await page.click('#start');
  await page.waitForSelector('#status[data-state="done"], #status[data-state="error"]', { timeout: 180_000 });
  const d = await page.evaluate(() => ({ ...document.getElementById('status').dataset, gap: window.__gap, text: document.getElementById('status').textContent }));
  await page.screenshot({ path: `${root}build/demo-screenshot.png`, fullPage: true });
  check('training finished without error', d.state === 'done', d.text);
  const nums = ['firstLoss', 'lastLoss', 'accBefore', 'accAfter', 'lossBefore', 'lossAfter', 'maxDiff', 'onTheFlyMs', 'mergedMs'].map((k) => Number(d[k]));
  check('every figure is finite', nums.every(Number.isFinite), nums.map((v) => v.toPrecision(3)).join(' '));
  check('the loss falls', Number(d.lossAfter) < Number(d.lossBefore) / 5 && Number(d.lastLoss) < Number(d.firstLoss), `${d.lossBefore} → ${d.lossAfter}`);
  check('task B accuracy rises', Number(d.accAfter) > Number(d.accBefore) + 0.2, `${d.accBefore} → ${d.accAfter}`);
  check('merged and on-the-fly outputs agree', Number(d.maxDiff) < 1e-3, d.maxDiff);
  check('frozen weights unchanged', d.frozenUnchanged === 'true');
  check('the page stayed responsive (worst main-thread timer gap < 500 ms)', d.gap < 500, `${d.gap.toFixed(0)} ms`);
  check('no page errors', errors.length === 0, errors.join('; '));
  console.log(`screenshot: build/demo-screenshot.png`);

  // The merge page: a generated PEFT adapter and f16 base, picked through the file inputs, merged in the
  // worker, downloaded; the download must equal the same merge run in Node, byte for byte.
  const { init, encodeSafetensors, encodeGguf, GgufReader, SafetensorsReader, bytesSource } = await import('../dist/index.js');
  const lw = await init();
  const rnd = (n, seed) => { let a = seed; return Float32Array.from({ length: n }, () => { a = (a * 1103515245 + 12345) % 2 ** 31; return (a / 2 ** 31 - 0.5) * 0.2; }); };
  const f16 = (x, rows, cols) => { const m = lw.matrix(rows, cols, x, { dtype: 'f16' }); const b = new Uint8Array(m.toArray().buffer); m.dispose(); return b; };
  const adapterTensors = [];
  const baseTensors = [];
  for (const [i, mod] of ['enc.0.q', 'enc.0.v', 'enc.1.q'].entries()) {
    adapterTensors.push({ name: `base_model.model.${mod}.lora_A.weight`, dtype: 'F32', shape: [4, 96], data: new Uint8Array(rnd(4 * 96, 10 + i).buffer) });
    adapterTensors.push({ name: `base_model.model.${mod}.lora_B.weight`, dtype: 'F32', shape: [80, 4], data: new Uint8Array(rnd(80 * 4, 20 + i).buffer) });
    baseTensors.push({ name: `${mod}.weight`, dtype: 'F16', shape: [80, 96], data: f16(rnd(80 * 96, 30 + i), 80, 96) });
  }
  baseTensors.push({ name: 'enc.0.norm.weight', dtype: 'F16', shape: [96], data: f16(rnd(96, 40), 1, 96) });
  const config = JSON.stringify({ peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['q', 'v'], base_model_name_or_path: 'generated/tiny' });
  const adapterBytes = encodeSafetensors(adapterTensors, { format: 'pt' });
  const baseBytes = encodeSafetensors(baseTensors, { format: 'pt' });
  const adapter = await lw.loadAdapter({ weights: adapterBytes, config });
  const parts = [];
  await lw.mergeAdapterFiles({ base: await SafetensorsReader.open(bytesSource(baseBytes)), adapter, sink: () => ({ write: async (b) => void parts.push(b) }) });
  const want = Buffer.concat(parts);
  adapter.dispose();

  const mp = await browser.newPage({ viewport: { width: 1000, height: 760 } });
  const merrors = [];
  mp.on('pageerror', (e) => merrors.push(e.message));
  await mp.goto(`${server.url}/demo/merge.html?simd=${lw.build}`);
  await mp.waitForSelector('#status[data-state="ready"]', { timeout: 30_000 });
  const cores = await mp.evaluate(() => Math.min(navigator.hardwareConcurrency, 8));
  check('merge page: the worker runs a pool on every core (cross-origin isolated, threads: auto)', (await mp.getAttribute('#status', 'data-threads')) === String(cores), `${await mp.getAttribute('#status', 'data-threads')} threads, ${cores} cores`);
  await mp.setInputFiles('#adapter', [
    { name: 'adapter_config.json', mimeType: 'application/json', buffer: Buffer.from(config) },
    { name: 'adapter_model.safetensors', mimeType: 'application/octet-stream', buffer: Buffer.from(adapterBytes) },
  ]);
  await mp.waitForFunction(() => document.querySelectorAll('#modules tr').length > 1, null, { timeout: 30_000 });
  const summary = await mp.textContent('#summary');
  check('merge page: the picked adapter is read and its modules listed', /PEFT adapter for generated\/tiny: 3 modules/.test(summary) && (await mp.$$('#modules tr')).length === 4, summary);
  await mp.setInputFiles('#base', [{ name: 'model.safetensors', mimeType: 'application/octet-stream', buffer: Buffer.from(baseBytes) }]);
  await mp.click('#merge');
  await mp.waitForSelector('#status[data-state="done"], #status[data-state="error"]', { timeout: 60_000 });
  const mstatus = await mp.textContent('#status');
  check('merge page: the worker merges with progress and reports it', (await mp.getAttribute('#status', 'data-state')) === 'done' && (await mp.getAttribute('#status', 'data-merged')) === '3', mstatus);
  const [download] = await Promise.all([mp.waitForEvent('download'), mp.click('#download')]);
  const got = (await import('node:fs')).readFileSync(await download.path());
  check('merge page: the downloaded file equals the same merge in Node, byte for byte', Buffer.compare(got, want) === 0, `${got.length} bytes`);
  const r = await SafetensorsReader.open(bytesSource(new Uint8Array(got)));
  check('merge page: the download is a valid safetensors file with every tensor', r.tensors.length === 4, r.tensors.map((t) => t.name).join(', '));
  // a GGUF model (Q8_0) and a llama.cpp adapter: the same page, the GGUF path, the same bytes as Node
  const arch = { key: 'general.architecture', type: 'STRING', value: 'llama' };
  const q8 = new Uint8Array(2 * 3 * 34); // [2, 96] in Q8_0: 3 blocks a row, f16 scale + 32 int8 each
  for (let b = 0; b < 6; b++) { q8[b * 34 + 1] = 0x20; for (let i = 2; i < 34; i++) q8[b * 34 + i] = (b * 7 + i * 13) & 0xff; }
  const ggufModel = await encodeGguf({ metadata: [arch], tensors: [{ name: 'blk.0.attn_v.weight', type: 'Q8_0', shape: [2, 96], data: q8 }] });
  const ggufAdapter = await encodeGguf({
    metadata: [arch, { key: 'general.type', type: 'STRING', value: 'adapter' }, { key: 'adapter.type', type: 'STRING', value: 'lora' }, { key: 'adapter.lora.alpha', type: 'FLOAT32', value: 2 }],
    tensors: [
      { name: 'blk.0.attn_v.weight.lora_a', type: 'F32', shape: [2, 96], data: rnd(2 * 96, 50) },
      { name: 'blk.0.attn_v.weight.lora_b', type: 'F32', shape: [2, 2], data: rnd(4, 51) },
    ],
  });
  const ga = await lw.loadAdapter({ weights: ggufAdapter });
  const gparts = [];
  await lw.mergeAdapterFiles({ base: await GgufReader.open(bytesSource(ggufModel)), adapter: ga, sink: () => ({ write: async (b) => void gparts.push(b) }) });
  ga.dispose();
  await mp.setInputFiles('#adapter', [{ name: 'adapter.gguf', mimeType: 'application/octet-stream', buffer: Buffer.from(ggufAdapter) }]);
  await mp.waitForFunction(() => /llama\.cpp adapter/.test(document.querySelector('#summary')?.textContent ?? ''), null, { timeout: 30_000 });
  await mp.setInputFiles('#base', [{ name: 'model.gguf', mimeType: 'application/octet-stream', buffer: Buffer.from(ggufModel) }]);
  await mp.click('#merge');
  await mp.waitForSelector('#status[data-state="done"], #status[data-state="error"]', { timeout: 60_000 });
  const [gdownload] = await Promise.all([mp.waitForEvent('download'), mp.click('#download')]);
  const ggot = (await import('node:fs')).readFileSync(await gdownload.path());
  check('merge page: a llama.cpp adapter merged into a Q8_0 GGUF model downloads as merged.gguf, equal to Node\'s merge byte for byte',
    gdownload.suggestedFilename() === 'merged.gguf' && Buffer.compare(ggot, Buffer.concat(gparts)) === 0, `${await mp.textContent('#status')}; ${ggot.length} bytes`);
  // a PEFT DoRA adapter (the same factors with magnitude vectors): the page merges it as Node does
  const doraTensors = [...adapterTensors];
  for (const [i, mod] of ['enc.0.q', 'enc.0.v', 'enc.1.q'].entries()) {
    doraTensors.push({ name: `base_model.model.${mod}.lora_magnitude_vector`, dtype: 'F32', shape: [80], data: new Uint8Array(rnd(80, 60 + i).map((x) => 1 + x).buffer) });
  }
  const doraConfig = JSON.stringify({ ...JSON.parse(config), use_dora: true });
  const doraBytes = encodeSafetensors(doraTensors, { format: 'pt' });
  const da = await lw.loadAdapter({ weights: doraBytes, config: doraConfig });
  const dparts = [];
  await lw.mergeAdapterFiles({ base: await SafetensorsReader.open(bytesSource(baseBytes)), adapter: da, sink: () => ({ write: async (b) => void dparts.push(b) }) });
  da.dispose();
  await mp.setInputFiles('#adapter', [
    { name: 'adapter_config.json', mimeType: 'application/json', buffer: Buffer.from(doraConfig) },
    { name: 'adapter_model.safetensors', mimeType: 'application/octet-stream', buffer: Buffer.from(doraBytes) },
  ]);
  await mp.waitForFunction(() => /PEFT adapter/.test(document.querySelector('#summary')?.textContent ?? '') && document.querySelector('#status')?.getAttribute('data-state') === 'ready', null, { timeout: 30_000 });
  await mp.setInputFiles('#base', [{ name: 'model.safetensors', mimeType: 'application/octet-stream', buffer: Buffer.from(baseBytes) }]);
  await mp.click('#merge');
  await mp.waitForSelector('#status[data-state="done"], #status[data-state="error"]', { timeout: 60_000 });
  const [ddownload] = await Promise.all([mp.waitForEvent('download'), mp.click('#download')]);
  const dgot = (await import('node:fs')).readFileSync(await ddownload.path());
  check('merge page: a PEFT DoRA adapter merges in the browser to Node\'s bytes', Buffer.compare(dgot, Buffer.concat(dparts)) === 0, `${await mp.textContent('#status')}; ${dgot.length} bytes`);
  await mp.screenshot({ path: `${root}build/merge-screenshot.png`, fullPage: true });
  check('merge page: no page errors', merrors.length === 0, merrors.join('; '));
  console.log(`screenshot: build/merge-screenshot.png`);
} finally {
  await browser.close();
  await server.close();
}
const passed = results.filter(Boolean).length;
console.log(`\n  Total:     ${results.length}\n  Passed:    ${passed}\n  Skipped:   0\n`);
process.exit(passed === results.length ? 0 : 1);
