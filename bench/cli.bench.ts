/**
 * The CLI end to end, as users run it (`node bin/lora-wasm.mjs merge --base … --adapter … --out …`),
 * against `cp` and `cp && sync <file>` of the same base in the same run (the merge fsyncs its output
 * before it renames it into place, so `cp && sync` is the like-for-like floor; plain `cp` leaves its
 * writes in the page cache). Cases, each on a generated F16 base in the OS temp folder (deleted after):
 *   - 1 GiB: 32 tensors [4096, 4096] (8 layers × q_proj, v_proj, up_proj, down_proj), with a rank-16
 *     adapter on every tensor and with one on the attention tensors only (q_proj, v_proj: half);
 *   - 604 MB GPT-NeoX-shaped (Pythia-410m's 24 layers: query_key_value [3072, 1024], dense [1024, 1024],
 *     dense_h_to_4h [4096, 1024], dense_4h_to_h [1024, 4096], plus f16 biases and layer norms), with a
 *     rank-1 adapter on the 24 query_key_value tensors; reported in MB/s.
 *   - GGUF models (runGgufScenario): F16 and Q4_K, 8 × [4096, 4096], r=16 on attn_q and attn_v.
 * Timed runs are interleaved (cp, cp && sync, merge; repeated) and medians kept. Peak memory is the
 * merge process's max RSS (/usr/bin/time -f %M; without it, VmHWM polled from /proc/<pid>/status).
 * Every merge's output is checked: adapted tensors sampled against float64 (rounded once to f16),
 * untouched tensors byte-equal. --quick runs the GPT-NeoX case once, without a warm-up run.
 * LORA_BENCH_CLI_KEEP=1 keeps the generated files (their folder is printed) for profiling.
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GgufReader, SafetensorsReader, encodeSafetensors, fileSource, planGguf, planSafetensors, writeGguf } from '../src/index.js';
import { halfUlp, rankElement } from '../test/reference.js';
import type { Ctx } from './common.js';
import { random } from './common.js';

interface Tensor { name: string; shape: [number, number] | [number] }
interface Scenario {
  id: string;
  label: string;
  tensors: Tensor[];
  /** Adapted modules (tensor name without `.weight`), and the PEFT config's target_modules. */
  targets: string[];
  targetModules: string[];
  r: number;
  alpha: number;
}

const median = (xs: number[]): number => xs.slice().sort((a, b) => a - b)[xs.length >> 1]!;
const mb = (bytes: number, ms: number): string => `${(bytes / 1e6 / (ms / 1e3)).toFixed(0)} MB/s`;

function square(): Tensor[] {
  const out: Tensor[] = [];
  for (let l = 0; l < 8; l++) {
    for (const m of ['self_attn.q_proj', 'self_attn.v_proj', 'mlp.up_proj', 'mlp.down_proj']) out.push({ name: `model.layers.${l}.${m}.weight`, shape: [4096, 4096] });
  }
  return out;
}

function neox(): Tensor[] {
  const h = 1024, out: Tensor[] = [];
  for (let l = 0; l < 24; l++) {
    const p = `gpt_neox.layers.${l}`;
    out.push(
      { name: `${p}.attention.query_key_value.weight`, shape: [3 * h, h] }, { name: `${p}.attention.query_key_value.bias`, shape: [3 * h] },
      { name: `${p}.attention.dense.weight`, shape: [h, h] }, { name: `${p}.attention.dense.bias`, shape: [h] },
      { name: `${p}.mlp.dense_h_to_4h.weight`, shape: [4 * h, h] }, { name: `${p}.mlp.dense_h_to_4h.bias`, shape: [4 * h] },
      { name: `${p}.mlp.dense_4h_to_h.weight`, shape: [h, 4 * h] }, { name: `${p}.mlp.dense_4h_to_h.bias`, shape: [h] },
    );
    for (const n of ['input_layernorm', 'post_attention_layernorm']) out.push({ name: `${p}.${n}.weight`, shape: [h] }, { name: `${p}.${n}.bias`, shape: [h] });
  }
  return out;
}

const modulesOf = (tensors: Tensor[], suffixes: string[]) =>
  tensors.filter((t) => t.shape.length === 2 && suffixes.some((s) => t.name.endsWith(`${s}.weight`))).map((t) => t.name.slice(0, -'.weight'.length));

function scenarios(quick: boolean): Scenario[] {
  const sq = square(), nx = neox();
  const all: Scenario[] = [
    { id: 'all', label: '1 GiB f16, 32 × [4096, 4096], r=16 on all 32', tensors: sq, targets: modulesOf(sq, ['q_proj', 'v_proj', 'up_proj', 'down_proj']), targetModules: ['q_proj', 'v_proj', 'up_proj', 'down_proj'], r: 16, alpha: 32 },
    { id: 'attn', label: '1 GiB f16, 32 × [4096, 4096], r=16 on q_proj, v_proj (16)', tensors: sq, targets: modulesOf(sq, ['q_proj', 'v_proj']), targetModules: ['q_proj', 'v_proj'], r: 16, alpha: 32 },
    { id: 'neox', label: '604 MB f16 GPT-NeoX (24 layers), r=1 on query_key_value (24)', tensors: nx, targets: modulesOf(nx, ['query_key_value']), targetModules: ['query_key_value'], r: 1, alpha: 2 },
  ];
  return quick ? all.filter((s) => s.id === 'neox') : all;
}

/** The base file: every tensor from one random f16 pattern, its first element set to its index so that tensors differ. */
function writeBase(file: string, tensors: Tensor[], pattern: Uint16Array): number {
  const plan = planSafetensors(tensors.map((t) => ({ name: t.name, dtype: 'F16', shape: t.shape })));
  const fd = openSync(file, 'w');
  writeSync(fd, plan.header);
  plan.order.forEach((t, i) => {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const data = pattern.slice(0, n);
    data[0] = i;
    writeSync(fd, new Uint8Array(data.buffer));
  });
  closeSync(fd);
  return statSync(file).size;
}

/** Runs argv, returning its wall time and its peak RSS in KiB (from /usr/bin/time, else VmHWM polled). */
async function timed(argv: string[]): Promise<{ ms: number; rssKb: number }> {
  const hasTime = existsSync('/usr/bin/time');
  const cmd = hasTime ? ['/usr/bin/time', '-f', 'MAXRSS %M', ...argv] : argv;
  const t = performance.now();
  const child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  let hwm = 0;
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const poll = hasTime ? undefined : setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) hwm = Math.max(hwm, Number(m[1]));
    } catch { /* exited */ }
  }, 20);
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  const ms = performance.now() - t;
  if (poll) clearInterval(poll);
  if (code !== 0) throw new Error(`${argv.slice(0, 3).join(' ')} … failed (exit ${code}): ${stderr.trim()}`);
  const rss = /MAXRSS (\d+)/.exec(stderr);
  return { ms, rssKb: rss ? Number(rss[1]) : hwm };
}

/**
 * cp, cp && sync and the CLI merge of `basePath`, interleaved and repeated (3 times after a warm-up merge;
 * once with --quick), each starting with nothing of the others left to flush. The last run is a merge,
 * whose output stays at `out`.
 */
async function timeAgainstCopies(ctx: Ctx, dir: string, basePath: string, adapterDir: string, out: string) {
  const cli = path.resolve('bin/lora-wasm.mjs');
  const runs = {
    cp: () => timed(['cp', basePath, out]),
    cpSync: () => timed(['sh', '-c', 'cp "$0" "$1" && sync "$1"', basePath, out]),
    merge: () => timed([process.execPath, '--experimental-wasm-relaxed-simd', cli, 'merge', '--base', basePath, '--adapter', adapterDir, '--out', out, '--quiet']),
  };
  const times: Record<keyof typeof runs, number[]> = { cp: [], cpSync: [], merge: [] };
  let rssKb = 0;
  rmSync(out, { force: true });
  if (!ctx.quick) await runs.merge(); // warm the page cache (base, adapter, the CLI's code)
  for (let rep = 0; rep < (ctx.quick ? 1 : 3); rep++) {
    for (const k of ['cp', 'cpSync', 'merge'] as const) {
      rmSync(out, { force: true });
      spawnSync('sync', [dir]);
      const r = await runs[k]();
      times[k].push(r.ms);
      if (k === 'merge') rssKb = Math.max(rssKb, r.rssKb);
    }
  }
  return { times, rssKb };
}

async function runScenario(ctx: Ctx, dir: string, sc: Scenario, pattern: Uint16Array): Promise<void> {
  const lw = ctx.builds.at(-1)!;
  const basePath = path.join(dir, `${sc.id}.safetensors`);
  const size = writeBase(basePath, sc.tensors, pattern);
  const shapes = new Map(sc.tensors.map((t) => [t.name, t.shape]));
  // adapter: PEFT keys and layout, F32 as PEFT saves it
  const tensors: { name: string; dtype: string; shape: number[]; data: Uint8Array }[] = [];
  const factors = new Map<string, { a: Float32Array; b: Float32Array }>();
  sc.targets.forEach((n, i) => {
    const [dOut, dIn] = shapes.get(`${n}.weight`) as [number, number];
    const la = random(sc.r * dIn, 100 + i, 0.02), lb = random(dOut * sc.r, 200 + i, 0.02);
    factors.set(n, { a: la, b: lb });
    tensors.push({ name: `base_model.model.${n}.lora_A.weight`, dtype: 'F32', shape: [sc.r, dIn], data: new Uint8Array(la.buffer) });
    tensors.push({ name: `base_model.model.${n}.lora_B.weight`, dtype: 'F32', shape: [dOut, sc.r], data: new Uint8Array(lb.buffer) });
  });
  const adapterDir = path.join(dir, `${sc.id}-adapter`);
  mkdirSync(adapterDir);
  writeFileSync(path.join(adapterDir, 'adapter_model.safetensors'), encodeSafetensors(tensors, { format: 'pt' }));
  writeFileSync(path.join(adapterDir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: sc.r, lora_alpha: sc.alpha, target_modules: sc.targetModules, base_model_name_or_path: 'generated' }));

  const out = path.join(dir, `${sc.id}-out.safetensors`);
  const { times, rssKb } = await timeAgainstCopies(ctx, dir, basePath, adapterDir, out);
  // the last run was a merge: check its output
  const reader = await SafetensorsReader.open(await fileSource(out));
  const base = await SafetensorsReader.open(await fileSource(basePath));
  const adapted = new Set(sc.targets);
  const untouched = sc.tensors.filter((t) => !adapted.has(t.name.slice(0, -'.weight'.length)));
  for (const t of [...untouched.slice(0, 2), ...untouched.slice(-1)]) {
    const [x, y] = [(await reader.read(t.name)).bytes, (await base.read(t.name)).bytes];
    if (x.length !== y.length || x.some((v, i) => v !== y[i])) throw new Error(`cli merge (${sc.id}): ${t.name} is not adapted but changed; refusing to report its speed`);
  }
  for (const n of [sc.targets[0]!, sc.targets.at(-1)!]) {
    const [dOut, dIn] = shapes.get(`${n}.weight`) as [number, number];
    const half = async (rd: SafetensorsReader) => lw.matrix(dOut, dIn, new Uint16Array((await rd.read(`${n}.weight`)).bytes.slice().buffer), { dtype: 'f16' });
    const [gotM, w0M] = [await half(reader), await half(base)];
    const [got, w0] = [gotM.toFloat32(), w0M.toFloat32()];
    gotM.dispose();
    w0M.dispose();
    const { a, b } = factors.get(n)!;
    const want = rankElement(w0, b, a, dOut, sc.r, dIn, sc.alpha / sc.r);
    for (const [i, j] of [[0, 0], [1, dIn - 1], [dOut >> 1, 77], [dOut - 1, dIn - 1]] as const) {
      const e = want(i, j);
      if (!(Math.abs(got[i * dIn + j]! - e.value) <= halfUlp(e.value, 'f16') * 1.0001 + 40 * 2 ** -24 * e.mag)) {
        throw new Error(`cli merge (${sc.id}): ${n}.weight[${i}, ${j}] is ${got[i * dIn + j]} but float64 gives ${e.value}; refusing to report its speed`);
      }
    }
  }
  await reader.close();
  await base.close();

  const [cp, cpSync, merge] = [median(times.cp), median(times.cpSync), median(times.merge)];
  const flops = sc.targets.reduce((s, n) => {
    const [dOut, dIn] = shapes.get(`${n}.weight`) as [number, number];
    return s + 2 * sc.r * dOut * dIn;
  }, 0);
  const row = { group: 'cli merge', shape: sc.label, flops: 0, bytes: 2 * size };
  ctx.rows.push({ ...row, name: 'cp && sync <file> (fsync\'d, as the merge)', by: 'copy', ms: cpSync });
  ctx.rows.push({ ...row, name: 'cp (left in the page cache)', by: 'cp', ms: cp });
  ctx.rows.push({ ...row, name: 'lora-wasm merge (CLI)', by: 'lora-wasm', build: lw.build, ms: merge, flops, rssMiB: rssKb / 1024 });
  ctx.notes.push(`cli merge, ${sc.label}: ${(merge / 1e3).toFixed(2)} s = ${(merge / cpSync).toFixed(2)}× cp && sync (${(cpSync / 1e3).toFixed(2)} s), ${(merge / cp).toFixed(2)}× cp (${(cp / 1e3).toFixed(2)} s); `
    + `${mb(size, merge)} of ${(size / 1e6).toFixed(0)} MB (cp && sync ${mb(size, cpSync)}, cp ${mb(size, cp)}); `
    + `peak RSS of the merge process ${(rssKb / 1024).toFixed(0)} MiB; ${ctx.quick ? 'one run of each' : `medians of ${times.merge.length} interleaved runs after a warm-up`}`);
  if (!process.env.LORA_BENCH_CLI_KEEP) for (const f of [basePath, out, adapterDir]) rmSync(f, { recursive: true, force: true });
}

/**
 * A llama-shaped GGUF model (2 layers × attn_q, attn_k, attn_v, attn_output [4096, 4096]) in F16 (268 MB)
 * or Q4_K (75 MB: blocks of random nibbles and sub-scales under finite f16 super-scales), a rank-16 PEFT
 * adapter on q_proj and v_proj (4 tensors: F16 merged and rounded once; Q4_K dequantized, merged in
 * float64 and requantized with ggml's reference quantizer), merged by the CLI against cp and cp && sync.
 */
async function runGgufScenario(ctx: Ctx, dir: string, type: 'F16' | 'Q4_K', pattern: Uint16Array): Promise<void> {
  const d = 4096, layers = 2, r = 16;
  const names = Array.from({ length: layers }, (_, l) => ['attn_q', 'attn_k', 'attn_v', 'attn_output'].map((m) => `blk.${l}.${m}.weight`)).flat();
  const metadata = [
    { key: 'general.architecture', type: 'STRING' as const, value: 'llama' }, { key: 'llama.block_count', type: 'UINT32' as const, value: layers },
    { key: 'llama.embedding_length', type: 'UINT32' as const, value: d }, { key: 'llama.attention.head_count', type: 'UINT32' as const, value: 32 },
    { key: 'llama.attention.head_count_kv', type: 'UINT32' as const, value: 32 },
  ];
  const plan = planGguf({ metadata, tensors: names.map((name) => ({ name, type, shape: [d, d] })) });
  const basePath = path.join(dir, `${type}.gguf`);
  const fd = openSync(basePath, 'w');
  let at = 0;
  const q4k = new Uint8Array(d * d / 256 * 144);
  for (let b = 0; b < q4k.length; b += 144) {
    q4k[b] = 0x19; q4k[b + 1] = 0x14; // d = 0.001 (f16 0x1419)
    q4k[b + 2] = 0x19; q4k[b + 3] = 0x10; // dmin
    for (let i = 4; i < 144; i++) q4k[b + i] = (b * 31 + i * 7) & 0xff;
  }
  await writeGguf(plan, { write: (bytes) => { writeSync(fd, bytes, 0, bytes.length, at); at += bytes.length; } }, () => (type === 'F16' ? pattern : q4k));
  closeSync(fd);
  const size = statSync(basePath).size;
  const tensors: { name: string; dtype: string; shape: number[]; data: Uint8Array }[] = [];
  for (let l = 0; l < layers; l++) {
    for (const m of ['q_proj', 'v_proj']) {
      const la = random(r * d, 300 + l, 0.02), lb = random(d * r, 400 + l, 0.02);
      tensors.push({ name: `base_model.model.model.layers.${l}.self_attn.${m}.lora_A.weight`, dtype: 'F32', shape: [r, d], data: new Uint8Array(la.buffer) });
      tensors.push({ name: `base_model.model.model.layers.${l}.self_attn.${m}.lora_B.weight`, dtype: 'F32', shape: [d, r], data: new Uint8Array(lb.buffer) });
    }
  }
  const adapterDir = path.join(dir, `${type}-adapter`);
  mkdirSync(adapterDir);
  writeFileSync(path.join(adapterDir, 'adapter_model.safetensors'), encodeSafetensors(tensors, { format: 'pt' }));
  writeFileSync(path.join(adapterDir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r, lora_alpha: 32, target_modules: ['q_proj', 'v_proj'] }));
  const out = path.join(dir, `${type}-out.gguf`);
  const { times, rssKb } = await timeAgainstCopies(ctx, dir, basePath, adapterDir, out);
  // the last run was a merge: its header and untouched tensors are the input's, its targets changed and kept their type
  const [a, b] = [await GgufReader.open(await fileSource(basePath)), await GgufReader.open(await fileSource(out))];
  const same = async (n: string) => Buffer.from(await a.read(n)).equals(Buffer.from(await b.read(n)));
  if (!Buffer.from(await a.headerBytes()).equals(Buffer.from(await b.headerBytes())) || !(await same('blk.0.attn_k.weight')) || (await same('blk.1.attn_v.weight')) || b.get('blk.1.attn_v.weight')!.typeName !== type) {
    throw new Error(`cli merge (GGUF ${type}): the output's header, untouched or merged tensors are not as they should be; refusing to report its speed`);
  }
  await a.close();
  await b.close();
  const [cp, cpSync, merge] = [median(times.cp), median(times.cpSync), median(times.merge)];
  const label = `GGUF ${type}, ${(size / 1e6).toFixed(0)} MB, 8 × [4096, 4096], r=16 on attn_q, attn_v (4)`;
  const row = { group: 'cli merge', shape: label, flops: 0, bytes: 2 * size };
  ctx.rows.push({ ...row, name: 'cp && sync <file> (fsync\'d, as the merge)', by: 'copy', ms: cpSync });
  ctx.rows.push({ ...row, name: 'cp (left in the page cache)', by: 'cp', ms: cp });
  ctx.rows.push({ ...row, name: 'lora-wasm merge (CLI)', by: 'lora-wasm', build: ctx.builds.at(-1)!.build, ms: merge, flops: 4 * 2 * r * d * d, rssMiB: rssKb / 1024 });
  ctx.notes.push(`cli merge, ${label}: ${(merge / 1e3).toFixed(2)} s, ${mb(size, merge)} of ${(size / 1e6).toFixed(0)} MB = ${(merge / cpSync).toFixed(2)}× cp && sync (${(cpSync / 1e3).toFixed(2)} s, ${mb(size, cpSync)}), ${(merge / cp).toFixed(2)}× cp (${(cp / 1e3).toFixed(2)} s); peak RSS ${(rssKb / 1024).toFixed(0)} MiB`);
  if (!process.env.LORA_BENCH_CLI_KEEP) for (const f of [basePath, out, adapterDir]) rmSync(f, { recursive: true, force: true });
}

export async function benchCli(ctx: Ctx): Promise<void> {
  const lw = ctx.builds.at(-1)!;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lora-wasm-cli-bench-'));
  try {
    const m = lw.matrix(4096, 4096, random(4096 * 4096, 51, 0.05), { dtype: 'f16' });
    const pattern = m.toArray();
    m.dispose();
    for (const sc of scenarios(ctx.quick)) await runScenario(ctx, dir, sc, pattern);
    for (const type of ctx.quick ? (['Q4_K'] as const) : (['F16', 'Q4_K'] as const)) await runGgufScenario(ctx, dir, type, pattern);
  } finally {
    // LORA_BENCH_CLI_KEEP=1 keeps the generated base and adapter, to profile the CLI on them
    if (process.env.LORA_BENCH_CLI_KEEP) console.log(`kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}
