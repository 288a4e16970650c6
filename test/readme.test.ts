// Keeps the README true: its js blocks run as written, against the built package.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BUILD } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');

/**
 * The n-th js block (from 0) of the README section headed `heading` (at any level, `##` or `###`): the
 * section runs to the next heading of the same or a higher level, headings inside code fences not counted.
 */
function block(heading: string, n = 0): string {
  const lines = readme.split('\n');
  let fenced = false;
  let level = 0;
  const body: string[] = [];
  for (const line of lines) {
    if (line.startsWith('```')) fenced = !fenced;
    const h = fenced ? null : /^(#{1,6}) (.*)$/.exec(line);
    if (level === 0) {
      if (h && h[2] === heading) level = h[1]!.length;
      continue;
    }
    if (h && h[1]!.length <= level) break;
    body.push(line);
  }
  assert.ok(level > 0, `README has a "${heading}" section`);
  const blocks = [...`${body.join('\n')}\n`.matchAll(/```js\n([\s\S]*?)```/g)];
  assert.ok(blocks[n], `"${heading}" has js block ${n}`);
  return blocks[n]![1]!;
}

/**
 * Runs a section's js block as written in a child Node and returns its output lines. `import … from
 * 'lora-wasm'` resolves to this package's own built exports (package self-reference).
 */
function runBlock(heading: string, n = 0): string[] {
  const flags = BUILD === 'relaxed' ? ['--experimental-wasm-relaxed-simd'] : [];
  const run = spawnSync(process.execPath, [...flags, '--input-type=module', '-e', block(heading, n)], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1' }, // uvu forces colour; keep the child's numbers plain
  });
  assert.is(run.status, 0, `"${heading}" failed:\n${run.stderr}`);
  return run.stdout.trim().split('\n');
}

test('the Node quick start runs as written and prints what its comments say', () => {
  const [build, w00] = runBlock('Quick start (Node)');
  assert.is(build, BUILD);
  assert.ok(Math.abs(Number(w00) - 0.5016) < 1e-6, `W.data[0] printed ${w00}`);
});

test('the fine-tuning example runs as written and its loss falls more than 10×', () => {
  assert.equal(runBlock('Fine-tuning with LoRA (Node)'), ['true', '64 8']);
});

test('the half-precision example runs as written and prints what its comments say', () => {
  assert.equal(runBlock('Half precision: f16 and bf16 weights'), ['bf16 true', '2,4,7,3.5,4,4']);
});

test('the adapter-files example runs as written and prints what its comments say', () => {
  assert.equal(runBlock('Real adapter files: PEFT, kohya, safetensors'), ['layer.0.q_proj r=1 scale=2', '1,2,3,-1,-3,-5']);
});

test('the adapter algebra example runs as written and prints what its comments say', () => {
  assert.equal(runBlock('Adapters as values: combine, extract, resize'), ['4 2 1', '2 0.9952', '2 2']);
});

test('the extraction example runs as written and prints what its comments say', () => {
  assert.equal(runBlock('Adapters as values: combine, extract, resize', 1), ['3 true', 'layers.0.q_proj 64 48']);
});

test('the GGUF example runs as written and prints what its comments say', () => {
  assert.equal(runBlock('GGUF: llama.cpp models, quantized too'), ['gguf blk.0.attn_v r=1 scale=1', '1 Q8_0']);
});

test('the serving example runs as written and prints what its comments say', () => {
  assert.equal(runBlock('Serving many adapters in one batch'), ['4 8', 'true']);
});

test('the threads example runs as written and prints what its comments say', () => {
  assert.equal(runBlock('Threads: every core'), ['2', 'true']);
});

test('the README quotes the exact setup lines and the PEFT mapping', () => {
  assert.ok(readme.includes('npm install && npm start\nnpm test\n'));
  assert.match(readme, /\| `A` \| `…lora_B\.weight` \| `\[out_features, r\]` \|/);
  assert.match(readme, /\| `B` \| `…lora_A\.weight` \| `\[r, in_features\]` \|/);
});

test.run();
