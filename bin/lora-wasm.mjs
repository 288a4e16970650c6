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
import { tensorData } from '../dist/io/safetensors.js';

const USAGE = `usage:
  lora-wasm inspect <adapter dir | adapter .safetensors | model .safetensors>
  lora-wasm merge --base <model.safetensors | model.safetensors.index.json | model dir>
                  --adapter <adapter dir | .safetensors> --out <file | dir>
                  [--multiplier 1] [--dtype keep|f32|f16|bf16] [--prefix P] [--safe] [--force] [--quiet]`;

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

const DT = { F32: 'f32', F16: 'f16', BF16: 'bf16' };
const ST = { f32: 'F32', f16: 'F16', bf16: 'BF16' };
const as2d = (shape) => (shape.length === 0 ? [1, 1] : shape.length === 1 ? [1, shape[0]] : [shape[0], shape.slice(1).reduce((a, b) => a * b, 1)]);

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

  const lw = await init();
  const adapter = await lw.loadAdapter({ weights: af.weights, config: af.config });
  const readers = await openAll(files);
  const where = new Map();
  for (const r of readers) for (const t of r.tensors) where.set(t.name, { reader: r, info: t });
  // plan: every module's target and every replacement, checked before anything is written
  const { targetOf, checkTargetShape } = await import('../dist/io/adapter.js');
  const prefix = values.prefix ?? '';
  const names = new Set(where.keys());
  const modulesAt = new Map();
  for (const m of adapter.modules) {
    const target = targetOf(m, adapter.format, names, prefix);
    const { info } = where.get(target);
    if (!DT[info.dtype]) throw new LoRAError(`${target} is ${info.dtype}; lora-wasm merges into F32, F16 and BF16 weights`);
    checkTargetShape(m, target, as2d(info.shape));
    modulesAt.set(target, [...(modulesAt.get(target) ?? []), m]);
    if (m.biasDelta) throw new LoRAError(`module ${m.name} has lora_bias; merge it with lw.mergeAdapter (the CLI does not yet stream bias deltas)`);
  }
  const replaceAt = new Map();
  for (const r of adapter.replacements) {
    const name = prefix + r.name;
    const hit = where.get(name);
    if (!hit) throw new LoRAError(`the adapter replaces "${name}" but the base model has no such tensor`);
    if (hit.info.shape.reduce((a, b) => a * b, 1) !== r.shape.reduce((a, b) => a * b, 1)) throw new LoRAError(`"${name}" is [${hit.info.shape}] in the base but [${r.shape}] in the adapter`);
    replaceAt.set(name, r);
  }
  const outDtype = (d) => (dtype === 'keep' || !DT[d] ? d : ST[dtype]);

  if (sharded) mkdirSync(outDir, { recursive: true });
  const totalBytes = readers.reduce((s, r) => s + r.tensors.reduce((a, t) => a + t.end - t.begin, 0), 0);
  const totalTensors = readers.reduce((s, r) => s + r.tensors.length, 0);
  const bar = values.quiet ? undefined : new cliProgress.SingleBar({
    format: 'merge |{bar}| {percentage}% | {value}/{total} tensors | {done} of {size}',
    stream: process.stderr, hideCursor: true, noTTYOutput: false,
  }, cliProgress.Presets.shades_classic);
  bar?.start(totalTensors, 0, { done: fmtBytes(0), size: fmtBytes(totalBytes) });
  const opened = [];
  let doneBytes = 0;
  let merged = 0;
  let peakWasm = 0;
  const weightMap = {};
  try {
    for (let f = 0; f < readers.length; f++) {
      const reader = readers[f];
      const plan = planSafetensors(reader.tensors.map((t) => ({ ...t, dtype: outDtype(t.dtype) })), reader.metadata);
      const out = await atomicFile(outputs[f], true);
      opened.push(out);
      await out.write(plan.header);
      // a pipeline: the next tensor is read while this one is merged, and each result is written
      // while the next is computed (writes stay in order); at most three tensors are in flight
      let pendingWrite = Promise.resolve();
      const handled = (p) => (p?.catch(() => {}), p); // a failed run must not leave an unhandled rejection behind
      let nextRead = handled(plan.order.length ? reader.read(plan.order[0].name) : undefined);
      for (let i = 0; i < plan.order.length; i++) {
        const t = plan.order[i];
        const src = reader.get(t.name);
        const { bytes } = await nextRead;
        nextRead = handled(i + 1 < plan.order.length ? reader.read(plan.order[i + 1].name) : undefined);
        const mods = modulesAt.get(t.name);
        const rep = replaceAt.get(t.name);
        let outBytes = bytes; // untouched and same dtype: byte for byte
        if (mods || rep || t.dtype !== src.dtype) {
          const [rows, cols] = as2d(src.shape);
          const W = lw.matrix(rows, cols, tensorData(reader.file, { info: src, bytes }), { dtype: DT[src.dtype] });
          try {
            for (const m of mods ?? []) {
              lw.merge(W, m.A, m.B, { scale: multiplier * m.scale, safe: Boolean(values.safe) });
              merged++;
            }
            if (rep) lw.convert(W, rep.tensor.rows === W.rows ? rep.tensor : { rows, cols, data: rep.tensor.data, ...(rep.tensor.dtype === 'f32' ? {} : { dtype: rep.tensor.dtype }) });
            let res = W;
            if (DT[t.dtype] !== W.dtype) {
              res = lw.matrix(rows, cols, undefined, { dtype: DT[t.dtype] });
              lw.convert(res, W);
            }
            const view = res.data;
            outBytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice(); // off wasm memory: later calls may grow it
            if (res !== W) res.dispose();
          } finally {
            W.dispose();
          }
          peakWasm = Math.max(peakWasm, lw.memoryStats().memoryBytes);
        }
        await pendingWrite;
        pendingWrite = handled(out.write(outBytes));
        doneBytes += src.end - src.begin;
        weightMap[t.name] = path.basename(outputs[f]);
        bar?.increment(1, { done: fmtBytes(doneBytes) });
      }
      await pendingWrite;
    }
    if (sharded) {
      const idx = await atomicFile(path.join(outDir, path.basename(index.path)), true);
      opened.push(idx);
      const totalSize = readers.reduce((s, r) => s + r.tensors.reduce((a, t) => a + (t.end - t.begin) * (outDtype(t.dtype) === t.dtype ? 1 : (outDtype(t.dtype) === 'F32' ? 4 : 2) / (t.dtype === 'F32' ? 4 : 2)), 0), 0);
      await idx.write(new TextEncoder().encode(`${JSON.stringify({ metadata: { ...(index.json.metadata ?? {}), total_size: totalSize }, weight_map: weightMap }, null, 2)}\n`));
    }
    for (const o of opened) await o.commit();
  } catch (e) {
    for (const o of opened) await o.abort();
    throw e;
  } finally {
    bar?.stop();
    for (const r of readers) await r.close();
    adapter.dispose();
  }
  say(`merged ${merged} modules and replaced ${replaceAt.size} tensors into ${sharded ? `${outputs.length} shards in ${outDir}` : values.out} (${fmtBytes(doneBytes)}; wasm memory peaked at ${fmtBytes(peakWasm)})`);
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
