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
} finally {
  await browser.close();
  await server.close();
}
const passed = results.filter(Boolean).length;
console.log(`\n  Total:     ${results.length}\n  Passed:    ${passed}\n  Skipped:   0\n`);
process.exit(passed === results.length ? 0 : 1);
