#!/usr/bin/env node
// Runs `npm run build` only when a source is newer than what it builds (build/*.wasm, dist/, the
// bundles), so `npm run bench` does not spend a minute rebuilding an unchanged tree.
import { execSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const newest = (dir) => readdirSync(path.join(root, dir), { recursive: true, withFileTypes: true })
  .filter((e) => e.isFile())
  .reduce((t, e) => Math.max(t, statSync(path.join(e.parentPath ?? e.path, e.name)).mtimeMs), 0);
const outputs = ['build/lora-baseline.wasm', 'build/lora-relaxed.wasm', 'build/lora-baseline-threads.wasm', 'build/lora-relaxed-threads.wasm', 'dist/index.js', 'dist/lora-wasm.inline.js'];
const missing = outputs.filter((f) => !existsSync(path.join(root, f)));
const built = missing.length ? 0 : Math.min(...outputs.map((f) => statSync(path.join(root, f)).mtimeMs));
const sources = Math.max(newest('assembly'), newest('src'), ...['package.json', 'asconfig.json', 'tsconfig.json', 'scripts/bundle.mjs'].map((f) => statSync(path.join(root, f)).mtimeMs));
if (missing.length || sources > built) {
  console.log(missing.length ? `building: ${missing[0]} is missing` : 'building: sources changed since the last build');
  execSync('npm run build', { cwd: root, stdio: 'inherit' });
} else console.log('build is current: not rebuilding');
