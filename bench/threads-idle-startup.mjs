// The CLI's start-up, paired: `lora-wasm --help` and a merge of a tiny model (2 tensors of [6, 5]) from
// several checkouts, alternating, with the time to the first byte on stdout and to exit, medians.
//   node bench/threads-idle-startup.mjs <tiny dir with base.safetensors and adapter/> [checkout …] [--runs 15]
// (default checkout: this one; each needs dist/ built.)
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const runsAt = args.indexOf('--runs');
const runs = runsAt >= 0 ? Number(args.splice(runsAt, 2)[1]) : 15;
const [tiny, ...roots] = args;
if (!tiny) throw new Error('usage: node bench/threads-idle-startup.mjs <tiny dir> [checkout …] [--runs N]');
if (roots.length === 0) roots.push(fileURLToPath(new URL('..', import.meta.url)));

const time = (argv) => new Promise((resolve, reject) => {
  const t0 = performance.now();
  let first;
  const child = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'inherit'] });
  child.stdout.once('data', () => (first = performance.now() - t0));
  child.on('error', reject);
  child.on('close', (code) => (code === 0 || code === 2 ? resolve([first ?? NaN, performance.now() - t0]) : reject(new Error(`${argv.join(' ')}: exit ${code}`))));
});
const cases = {
  help: (bin) => [bin, '--help'],
  'merge tiny': (bin) => [bin, 'merge', '--base', path.join(tiny, 'base.safetensors'), '--adapter', path.join(tiny, 'adapter'), '--out', path.join(tiny, 'out.safetensors'), '--force', '--quiet'],
};
const median = (x) => [...x].sort((a, b) => a - b)[x.length >> 1];
for (const [name, argv] of Object.entries(cases)) {
  const t = roots.map(() => ({ first: [], exit: [] }));
  for (let i = 0; i < runs; i++) {
    for (let k = 0; k < roots.length; k++) {
      const r = (i + k) % roots.length;
      const [first, exit] = await time(argv(path.join(roots[r], 'bin/lora-wasm.mjs')));
      t[r].first.push(first);
      t[r].exit.push(exit);
    }
  }
  console.log(`${name}, ${runs} runs each`);
  roots.forEach((root, r) => console.log(`  ${path.basename(root).padEnd(12)} first byte ${median(t[r].first).toFixed(0)} ms, exit ${median(t[r].exit).toFixed(0)} ms`));
}
