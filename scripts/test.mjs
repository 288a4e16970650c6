#!/usr/bin/env node
// Runs the uvu suite once per wasm flavour and prints one closing line.
//   baseline: plain node (SIMD128 mul + add)
//   relaxed:  node --experimental-wasm-relaxed-simd (Node 20 needs the flag; Node ≥ 22 has it on)
// --expose-gc lets the leak-backstop test force a collection.
// Then, where Debian's Chromium is installed (always in CI), the same suites in headless Chromium
// (scripts/test-browser.mjs), the package-consumer check and the demo page check.
// Usage: node scripts/test.mjs [pattern]   e.g. node scripts/test.mjs rank
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const pattern = process.argv[2] ? `${process.argv[2]}.*\\.test\\.ts$` : '\\.test\\.ts$';
const uvu = fileURLToPath(new URL('../node_modules/uvu/bin.js', import.meta.url));
const node = (flavour, flags) => ({
  name: `${flavour} wasm build, Node ${process.version}`,
  args: [...flags, '--import', 'tsx', uvu, 'test', pattern],
  env: { LORA_BUILD: flavour },
});
const runs = [node('baseline', ['--expose-gc']), node('relaxed', ['--expose-gc', '--experimental-wasm-relaxed-simd'])];
const chromium = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const browserChecks = [
  { name: 'headless Chromium, both wasm builds', args: ['scripts/test-browser.mjs'], env: {} },
  { name: 'package consumer: npm pack, ESM, CJS, tsc --strict, bundled page', args: ['scripts/test-consumer.mjs'], env: {} },
  { name: 'demo page in Chromium', args: ['scripts/test-demo.mjs'], env: {} },
];
let browserSkipped = false;
if (process.argv[2] === undefined) {
  if (existsSync(chromium)) runs.push(...browserChecks);
  else if (process.env.CI) {
    console.error(`CI: no Chromium at ${chromium}; .ci/run installs Debian's chromium package`);
    process.exit(1);
  } else browserSkipped = true;
}

const strip = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');
let passed = 0;
let failed = 0;
let skipped = 0;
let exitCode = 0;
for (const run of runs) {
  console.log(`\n# ${run.name}`);
  const out = await new Promise((resolve) => {
    const child = spawn(process.execPath, run.args, {
      cwd: root,
      env: { ...process.env, ...run.env },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let text = '';
    child.stdout.on('data', (d) => {
      process.stdout.write(d);
      text += d;
    });
    child.on('close', (code) => resolve({ code, text: strip(text) }));
  });
  const num = (label) => Number(out.text.match(new RegExp(`${label}:\\s+(\\d+)`))?.[1] ?? 0);
  const total = num('Total');
  passed += num('Passed');
  skipped += num('Skipped');
  failed += total - num('Passed') - num('Skipped');
  if (out.code !== 0 || total === 0) {
    exitCode = 1;
    if (total === 0 || out.code !== 0 && total === num('Passed')) failed += 1; // crashed before or after reporting
  }
}
if (browserSkipped) {
  console.log(`\n# browser checks skipped: no Chromium at ${chromium} (apt-get install chromium, or set CHROMIUM_PATH)`);
  skipped += browserChecks.length;
}
console.log(`\n${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(exitCode);
