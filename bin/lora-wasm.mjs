#!/usr/bin/env node
// lora-wasm command line: inspect adapters and models, merge an adapter into a base model.
//
//   lora-wasm inspect <adapter dir | adapter .safetensors | model .safetensors>
//   lora-wasm merge --base <model.safetensors | model.safetensors.index.json | model dir>
//                   --adapter <adapter dir | .safetensors> --out <file | dir for a sharded base>
//                   [--multiplier 1] [--dtype keep|f32|f16|bf16] [--prefix P] [--safe] [--force] [--quiet]
//
// merge streams tensor by tensor: each base tensor is read at its offset, merged in wasm memory (or
// copied byte for byte when the adapter does not touch it and its dtype stays), and written; peak
// memory stays near the largest tensor. Outputs are written to a temp file beside the target, fsynced
// and renamed, so a failed run leaves nothing behind. Exit codes: 0 done, 1 error, 2 usage.
import { existsSync, mkdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { LoRAError, SafetensorsReader, atomicFile, fileSource, init, planSafetensors } from '../dist/index.js';

const USAGE = `usage:
  lora-wasm inspect <adapter dir | adapter .safetensors | model .safetensors>
  lora-wasm merge --base <model.safetensors | model.safetensors.index.json | model dir>
                  --adapter <adapter dir | .safetensors> --out <file | dir>
                  [--multiplier 1] [--dtype keep|f32|f16|bf16] [--prefix P] [--safe] [--force] [--quiet]
                  [--threads auto|N]   (default auto: every core, at most 8)`;

class UsageError extends Error {}
const say = (line) => process.stdout.write(`${line}\n`);
const fmtBytes = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);
const exists = (p) => existsSync(p);
const isDir = (p) => exists(p) && statSync(p).isDirectory();

/** The adapter's files: { weights: path, config?: parsed JSON }. */
function adapterFiles(p) {
  if (!exists(p)) throw new UsageError(`--adapter ${p}: no such file or folder`);
  if (isDir(p)) {
    const weights = path.join(p, 'adapter_model.safetensors');
    if (!exists(weights)) throw new LoRAError(`${p}: no adapter_model.safetensors in this folder (a PEFT adapter folder has it beside adapter_config.json)`);
    const cfg = path.join(p, 'adapter_config.json');
    return { weights, config: exists(cfg) ? readFileSync(cfg, 'utf8') : undefined };
  }
  const cfg = path.join(path.dirname(p), 'adapter_config.json');
  return { weights: p, config: exists(cfg) ? readFileSync(cfg, 'utf8') : undefined };
}

/** The base model's shard files (one, or those of a model.safetensors.index.json). */
function baseFiles(p) {
  if (!exists(p)) throw new UsageError(`--base ${p}: no such file or folder`);
  let index = p.endsWith('.index.json') ? p : undefined;
  if (isDir(p)) {
    const single = path.join(p, 'model.safetensors');
    const idx = path.join(p, 'model.safetensors.index.json');
    if (exists(idx)) index = idx;
    else if (exists(single)) return { files: [single], index: undefined };
    else throw new LoRAError(`${p}: no model.safetensors or model.safetensors.index.json in this folder`);
  }
  if (!index) return { files: [p], index: undefined };
  let json;
  try {
    json = JSON.parse(readFileSync(index, 'utf8'));
  } catch (e) {
    throw new LoRAError(`${index}: not valid JSON (${e.message})`);
  }
  if (!json || typeof json.weight_map !== 'object') throw new LoRAError(`${index}: no "weight_map" object; is this a safetensors index?`);
  const dir = path.dirname(index);
  const shards = [...new Set(Object.values(json.weight_map))];
  for (const s of shards) {
    if (typeof s !== 'string' || s.includes('/') || s.includes('\\')) throw new LoRAError(`${index}: bad shard name ${JSON.stringify(s)}`);
  }
  return { files: shards.map((s) => path.join(dir, s)), index: { path: index, json } };
}

async function openAll(files) {
  const readers = [];
  try {
    for (const f of files) readers.push(await SafetensorsReader.open(await fileSource(f)));
  } catch (e) {
    for (const r of readers) await r.close();
    throw e;
  }
  return readers;
}

async function inspect(target) {
  if (!target) throw new UsageError('inspect needs a path');
  const lw = await init();
  const isAdapter = isDir(target) || exists(path.join(path.dirname(target), 'adapter_config.json'));
  const [reader] = await openAll([isDir(target) ? adapterFiles(target).weights : target]);
  const kindOf = (names) => (names.some((n) => /lora_(down|up)\.weight$/.test(n)) ? 'kohya' : names.some((n) => /\.lora_(A|B|embedding_A|embedding_B)/.test(n)) ? 'peft' : 'model');
  const kind = kindOf(reader.tensors.map((t) => t.name));
  const bytes = reader.tensors.reduce((s, t) => s + t.end - t.begin, 0);
  const dtypes = [...new Set(reader.tensors.map((t) => t.dtype))].join(', ');
  say(`${target}: ${reader.tensors.length} tensors, ${fmtBytes(bytes)}, dtypes ${dtypes}${Object.keys(reader.metadata).length ? `, metadata ${JSON.stringify(reader.metadata)}` : ''}`);
  if (kind === 'model' && !isAdapter) {
    for (const t of reader.tensors) say(`  ${t.name}  ${t.dtype}  [${t.shape.join(', ')}]`);
    await reader.close();
    return;
  }
  const files = isDir(target) ? adapterFiles(target) : { config: adapterFiles(target).config };
  const adapter = await lw.loadAdapter({ weights: reader, config: files.config });
  await reader.close();
  const c = adapter.config;
  if (adapter.format === 'peft') {
    say(`PEFT LoRA adapter for ${c.base_model_name_or_path ?? '(base model not named)'}; task ${c.task_type ?? '-'}; r ${c.r}, lora_alpha ${c.lora_alpha}${c.use_rslora ? ', rsLoRA' : ''}${c.fan_in_fan_out ? ', fan_in_fan_out' : ''}`);
  } else say('kohya / sd-scripts LoRA');
  say(`${adapter.modules.length} modules, ${adapter.parameters.toLocaleString('en-US')} parameters; ${adapter.replacements.length} tensors replace base tensors`);
  say('  module  kind  r  alpha  scale  ΔW shape  dtype');
  for (const m of adapter.modules) say(`  ${m.name}  ${m.kind}  ${m.r}  ${m.alpha}  ${+m.scale.toPrecision(6)}  [${m.A.rows}, ${m.B.cols}]  ${m.A.dtype}`);
  for (const r of adapter.replacements) say(`  ${r.name}  replaces the base tensor  [${r.shape.join(', ')}]  ${r.tensor.dtype}`);
  adapter.dispose();
}

const ITEM = { F32: 4, F16: 2, BF16: 2, f32: 4, f16: 2, bf16: 2 };

async function merge(values) {
  for (const k of ['base', 'adapter', 'out']) if (!values[k]) throw new UsageError(`merge needs --${k}`);
  const multiplier = Number(values.multiplier ?? 1);
  if (!Number.isFinite(multiplier)) throw new UsageError(`--multiplier must be a number, got ${values.multiplier}`);
  const dtype = values.dtype ?? 'keep';
  if (!['keep', 'f32', 'f16', 'bf16'].includes(dtype)) throw new UsageError(`--dtype must be keep, f32, f16 or bf16, got ${dtype}`);
  const { files, index } = baseFiles(values.base);
  const af = adapterFiles(values.adapter);
  const sharded = index !== undefined;
  const outDir = sharded ? values.out : undefined;
  if (sharded && exists(values.out) && !isDir(values.out)) throw new UsageError(`--out ${values.out}: a sharded base is written to a folder`);
  const outputs = sharded ? files.map((f) => path.join(outDir, path.basename(f))) : [values.out];
  const inputs = new Set([...files, af.weights, ...(index ? [index.path] : [])].map((f) => realpathSync(f)));
  for (const o of [...outputs, ...(sharded ? [path.join(outDir, path.basename(index.path))] : [])]) {
    const real = exists(o) ? realpathSync(o) : path.resolve(o);
    if (inputs.has(real)) throw new LoRAError(`${o} is one of the inputs; choose another --out (the input is never overwritten)`);
    if (exists(o) && !values.force) throw new LoRAError(`${o} exists; pass --force to replace it`);
  }

  const threadsArg = values.threads ?? 'auto';
  const threads = threadsArg === 'auto' ? 'auto' : Number(threadsArg);
  if (threads !== 'auto' && !(Number.isInteger(threads) && threads >= 1)) throw new UsageError(`--threads must be auto or a whole number ≥ 1, got ${threadsArg}`);
  const lw = await init({ threads });
  const adapter = await lw.loadAdapter({ weights: af.weights, config: af.config });
  const readers = await openAll(files);
  if (sharded) mkdirSync(outDir, { recursive: true });
  const totalTensors = readers.reduce((s, r) => s + r.tensors.length, 0);
  const bar = values.quiet ? undefined : new cliProgress.SingleBar({
    format: 'merge |{bar}| {percentage}% | {value}/{total} tensors | {done} of {size}',
    stream: process.stderr, hideCursor: true, noTTYOutput: false,
  }, cliProgress.Presets.shades_classic);
  bar?.start(totalTensors, 0, { done: fmtBytes(0), size: '' });
  const opened = [];
  try {
    for (const o of outputs) opened.push(await atomicFile(o, true));
    const report = await lw.mergeAdapterFiles({
      base: readers, adapter, sink: (f) => opened[f], dtype, multiplier, prefix: values.prefix ?? '', safe: Boolean(values.safe),
      onProgress: (p) => bar?.update(p.tensors, { done: fmtBytes(p.bytes), size: fmtBytes(p.totalBytes) }),
    });
    if (sharded) {
      const idx = await atomicFile(path.join(outDir, path.basename(index.path)), true);
      opened.push(idx);
      const weightMap = Object.fromEntries(Object.entries(report.weightMap).map(([name, f]) => [name, path.basename(outputs[f])]));
      // total_size: the data bytes of every shard as written (float tensors in the output dtype)
      const totalSize = readers.flatMap((r) => r.tensors).reduce((a, t) => a + (t.end - t.begin) / (dtype !== 'keep' && ITEM[t.dtype] ? ITEM[t.dtype] / ITEM[dtype] : 1), 0);
      await idx.write(new TextEncoder().encode(`${JSON.stringify({ metadata: { ...(index.json.metadata ?? {}), total_size: totalSize }, weight_map: weightMap }, null, 2)}\n`));
    }
    for (const o of opened) await o.commit();
    bar?.stop();
    say(`merged ${report.merged} modules and replaced ${report.replaced} tensors into ${sharded ? `${outputs.length} shards in ${outDir}` : values.out} (${fmtBytes(report.bytes)}; wasm memory peaked at ${fmtBytes(report.peakWasmBytes)})`);
  } catch (e) {
    bar?.stop();
    for (const o of opened) await o.abort();
    throw e;
  } finally {
    for (const r of readers) await r.close();
    adapter.dispose();
  }
}

async function main() {
  const [command, ...rest] = process.argv.slice(2);
  if (!command || command === '--help' || command === '-h') {
    say(USAGE);
    return command ? 0 : 2;
  }
  if (command === 'inspect') {
    await inspect(rest[0]);
    return 0;
  }
  if (command === 'merge') {
    let parsed;
    try {
      parsed = parseArgs({ args: rest, options: {
        base: { type: 'string' }, adapter: { type: 'string' }, out: { type: 'string' }, multiplier: { type: 'string' },
        dtype: { type: 'string' }, prefix: { type: 'string' }, safe: { type: 'boolean' }, force: { type: 'boolean' }, quiet: { type: 'boolean' },
        threads: { type: 'string' },
      } });
    } catch (e) {
      throw new UsageError(e.message);
    }
    await merge(parsed.values);
    return 0;
  }
  throw new UsageError(`unknown command "${command}"`);
}

main().then((code) => process.exit(code), (e) => {
  if (e instanceof UsageError) {
    process.stderr.write(`lora-wasm: ${e.message}\n${USAGE}\n`);
    process.exit(2);
  }
  const known = e instanceof LoRAError || e?.code === 'ENOENT' || e?.code === 'EACCES';
  process.stderr.write(`lora-wasm: ${known ? e.message : `unexpected error: ${e?.stack ?? e}`}\n`);
  process.exit(1);
});
