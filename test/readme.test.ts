// Keeps the README true: its js blocks run as written, against the built package.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { encodeSafetensors } from '../src/index.js';
import { run, workdir } from './fixtures/cli.js';
import { tinyLlamaOf } from './fixtures/ggml.js';
import { makePeft } from './fixtures/peft-llama.js';
import { BUILD, rng } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');

/**
 * The n-th js block (from 0) of the README section headed `heading` (at any level, `##` or `###`): the
 * section runs to the next heading of the same or a higher level, headings inside code fences not counted.
 */
function block(heading: string, n = 0, lang = 'js'): string {
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
  const blocks = [...`${body.join('\n')}\n`.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))];
  assert.ok(blocks[n], `"${heading}" has ${lang} block ${n}`);
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

/**
 * The CLI quick start's commands, as a reader would type them without the optional [...] parts and the
 * comments: `npx lora-wasm` is this package's bin; continuation lines joined; words split as a shell
 * splits them (single quotes kept together).
 */
function cliCommands(): string[][] {
  const text = block('Quick start (CLI)', 0, 'sh').replace(/\\\n\s*/g, ' ');
  return text.split('\n').map((l) => l.replace(/\s+#.*$/, '').replace(/\[[^\]]*\]/g, '').trim()).filter((l) => l.startsWith('npx lora-wasm '))
    .map((l) => [...l.slice('npx lora-wasm '.length).matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2]!));
}

test('every command of the CLI quick start runs as written, on models and adapters with the names it uses', async () => {
  const commands = cliCommands();
  assert.ok(commands.length >= 11, `${commands.length} commands`);
  const verbs = new Set(commands.map((c) => c[0]));
  for (const v of ['inspect', 'merge', 'convert', 'extract', 'resize', 'combine']) assert.ok(verbs.has(v), `the quick start shows ${v}`);
  const w = workdir();
  try {
    // one tiny llama as safetensors (one file, and sharded), as F16 GGUF and as Q4_K GGUF; PEFT adapters for it; a tuned twin
    const m = await tinyLlamaOf('F16', { seed: 4, embd: 256, ff: 512, heads: 4, headsKv: 2 });
    const q = await tinyLlamaOf('Q4_K', { seed: 4, embd: 256, ff: 512, heads: 4, headsKv: 2 });
    writeFileSync(w.at('model.gguf'), m.bytes);
    writeFileSync(w.at('model-Q4_K_M.gguf'), q.bytes);
    const tensors = [...m.hf].map(([name, t]) => ({ name, dtype: 'F32', shape: [...t.shape], data: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength) }));
    writeFileSync(w.at('model.safetensors'), encodeSafetensors(tensors));
    mkdirSync(w.at('sharded_model_dir'));
    const half = Math.ceil(tensors.length / 2);
    const shards = [tensors.slice(0, half), tensors.slice(half)];
    const weightMap: Record<string, string> = {};
    shards.forEach((ts, i) => {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      writeFileSync(w.at(`sharded_model_dir/${file}`), encodeSafetensors(ts));
      for (const t of ts) weightMap[t.name] = file;
    });
    writeFileSync(w.at('sharded_model_dir/model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    const peft = (dir: string, seed: number) => {
      const p = makePeft(m, { name: dir, config: { r: 4, lora_alpha: 8 }, rank: () => 4, alpha: () => 8 }, seed);
      mkdirSync(w.at(dir));
      writeFileSync(w.at(`${dir}/adapter_model.safetensors`), p.weights);
      writeFileSync(w.at(`${dir}/adapter_config.json`), JSON.stringify(p.config));
    };
    peft('adapter_dir', 1);
    peft('math_dir', 2);
    peft('code_dir', 3);
    {
      // a PEFT DoRA adapter: each module's lora_magnitude_vector is its W's row norms, moved ±20 %
      const p = makePeft(m, { name: 'dora_dir', config: { r: 4, lora_alpha: 8, use_dora: true }, rank: () => 4, alpha: () => 8 }, 4);
      const gm = rng(10);
      const f32 = (x: Float32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
      const dora = [...p.modules].flatMap(([name, x]) => {
        const W = m.hf.get(`${name}.weight`)!.data;
        const mag = Float32Array.from({ length: x.out }, (_, i) => Math.hypot(...W.subarray(i * x.inn, (i + 1) * x.inn)) * (0.8 + 0.4 * gm()));
        return [
          { name: `base_model.model.${name}.lora_A.weight`, dtype: 'F32', shape: [x.r, x.inn], data: f32(x.loraA) },
          { name: `base_model.model.${name}.lora_B.weight`, dtype: 'F32', shape: [x.out, x.r], data: f32(x.loraB) },
          { name: `base_model.model.${name}.lora_magnitude_vector`, dtype: 'F32', shape: [x.out], data: f32(mag) },
        ];
      });
      mkdirSync(w.at('dora_dir'));
      writeFileSync(w.at('dora_dir/adapter_model.safetensors'), encodeSafetensors(dora));
      writeFileSync(w.at('dora_dir/adapter_config.json'), JSON.stringify(p.config));
    }
    mkdirSync(w.at('base_model'));
    mkdirSync(w.at('tuned_model'));
    copyFileSync(w.at('model.safetensors'), w.at('base_model/model.safetensors'));
    const g = rng(9);
    writeFileSync(w.at('tuned_model/model.safetensors'), encodeSafetensors([...m.hf].map(([name, t]) => {
      const data = t.data.slice();
      if (name.endsWith('proj.weight')) for (let i = 0; i < data.length; i++) data[i]! += 0.01 * (g() - 0.5);
      return { name, dtype: 'F32', shape: [...t.shape], data: new Uint8Array(data.buffer) };
    })));
    for (const args of commands) {
      const r = run(w.dir, ...args);
      assert.is(r.status, 0, `lora-wasm ${args.join(' ')}:\n${r.stderr}`);
    }
    for (const out of ['merged.safetensors', 'merged_dir', 'merged-Q4_K_M.gguf', 'adapter.gguf', 'kohya.safetensors', 'peft_dir', 'extracted_dir', 'small_dir', 'mixed_dir', 'lora_dir']) {
      assert.ok(existsSync(w.at(out)), `${out} was written`);
    }
  } finally {
    w.done();
  }
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
