#!/usr/bin/env node
// Browser and CommonJS bundles (esbuild), after `tsc` has written dist/index.js and its types.
//
//   dist/index.js            ESM for Node (tsc); .wasm read from build/ via new URL('../../build/…', import.meta.url)
//   dist/lora-wasm.inline.js ESM, one file, both .wasm flavours embedded: the default browser entry
//                            (the `browser` condition of `lora-wasm`), works in every bundler unconfigured
//   dist/browser.js          ESM for browsers that serve the .wasm themselves (`lora-wasm/url`); fetches
//                            build/lora-<flavour>.wasm via new URL('../build/…', import.meta.url), so a
//                            consumer's bundle at site/js/app.js looks for site/build/lora-relaxed.wasm
//   dist/cjs/index.cjs       CommonJS for require() in Node
//   dist/lora-wasm.iife.js   <script> build exposing the global `LoRAWasm`, both flavours embedded
//   dist/cjs/*.d.ts          the type declarations again, under a CommonJS package.json, for require()
// src/runtime/wasm-source.ts says '../../build/' (right for dist/runtime/ and dist/cjs/index.cjs);
// the one-level browser bundle gets the same module with '../build/'.
//
// Prints each artifact's size, raw and gzipped.
import { copyFileSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import * as esbuild from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
const inlineWasm = {
  name: 'inline-wasm',
  setup(build) {
    // Swap the URL-based default source for embedded bytes.
    build.onResolve({ filter: /\/wasm-source\.js$/ }, () => ({ path: `${root}src/runtime/wasm-inline.ts` }));
  },
};
const urlOneUp = {
  name: 'wasm-url-one-level',
  setup(build) {
    build.onResolve({ filter: /\/wasm-source\.js$/ }, () => ({ path: 'wasm-source', namespace: 'wasm-url' }));
    build.onLoad({ filter: /.*/, namespace: 'wasm-url' }, () => ({
      loader: 'ts',
      contents: readFileSync(`${root}src/runtime/wasm-source.ts`, 'utf8').replaceAll("'../../build/", "'../build/"),
      resolveDir: `${root}src/runtime`,
    }));
  },
};
const browserFiles = {
  name: 'browser-files',
  setup(build) {
    // No node: imports in browser bundles: the file loader becomes a stub.
    build.onResolve({ filter: /\/load-file\.js$/ }, () => ({ path: `${root}src/runtime/load-file.browser.ts` }));
    build.onResolve({ filter: /\/node-file\.js$/ }, () => ({ path: `${root}src/io/node-file.browser.ts` }));
    build.onResolve({ filter: /\/thread\.js$/ }, () => ({ path: `${root}src/pool/thread.browser.ts` }));
  },
};
const common = {
  entryPoints: [`${root}src/index.ts`],
  bundle: true,
  minify: true,
  sourcemap: true,
  target: ['es2022'],
  legalComments: 'none',
  loader: { '.wasm': 'binary' },
  logLevel: 'warning',
};
// re2js (the RE2 matcher for rank_pattern/alpha_pattern keys a backtracking engine may not run, about half
// the bundle's size) stays a dynamic import in browser bundles: the user's bundler resolves it from the
// dependency and loads it only when such a key appears; a <script> page without a bundler cannot load it.
const lazy = { external: ['re2js'] };
const builds = [
  { ...common, ...lazy, format: 'esm', platform: 'browser', outfile: `${root}dist/browser.js`, plugins: [browserFiles, urlOneUp] },
  { ...common, ...lazy, format: 'esm', platform: 'browser', outfile: `${root}dist/lora-wasm.inline.js`, plugins: [browserFiles, inlineWasm] },
  { ...common, ...lazy, format: 'iife', platform: 'browser', globalName: 'LoRAWasm', outfile: `${root}dist/lora-wasm.iife.js`, plugins: [browserFiles, inlineWasm] },
  {
    ...common,
    format: 'cjs',
    platform: 'node',
    minify: false,
    outfile: `${root}dist/cjs/index.cjs`,
    define: { 'import.meta.url': '__loraImportMetaUrl' },
    banner: { js: 'const __loraImportMetaUrl = require("node:url").pathToFileURL(__filename).href;' },
  },
];
await Promise.all(builds.map((b) => esbuild.build(b)));
if (!readFileSync(`${root}dist/browser.js`, 'utf8').includes('../build/lora-relaxed.wasm')) throw new Error('dist/browser.js lost its ../build/ .wasm URL');
// No import of a node: module (the worker's source text names node:worker_threads for Node workers;
// that is a string the browser never runs through require).
for (const f of ['browser.js', 'lora-wasm.inline.js', 'lora-wasm.iife.js']) {
  const imports = readFileSync(`${root}dist/${f}`, 'utf8').match(/(?:from\s*|import\s*\(\s*)["'`]node:[^"'`]+/g);
  if (imports) throw new Error(`dist/${f} still imports ${imports.join(', ')}`);
}
// Types for require(): the same declarations in a folder that TypeScript reads as CommonJS.
mkdirSync(`${root}dist/cjs`, { recursive: true });
writeFileSync(`${root}dist/cjs/package.json`, '{ "type": "commonjs" }\n');
for (const f of readdirSync(`${root}dist`, { recursive: true })) {
  if (!f.endsWith('.d.ts') || f.startsWith('cjs')) continue;
  mkdirSync(path.dirname(`${root}dist/cjs/${f}`), { recursive: true });
  copyFileSync(`${root}dist/${f}`, `${root}dist/cjs/${f}`);
}

const report = ['dist/index.js', 'dist/browser.js', 'dist/cjs/index.cjs', 'dist/lora-wasm.inline.js', 'dist/lora-wasm.iife.js', 'build/lora-baseline.wasm', 'build/lora-relaxed.wasm'];
console.log('artifact                      raw       gzip');
for (const f of report) {
  const raw = statSync(`${root}${f}`).size;
  const gz = gzipSync(readFileSync(`${root}${f}`), { level: 9 }).length;
  console.log(`${f.padEnd(28)} ${(raw / 1024).toFixed(1).padStart(6)} KB ${(gz / 1024).toFixed(1).padStart(7)} KB`);
}
