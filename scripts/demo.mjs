#!/usr/bin/env node
// npm run demo: builds demo/ into build/demo/ and serves it on http://127.0.0.1:8080/demo/ with the
// COOP/COEP headers (cross-origin isolation). PORT=… picks another port.
import { copyFileSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { serve } from './browser.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));

/** Bundles the page and its worker; the worker loads build/lora-<flavour>.wasm next to the package. */
export async function buildDemo() {
  const out = `${root}build/demo/`;
  mkdirSync(out, { recursive: true });
  await esbuild.build({
    entryPoints: { main: `${root}demo/main.ts`, worker: `${root}demo/worker.ts`, merge: `${root}demo/merge.ts`, 'merge-worker': `${root}demo/merge-worker.ts` },
    outdir: out,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['es2022'],
    sourcemap: true,
    logLevel: 'warning',
    plugins: [{
      name: 'browser-files',
      setup(build) {
        build.onResolve({ filter: /\/load-file\.js$/ }, () => ({ path: `${root}src/runtime/load-file.browser.ts` }));
        build.onResolve({ filter: /\/node-file\.js$/ }, () => ({ path: `${root}src/io/node-file.browser.ts` }));
        build.onResolve({ filter: /\/thread\.js$/ }, () => ({ path: `${root}src/pool/thread.browser.ts` }));
      },
    }],
  });
  copyFileSync(`${root}demo/index.html`, `${out}index.html`);
  copyFileSync(`${root}demo/merge.html`, `${out}merge.html`);
  return out;
}

/** Serves the built demo: the page under /demo/, the .wasm under /build/ (where the worker looks). */
export function serveDemo(out, port) {
  return serve({ '/demo/': out, '/build/': `${root}build/` }, port);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const out = await buildDemo();
  const { url } = await serveDemo(out, Number(process.env.PORT ?? 8080));
  console.log(`lora-wasm demo: ${url}/demo/  (Ctrl-C to stop)`);
}
