/**
 * The CLI end to end: `lora-wasm merge` of a rank-16 PEFT adapter over every linear layer of a
 * generated 1 GiB f16 base (8 layers × q/k/v/o [4096, 4096]; LORA_BENCH_CLI_LAYERS scales it), against copying the same file
 * (read + write in the same tensor-sized chunks, through the page cache like the merge) in the same
 * run. Target: the merge runs at ≥ 70 % of the copy's speed. Peak memory (max RSS of the merge
 * process, from /usr/bin/time where it exists) shows the streaming: near the largest tensor, not the
 * model. Every run's output is checked: merged tensors sampled against float64, the rest byte-equal.
 * LORA_BENCH_CLI_KEEP=1 keeps the generated files (their folder is printed) for profiling.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SafetensorsReader, fileSource, planSafetensors } from '../src/index.js';
import { halfUlp, rankElement } from '../test/reference.js';
import type { Ctx } from './common.js';
import { random } from './common.js';

const D = 4096;
const R = 16;
/** 8 layers = 1 GiB; LORA_BENCH_CLI_LAYERS=32 makes the 4 GiB base the README quotes for peak memory. */
const LAYERS = Number(process.env.LORA_BENCH_CLI_LAYERS ?? 8);
const MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj'];

const median = (xs: number[]): number => xs.slice().sort((a, b) => a - b)[xs.length >> 1]!;

export async function benchCli(ctx: Ctx): Promise<void> {
  const lw = ctx.builds.at(-1)!;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lora-wasm-cli-bench-'));
  try {
    // base: 32 f16 tensors of 32 MiB, each from one random pattern shifted per tensor
    const pattern = lw.matrix(D, D, random(D * D, 51, 0.05), { dtype: 'f16' });
    const bits = pattern.toArray();
    pattern.dispose();
    const names = Array.from({ length: LAYERS }, (_, l) => MODULES.map((m) => `model.layers.${l}.self_attn.${m}`)).flat();
    const plan = planSafetensors(names.map((n) => ({ name: `${n}.weight`, dtype: 'F16', shape: [D, D] })));
    const basePath = path.join(dir, 'model.safetensors');
    const fd = openSync(basePath, 'w');
    writeSync(fd, plan.header);
    plan.order.forEach((_, i) => {
      const t = bits.slice();
      t[0] = i; // every tensor differs
      writeSync(fd, new Uint8Array(t.buffer));
    });
    closeSync(fd);
    const size = statSync(basePath).size;
    // adapter: rank 16 over every module, alpha 32, F32 as PEFT saves it
    const tensors: { name: string; dtype: string; shape: number[]; data: Uint8Array }[] = [];
    const factors = new Map<string, { a: Float32Array; b: Float32Array }>();
    names.forEach((n, i) => {
      const la = random(R * D, 100 + i, 0.02), lb = random(D * R, 200 + i, 0.02);
      factors.set(n, { a: la, b: lb });
      tensors.push({ name: `base_model.model.${n}.lora_A.weight`, dtype: 'F32', shape: [R, D], data: new Uint8Array(la.buffer) });
      tensors.push({ name: `base_model.model.${n}.lora_B.weight`, dtype: 'F32', shape: [D, R], data: new Uint8Array(lb.buffer) });
    });
    mkdirSync(path.join(dir, 'adapter'));
    const { encodeSafetensors } = await import('../src/index.js');
    writeFileSync(path.join(dir, 'adapter/adapter_model.safetensors'), encodeSafetensors(tensors, { format: 'pt' }));
    writeFileSync(path.join(dir, 'adapter/adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: R, lora_alpha: 32, target_modules: MODULES, base_model_name_or_path: 'generated' }));

    const copy = (): number => {
      const t = performance.now();
      const src = openSync(basePath, 'r');
      const dst = openSync(path.join(dir, 'copy.safetensors'), 'w');
      const buf = Buffer.allocUnsafe(D * D * 2);
      let n: number;
      while ((n = readSync(src, buf, 0, buf.length, null)) > 0) writeSync(dst, buf, 0, n);
      closeSync(src);
      closeSync(dst);
      return performance.now() - t;
    };
    const cli = path.resolve('bin/lora-wasm.mjs');
    const hasTime = existsSync('/usr/bin/time');
    let maxRssKb = 0;
    const merge = (): number => {
      const out = path.join(dir, 'merged.safetensors');
      const t = performance.now();
      const args = [process.execPath, '--experimental-wasm-relaxed-simd', cli, 'merge', '--base', basePath, '--adapter', path.join(dir, 'adapter'), '--out', out, '--force', '--quiet'];
      const r = hasTime ? spawnSync('/usr/bin/time', ['-f', 'MAXRSS %M', ...args], { encoding: 'utf8' }) : spawnSync(args[0]!, args.slice(1), { encoding: 'utf8' });
      const ms = performance.now() - t;
      if (r.status !== 0) throw new Error(`lora-wasm merge failed: ${r.stderr}`);
      const rss = r.stderr.match(/MAXRSS (\d+)/);
      if (rss) maxRssKb = Math.max(maxRssKb, Number(rss[1]));
      return ms;
    };
    const copies: number[] = [], merges: number[] = [];
    copy();
    merge(); // warm the page cache and the code
    for (let i = 0; i < (ctx.quick ? 2 : 4); i++) {
      copies.push(copy());
      merges.push(merge());
    }
    // check the output: two merged tensors sampled against float64, rounded once to f16
    const reader = await SafetensorsReader.open(await fileSource(path.join(dir, 'merged.safetensors')));
    const base = await SafetensorsReader.open(await fileSource(basePath));
    for (const n of [names[0]!, names.at(-1)!]) {
      const got = lw.matrix(D, D, new Uint16Array((await reader.read(`${n}.weight`)).bytes.slice().buffer), { dtype: 'f16' }).toFloat32();
      const w0 = lw.matrix(D, D, new Uint16Array((await base.read(`${n}.weight`)).bytes.slice().buffer), { dtype: 'f16' }).toFloat32();
      const { a, b } = factors.get(n)!;
      const want = rankElement(w0, b, a, D, R, D, 32 / R);
      for (const [i, j] of [[0, 0], [1, 4095], [2048, 77], [4095, 4095]] as const) {
        const e = want(i, j);
        if (!(Math.abs(got[i * D + j]! - e.value) <= halfUlp(e.value, 'f16') * 1.0001 + 40 * 2 ** -24 * e.mag)) {
          throw new Error(`cli merge: ${n}.weight[${i}, ${j}] is ${got[i * D + j]} but float64 gives ${e.value}; refusing to report its speed`);
        }
      }
    }
    await reader.close();
    await base.close();
    const c = median(copies), m = median(merges);
    ctx.rows.push({ group: 'cli merge', shape: `${(size / 2 ** 30).toFixed(2)} GiB f16, ${names.length} modules, r=16`, name: 'copy of the file (read + write)', by: 'copy', ms: c, flops: 0, bytes: 2 * size });
    ctx.rows.push({ group: 'cli merge', shape: `${(size / 2 ** 30).toFixed(2)} GiB f16, ${names.length} modules, r=16`, name: 'lora-wasm merge (CLI, relaxed)', by: 'lora-wasm', build: 'relaxed', ms: m, flops: 2 * R * D * D * names.length, bytes: 2 * size });
    ctx.notes.push(`cli merge: ${(c / m * 100).toFixed(0)} % of the copy's speed (${(m / 1000).toFixed(2)} s vs ${(c / 1000).toFixed(2)} s for ${(size / 2 ** 30).toFixed(2)} GiB)${maxRssKb ? `; peak RSS of the merge process ${(maxRssKb / 1024).toFixed(0)} MiB (the largest tensor is 32 MiB)` : ''}`);
  } finally {
    // LORA_BENCH_CLI_KEEP=1 keeps the generated base and adapter, to profile the CLI on them
    if (process.env.LORA_BENCH_CLI_KEEP) console.log(`kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}
