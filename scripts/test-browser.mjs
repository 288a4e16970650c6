#!/usr/bin/env node
// Runs the uvu suites in headless Chromium, once per wasm flavour (Chromium has relaxed SIMD), and
// prints uvu-style Total/Passed/Skipped lines for scripts/test.mjs. Any failed test, page error or
// missing completion fails the run (exit 1).
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { launch, serve } from './browser.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const out = `${root}build/test-browser/`;
mkdirSync(out, { recursive: true });
await esbuild.build({
  entryPoints: [`${root}test/browser/entry.ts`],
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2022'],
  outfile: `${out}tests.js`,
  sourcemap: 'inline',
  external: ['node:*'],
  logLevel: 'warning',
  // Web Workers instead of worker_threads, as in the browser bundles
  plugins: [{ name: 'browser-threads', setup: (b) => b.onResolve({ filter: /\/thread\.js$/ }, () => ({ path: `${root}src/pool/thread.browser.ts` })) }],
});
const html = '<!doctype html><meta charset="utf-8"><title>lora-wasm tests</title><script type="module" src="tests.js"></script>';
(await import('node:fs')).writeFileSync(`${out}index.html`, html);

const server = await serve({ '/t/': out, '/build/': `${root}build/` });
const browser = await launch(['--js-flags=--expose-gc']);
let total = 0;
let passed = 0;
let skipped = 0;
let failed = false;
const strip = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');
try {
  for (const simd of (process.env.LORA_BROWSER_SIMD ?? 'baseline,relaxed').split(',')) {
    const page = await browser.newPage();
    const lines = [];
    let done;
    const finished = new Promise((resolve) => (done = resolve));
    page.on('console', (m) => {
      const text = strip(m.text());
      lines.push(text);
      if (text.includes('LORA_BROWSER_TESTS_DONE')) done();
      if (text.includes('LORA_PAGE_ERROR')) {
        failed = true;
        console.log(text);
      }
    });
    page.on('pageerror', (e) => {
      failed = true;
      console.log(`page error (${simd}): ${e.message}`);
      done();
    });
    const t0 = Date.now();
    await page.goto(`${server.url}/t/index.html?simd=${simd}`);
    const timeout = new Promise((resolve) => setTimeout(() => resolve('timeout'), 600_000));
    if ((await Promise.race([finished, timeout])) === 'timeout') {
      failed = true;
      console.log(`chromium (${simd}): the suites did not finish within 10 minutes`);
    }
    const text = lines.join('\n');
    const num = (label) => Number(text.match(new RegExp(`${label}:\\s+(\\d+)`))?.[1] ?? 0);
    const [t, p, s] = [num('Total'), num('Passed'), num('Skipped')];
    if (t === 0 || p + s !== t) {
      failed = true;
      console.log(text.split('\n').filter((l) => l.trim() && !/^[•✘ ]+$/.test(l.trim())).slice(-60).join('\n'));
    }
    console.log(`chromium ${await browser.version()} (${simd}): ${p} of ${t} passed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    total += t;
    passed += p;
    skipped += s;
    await page.close();
  }
  // Threads without cross-origin isolation: one thread, said once in the console, reported by lw.threads.
  {
    const page = await browser.newPage();
    const line = new Promise((resolve) => {
      page.on('console', (m) => m.text().startsWith('LORA_FALLBACK ') && resolve(JSON.parse(m.text().slice(14))));
      setTimeout(() => resolve(undefined), 60_000);
    });
    await page.goto(`${server.url}/t/index.html?fallback=1&isolated=0`);
    const r = await line;
    const checks = [
      ['the page is not cross-origin isolated', r?.isolated === false],
      ['threads: 2 and threads: auto fall back to 1 thread (lw.threads)', r?.threads?.[0] === 1 && r?.threads?.[1] === 1],
      ['lw.threadsNote says why', /cross-origin isolated/.test(r?.note ?? '')],
      ['the console says so once', r?.warnings?.length === 1 && /running on 1 thread instead of 2/.test(r.warnings[0])],
      ['and it computes', r?.w00 === 1],
    ];
    for (const [name, ok] of checks) {
      total++;
      if (ok) passed++;
      else {
        failed = true;
        console.log(`FAIL threads fallback: ${name} (${JSON.stringify(r)})`);
      }
    }
    console.log(`chromium (fallback page): ${checks.filter((c) => c[1]).length} of ${checks.length} checks passed`);
    await page.close();
  }
} finally {
  await browser.close();
  await server.close();
}
console.log(`\n  Total:     ${total}\n  Passed:    ${passed}\n  Skipped:   ${skipped}\n`);
process.exit(failed || passed + skipped !== total ? 1 : 0);
