#!/usr/bin/env node
// Runs the uvu suite once per wasm flavour and prints one closing line.
//   baseline: plain node (SIMD128 mul + add)
//   relaxed:  node --experimental-wasm-relaxed-simd (Node 20 needs the flag; Node ≥ 22 has it on)
// --expose-gc lets the leak-backstop test force a collection.
// Usage: node scripts/test.mjs [pattern]   e.g. node scripts/test.mjs rank
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const pattern = process.argv[2] ? `${process.argv[2]}.*\\.test\\.ts$` : '\\.test\\.ts$';
const uvu = fileURLToPath(new URL('../node_modules/uvu/bin.js', import.meta.url));
const runs = [
  { flavour: 'baseline', flags: ['--expose-gc'] },
  { flavour: 'relaxed', flags: ['--expose-gc', '--experimental-wasm-relaxed-simd'] },
];

const strip = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');
let passed = 0;
let failed = 0;
let skipped = 0;
let exitCode = 0;
for (const { flavour, flags } of runs) {
  console.log(`\n# ${flavour} wasm build`);
  const out = await new Promise((resolve) => {
    const child = spawn(process.execPath, [...flags, '--import', 'tsx', uvu, 'test', pattern], {
      cwd: root,
      env: { ...process.env, LORA_SIMD: flavour },
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
console.log(`\n${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(exitCode);
