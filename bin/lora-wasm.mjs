#!/usr/bin/env node
// lora-wasm command line: inspect adapters and models, merge an adapter into a base model.
//
//   lora-wasm inspect <adapter dir | adapter .safetensors | model .safetensors | model or adapter .gguf>
//   lora-wasm merge --base <model.safetensors | model.safetensors.index.json | model dir | model.gguf>
//                   --adapter <adapter dir | .safetensors | llama.cpp adapter .gguf> --out <file | dir for a sharded base>
//                   [--multiplier 1] [--dtype keep|f32|f16|bf16 (GGUF: also q8_0)] [--prefix P] [--safe] [--force] [--quiet]
//   lora-wasm convert --adapter <PEFT adapter dir> --base <model.gguf> --out <adapter.gguf> [--dtype f32|f16] [--prefix P] [--force]
//   lora-wasm convert --adapter <PEFT dir> --out <kohya.safetensors> | --adapter <kohya file> --base <model> --out <PEFT dir>
//   lora-wasm convert --adapter <PEFT DoRA dir> --base <model> --rank k | --energy e --out <PEFT dir>   (DoRA → plain LoRA)
//   lora-wasm extract --base <model> --tuned <model> --rank k | --energy e [--modules REGEX] --out <PEFT dir>
//   lora-wasm resize --adapter <dir> --rank k | --energy e --out <dir>
//   lora-wasm combine <dir> <dir> … --weights w1,w2 --method M [--rank k] [--density d] [--seed n] --out <dir>
//
// merge streams tensor by tensor: each base tensor is read at its offset, merged in wasm memory (or
// copied byte for byte when the adapter does not touch it and its dtype stays), and written; peak
// memory stays near the largest tensor.
//
// Nothing is lost:
// - every input (the adapter's weights and adapter_config.json, each base shard, the index) is refused
//   as --out, also through a symlink, and a sharded --out folder may not hold any input;
// - the output is written under a hidden temp name beside --out (a temp folder for a sharded base) and
//   appears only when complete: a failed run leaves nothing at --out; without --force nothing is ever
//   replaced, not even a file that appeared during the run (two runs to one --out: one fails);
// - SIGINT, SIGTERM and SIGHUP remove the unfinished output and end the process by that signal (status 130,
//   143, 129); temps left by a
//   killed run (their pid is in the name) are removed by the next run to the same --out.
// Exit codes: 0 done, 1 error, 2 usage.
import './launch.mjs'; // first: turns relaxed SIMD on (Node 20) before any wasm is compiled
import { closeSync, existsSync, lstatSync, openSync, readFileSync, readSync, readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { GgufReader, LoRAError, LoRAFormatError, LoRARangeError, SafetensorsReader, fileSource, init, planGgufAdapter, writeGgufAdapter } from '../dist/index.js';
// the atomic writers (the folder writer and the temp bookkeeping are not in the public API)
import { abortOpenTempsSync, atomicFile, atomicFolder, clearStaleTemps } from '../dist/io/node-file.js';
// the streamed extract and the kohya ⇄ PEFT renames (src/adapters/extract-files.ts, convert-kohya.ts)
import { Adapter } from '../dist/adapters/adapter.js';
import { KOHYA_PREFIXES, encodeKohyaAdapter, kohyaToPeft } from '../dist/adapters/convert-kohya.js';
import { extractAdapterFiles, planExtract } from '../dist/adapters/extract-files.js';
import { DTYPE_OF_ST } from '../dist/io/safetensors.js';
import { ITEM_BYTES } from '../dist/memory/dtype.js';
import { formatBytes } from '../dist/memory/heap.js';

const USAGE = `usage:
  lora-wasm inspect <adapter dir | adapter .safetensors | model .safetensors | model or adapter .gguf>
  lora-wasm merge --base <model.safetensors | model.safetensors.index.json | model dir | model.gguf>
                  --adapter <adapter dir | .safetensors | llama.cpp adapter .gguf> --out <file | dir>
                  [--multiplier 1] [--dtype keep|f32|f16|bf16] [--prefix P] [--safe] [--force] [--quiet]
                  [--threads auto|N]   (default auto: every core, at most 8)
  lora-wasm convert --adapter <PEFT adapter dir> --base <model.gguf> --out <adapter.gguf>
                  [--dtype f32|f16] [--prefix P] [--force] [--quiet]
  lora-wasm convert --adapter <PEFT adapter dir> --out <kohya.safetensors> [--kohya-prefix lora_te|lora_te1|lora_te2|lora_unet]
  lora-wasm convert --adapter <kohya .safetensors> --base <model.safetensors | index | model dir> --out <PEFT dir> [--prefix P]
                  kohya ⇄ PEFT: PEFT module text_model.encoder.layers.0.self_attn.q_proj is kohya's
                  lora_te_text_model_encoder_layers_0_self_attn_q_proj (lora_down = lora_A, lora_up = lora_B,
                  alpha = scale·r); back, the one base tensor whose name with . as _ is the kohya name
  lora-wasm convert --adapter <PEFT DoRA dir> --base <model.safetensors | index | model dir> --rank k | --energy e --out <PEFT dir>
                  [--prefix P] [--seed n]   DoRA → plain LoRA: each DoRA module's W′ − W (W′ = m/‖W + s·A·B‖ ⊙ (W + s·A·B))
                  by a randomized SVD, reading only the base tensors the DoRA modules change; other modules copied
  lora-wasm extract --base <model> --tuned <model> --rank k | --energy e [--modules REGEX] [--seed n] --out <PEFT dir>
                  a PEFT adapter from a fine-tune, module by module (2-D float <module>.weight tensors;
                  --modules searches module names; modules whose difference is zero are skipped)
  lora-wasm resize --adapter <adapter dir | kohya .safetensors> --rank k | --energy e --out <PEFT dir | kohya .safetensors>
  lora-wasm combine <adapter> <adapter> … --weights w1,w2,… --method cat|linear|svd|ties|dare_linear|dare_ties|magnitude_prune
                  [--rank k (svd, ties, dare_*, magnitude_prune)] [--density d (ties, dare_*, magnitude_prune: required)]
                  [--seed n (ties, dare_*, magnitude_prune)] --out <PEFT dir | kohya .safetensors>
  --rank/--energy the rank kept per module, or the fewest singular values keeping that fraction of ‖ΔW‖²
  --dtype        merge: the output type of float tensors (safetensors) or of merged 2-D tensors (GGUF,
                 which also takes q8_0; keep requantizes each to its own type); convert: the factors' type
  --multiplier   a finite number whose f32 is not 0 or ±Inf; negative as --multiplier -1 or --multiplier=-1;
                 0 is allowed (with a note): the LoRA modules then change nothing
  --out          never an input; the output appears only when complete (a sharded base: a folder, all at once)
  --force        replace an existing --out (a folder only if it holds nothing but .safetensors files and an index)
  --quiet        no progress bar and no notes on stderr; the one-line summary still goes to stdout`;

class UsageError extends Error {}
/** A mistake in the command (a path, --out): exit 1, one line. */
class CliError extends Error {}
/** Control characters from hostile names (ESC sequences, NUL, newlines) are shown escaped, never sent to the terminal. */
const printable = (s) => String(s).replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
// a reader that stops early (\`| head\`) ends the output, not the process with a stack trace
process.stdout.on('error', (e) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});
const say = (line) => process.stdout.write(`${printable(line).replaceAll('\\u000a', '\n')}\n`);
const note = (line) => process.stderr.write(`lora-wasm: ${printable(line)}\n`);
/** A text file that must be UTF-8 (invalid bytes are a LoRAFormatError, not replaced silently). */
function readUtf8(file) {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(readFileSync(file));
  } catch (e) {
    if (e instanceof TypeError) throw new LoRAFormatError(`${file}: not valid UTF-8`);
    throw e;
  }
}
const exists = (p) => existsSync(p);
const lexists = (p) => { try { lstatSync(p); return true; } catch { return false; } };
const isDir = (p) => exists(p) && statSync(p).isDirectory();
const isFile = (p) => exists(p) && statSync(p).isFile();
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

/** A path argument: a NUL byte cannot be in any file name (Node would throw a TypeError deep inside). */
function checkPath(flag, p) {
  if (p.includes('\0')) throw new CliError(`${flag} ${JSON.stringify(p)}: a path cannot contain a NUL byte`);
  return p;
}

/** True when p is a file whose first four bytes are GGUF's magic. */
function isGgufFile(p) {
  if (!isFile(p)) return false;
  const fd = openSync(p, 'r');
  let gguf;
  try {
    const b = Buffer.alloc(4);
    gguf = readSync(fd, b, 0, 4, 0) === 4 && b.toString('latin1') === 'GGUF';
  } finally {
    closeSync(fd);
  }
  // a .gguf name on another file: say so, rather than reading it as safetensors
  if (!gguf && p.toLowerCase().endsWith('.gguf')) throw new LoRAFormatError(`${p}: not a GGUF file (it does not start with the magic "GGUF")`);
  return gguf;
}

/** The adapter's files: { weights: path, configPath, config?: its text } (a llama.cpp adapter .gguf: no config). */
function adapterFiles(p) {
  if (!exists(p)) throw new UsageError(`--adapter ${p}: no such file or folder`);
  if (isGgufFile(p)) return { weights: p, configPath: undefined, config: undefined, gguf: true };
  const weights = isDir(p) ? path.join(p, 'adapter_model.safetensors') : p;
  if (isDir(p) && !exists(weights)) throw new LoRAFormatError(`${p}: no adapter_model.safetensors in this folder (a PEFT adapter folder has it beside adapter_config.json)`);
  const configPath = path.join(path.dirname(weights), 'adapter_config.json');
  return { weights, configPath, config: exists(configPath) ? readUtf8(configPath) : undefined };
}

/** The base model's shard files (one, or those of a model.safetensors.index.json, checked). */
function baseFiles(p) {
  if (!exists(p)) throw new UsageError(`--base ${p}: no such file or folder`);
  let index = p.endsWith('.index.json') ? p : undefined;
  if (isDir(p)) {
    const single = path.join(p, 'model.safetensors');
    const idx = path.join(p, 'model.safetensors.index.json');
    if (exists(idx)) index = idx;
    else if (exists(single)) return { files: [single], index: undefined };
    else throw new LoRAFormatError(`${p}: no model.safetensors or model.safetensors.index.json in this folder`);
  }
  if (!index) return { files: [p], index: undefined };
  let json;
  try {
    json = JSON.parse(readUtf8(index));
  } catch (e) {
    throw new LoRAFormatError(`${index}: not valid JSON (${e.message})`);
  }
  if (!isObject(json) || !isObject(json.weight_map)) throw new LoRAFormatError(`${index}: no "weight_map" object; is this a safetensors index?`);
  if (json.metadata !== undefined && !isObject(json.metadata)) throw new LoRAFormatError(`${index}: "metadata" must be an object, got ${JSON.stringify(json.metadata)}`);
  const entries = Object.entries(json.weight_map);
  if (!entries.length) throw new LoRAFormatError(`${index}: "weight_map" is empty; it should name the shard of every tensor`);
  const indexName = path.basename(index);
  for (const [name, s] of entries) {
    if (typeof s !== 'string') throw new LoRAFormatError(`${index}: weight_map[${JSON.stringify(name)}] must be a shard file name (a string), got ${JSON.stringify(s)}`);
    if (s === '' || s === '.' || s === '..' || /[/\\\0]/.test(s) || s === indexName) {
      throw new LoRAFormatError(`${index}: bad shard name ${JSON.stringify(s)} for ${JSON.stringify(name)}; a shard is a file in the index's folder`);
    }
  }
  const dir = path.dirname(index);
  const shards = [...new Set(entries.map(([, s]) => s))];
  for (const s of shards) if (!isFile(path.join(dir, s))) throw new LoRAFormatError(`${index}: weight_map names the shard ${s}, but there is no file ${path.join(dir, s)}`);
  return { files: shards.map((s) => path.join(dir, s)), index: { path: index, json, shards } };
}

/** The index agrees with the shards' headers: each tensor is stored once, in the shard the index names. */
function checkIndex(index, readers) {
  const storedIn = new Map();
  index.shards.forEach((shard, i) => {
    for (const t of readers[i].tensors) {
      const prev = storedIn.get(t.name);
      if (prev !== undefined) throw new LoRAFormatError(`${index.path}: tensor ${JSON.stringify(t.name)} is stored in two shards, ${prev} and ${shard}`);
      storedIn.set(t.name, shard);
    }
  });
  for (const [name, shard] of Object.entries(index.json.weight_map)) {
    const at = storedIn.get(name);
    if (at === undefined) throw new LoRAFormatError(`${index.path}: weight_map puts tensor ${JSON.stringify(name)} in ${shard}, but no shard stores it`);
    if (at !== shard) throw new LoRAFormatError(`${index.path}: weight_map puts tensor ${JSON.stringify(name)} in ${shard}, but it is stored in ${at}`);
  }
}

/** Where p leads: its real path if it exists (a dangling link: the link), else its real folder + name. */
function realish(p) {
  if (lexists(p)) {
    try {
      return realpathSync(p);
    } catch {
      return path.resolve(path.dirname(p), readlinkSync(p));
    }
  }
  return path.join(realpathSync(path.dirname(path.resolve(p))), path.basename(p));
}

/**
 * --out is checked before any work: its folder exists, it is a file for a single-file base and a folder
 * for a sharded one, it replaces nothing without --force, and it is no input and holds none.
 */
function checkOut(out, { sharded, force, inputs, adapterFolder = false, file = 'model.safetensors' }) {
  const parent = path.dirname(path.resolve(out));
  if (!exists(parent)) throw new CliError(`--out ${out}: the folder ${path.dirname(out)} does not exist; create it first`);
  if (!isDir(parent)) throw new CliError(`--out ${out}: ${path.dirname(out)} is not a folder`);
  const there = lexists(out);
  if (adapterFolder) sharded = true; // a folder, written whole and swapped in whole
  if (sharded && there && !isDir(out) && !adapterFolder) throw new UsageError(`--out ${out}: ${adapterFolder ? 'a PEFT adapter is written to a folder (adapter_model.safetensors + adapter_config.json)' : 'a sharded base is written to a folder'}`);
  if (!sharded && isDir(out)) throw new CliError(`--out ${out} is a folder, but ${file === 'model.safetensors' ? 'a single-file base is merged into one file' : 'the output is one file'}; name it, e.g. --out ${path.join(out, file)}`);
  const targets = new Set([path.resolve(out), realish(out)]);
  const outStat = there && exists(out) ? statSync(out) : undefined;
  for (const { what, file } of inputs) {
    const st = exists(file) ? statSync(file) : undefined;
    const same = outStat && st && outStat.dev === st.dev && outStat.ino === st.ino; // a hard link, or a case-insensitive name
    for (const f of new Set([path.resolve(file), realish(file)])) {
      for (const t of targets) {
        if (f === t || same) throw new CliError(`--out ${out} is one of the inputs (${what}); choose another --out: inputs are never overwritten`);
        if (sharded && f.startsWith(t + path.sep)) throw new CliError(`--out ${out} holds one of the inputs (${what}: ${file}); choose another --out: the output folder is replaced as a whole`);
      }
    }
  }
  if (adapterFolder && there && !isDir(out)) throw new UsageError(`--out ${out}: a PEFT adapter is written to a folder (adapter_model.safetensors + adapter_config.json)`);
  if (there && !force) throw new CliError(`${out} exists; pass --force to replace it`);
  if (adapterFolder && there) {
    const foreign = readdirSync(out).filter((e) => !(ADAPTER_FILES.includes(e) && isFile(path.join(out, e))));
    if (foreign.length) {
      throw new CliError(`--out ${out} holds ${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ` and ${foreign.length - 3} more` : ''}, not a PEFT adapter's files; --force replaces the whole folder, so it only replaces a folder of ${ADAPTER_FILES.join(', ')}`);
    }
  } else if (sharded && there) {
    const foreign = readdirSync(out).filter((e) => !((e.endsWith('.safetensors') || e.endsWith('.index.json')) && isFile(path.join(out, e))));
    if (foreign.length) {
      throw new CliError(`--out ${out} holds ${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ` and ${foreign.length - 3} more` : ''}, not model shards; --force replaces the whole folder, so it only replaces a folder of .safetensors files and their index`);
    }
  }
}

/** What a PEFT adapter folder written by this CLI may hold (so --force may replace it). */
const ADAPTER_FILES = ['adapter_model.safetensors', 'adapter_config.json', 'README.md'];

/** The multiplier as the merge will use it: a finite number whose f32 is not 0 (unless it is 0) or ±Inf. */
function parseMultiplier(raw) {
  if (raw === undefined) return 1;
  if (raw.trim() === '') throw new UsageError('--multiplier needs a number, got an empty string');
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(raw)) throw new UsageError(`--multiplier must be a finite decimal number such as 0.5, -1 or 1e-3, got ${raw}`);
  const m = Number(raw);
  if (!Number.isFinite(m)) throw new UsageError(`--multiplier must be a finite number, got ${raw}`);
  const f = Math.fround(m);
  if (m !== 0 && f === 0) throw new UsageError(`--multiplier ${raw} rounds to 0 in f32 (the merge computes in f32); the smallest nonzero magnitude is about 1.4e-45`);
  if (!Number.isFinite(f)) throw new UsageError(`--multiplier ${raw} rounds to ${f} in f32; the largest f32 is about 3.4e38`);
  return m;
}

/** parseArgs reads `--multiplier -1` as two flags: a value after --multiplier that parses as a number is its value. */
function joinNumbers(args) {
  const seen = new Set();
  for (const a of args) {
    const flag = a.startsWith('--') ? a.slice(2).split('=')[0] : undefined;
    if (flag && seen.has(flag)) throw new UsageError(`--${flag} is given twice; give it once`);
    if (flag) seen.add(flag);
  }
  const out = [];
  for (let i = 0; i < args.length; i++) {
    const next = args[i + 1];
    const numeric = args[i] === '--multiplier' ? [next] : args[i] === '--weights' ? next?.split(',') ?? [] : [];
    if (next?.startsWith('-') && numeric.length && numeric.every((x) => x.trim() !== '' && !Number.isNaN(Number(x)))) {
      out.push(`${args[i]}=${next}`);
      i++;
    } else out.push(args[i]);
  }
  return out;
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

/** A GGUF model (architecture, tensors by type, size, each tensor) or a llama.cpp adapter (its modules). */
async function inspectGguf(lw, target) {
  const reader = await GgufReader.open(await fileSource(target));
  try {
    const v = (k) => reader.value(k);
    const arch = v('general.architecture');
    const bytes = reader.tensors.reduce((a, t) => a + t.size, 0);
    const byType = new Map();
    for (const t of reader.tensors) byType.set(t.typeName, (byType.get(t.typeName) ?? 0) + 1);
    const types = [...byType].sort((a, b) => b[1] - a[1]).map(([t, n]) => `${t} ×${n}`).join(', ');
    say(`${target}: GGUF v${reader.version}, ${reader.tensors.length} tensors, ${formatBytes(bytes)}, types ${types}; ${reader.metadata.length} metadata keys, alignment ${reader.alignment}`);
    if (v('general.type') === 'adapter') {
      const adapter = await lw.loadAdapter({ weights: reader });
      try {
        say(`llama.cpp ${v('adapter.type') ?? 'LoRA'} adapter for architecture ${arch ?? '(not named)'}; adapter.lora.alpha ${v('adapter.lora.alpha') ?? '(none: scale 1)'}`);
        say(`${adapter.modules.length} modules, ${adapter.parameters.toLocaleString('en-US')} parameters`);
        say('  module  kind  r  alpha  scale  ΔW shape  dtype');
        for (const m of adapter.modules) say(`  ${m.name}  ${m.kind}  ${m.r}  ${m.alpha}  ${+m.scale.toPrecision(6)}  [${m.A.rows}, ${m.B.cols}]  ${m.A.dtype}`);
      } finally {
        adapter.dispose();
      }
      return;
    }
    const hp = ['block_count', 'context_length', 'embedding_length', 'feed_forward_length', 'attention.head_count', 'attention.head_count_kv', 'vocab_size']
      .map((k) => [k, v(`${arch}.${k}`)]).filter(([, x]) => x !== undefined).map(([k, x]) => `${k} ${x}`);
    say(`model: ${v('general.name') ?? '(unnamed)'}, architecture ${arch ?? '(not named)'}${hp.length ? `; ${hp.join(', ')}` : ''}`);
    for (const t of reader.tensors) say(`  ${t.name}  ${t.typeName}  [${t.shape.join(', ')}]`);
  } finally {
    await reader.close();
  }
}

async function inspect(target) {
  if (!target) throw new UsageError('inspect needs a path');
  checkPath('inspect', target);
  const lw = await init();
  if (isGgufFile(target)) return inspectGguf(lw, target);
  const isAdapter = isDir(target) || exists(path.join(path.dirname(target), 'adapter_config.json'));
  const [reader] = await openAll([isDir(target) ? adapterFiles(target).weights : target]);
  const kindOf = (names) => (names.some((n) => /lora_(down|up)\.weight$/.test(n)) ? 'kohya' : names.some((n) => /\.lora_(A|B|embedding_A|embedding_B)/.test(n)) ? 'peft' : 'model');
  const kind = kindOf(reader.tensors.map((t) => t.name));
  const bytes = reader.tensors.reduce((s, t) => s + t.end - t.begin, 0);
  const dtypes = [...new Set(reader.tensors.map((t) => t.dtype))].join(', ');
  say(`${target}: ${reader.tensors.length} tensors, ${formatBytes(bytes)}, dtypes ${dtypes}${Object.keys(reader.metadata).length ? `, metadata ${JSON.stringify(reader.metadata)}` : ''}`);
  if (kind === 'model' && !isAdapter) {
    for (const t of reader.tensors) say(`  ${t.name}  ${t.dtype}  [${t.shape.join(', ')}]`);
    await reader.close();
    return;
  }
  const files = isDir(target) ? adapterFiles(target) : { config: adapterFiles(target).config };
  const adapter = await lw.loadAdapter({ weights: reader, config: files.config });
  await reader.close();
  const c = adapter.config;
  const dora = adapter.modules.some((m) => m.magnitude);
  if (adapter.format === 'peft') {
    say(`PEFT ${dora ? 'DoRA' : 'LoRA'} adapter for ${c.base_model_name_or_path ?? '(base model not named)'}; task ${c.task_type ?? '-'}; r ${c.r}, lora_alpha ${c.lora_alpha}${c.use_rslora ? ', rsLoRA' : ''}${c.fan_in_fan_out ? ', fan_in_fan_out' : ''}`);
  } else say(`kohya / sd-scripts ${dora ? 'LoRA with DoRA (dora_scale)' : 'LoRA'}`);
  say(`${adapter.modules.length} modules, ${adapter.parameters.toLocaleString('en-US')} parameters; ${adapter.replacements.length} tensors replace base tensors`);
  say('  module  kind  r  alpha  scale  ΔW shape  dtype');
  for (const m of adapter.modules) say(`  ${m.name}  ${m.kind}  ${m.r}  ${m.alpha}  ${+m.scale.toPrecision(6)}  [${m.A.rows}, ${m.B.cols}]  ${m.A.dtype}`);
  if (dora) {
    say(`DoRA: W′ = m / ‖W + s·A·B‖ ⊙ (W + s·A·B), merged only with multiplier 1; ${adapter.modules.filter((m) => m.magnitude).length} of ${adapter.modules.length} modules carry a magnitude`);
    say('  module  magnitude length  min  max  norms over');
    for (const m of adapter.modules) {
      if (!m.magnitude) continue;
      const v = m.magnitude.toFloat32();
      let lo = Infinity, hi = -Infinity;
      for (const x of v) { if (x < lo) lo = x; if (x > hi) hi = x; }
      say(`  ${m.name}  ${v.length}  ${+lo.toPrecision(6)}  ${+hi.toPrecision(6)}  ${m.magnitudeAxis === 'cols' ? 'columns of W as stored' : 'rows of W as stored'}`);
    }
  }
  for (const r of adapter.replacements) say(`  ${r.name}  replaces the base tensor  [${r.shape.join(', ')}]  ${r.tensor.dtype}`);
  adapter.dispose();
}

/** The progress bar, if one is showing: a signal handler stops it before its line. */
let bar;

async function merge(values) {
  for (const k of ['base', 'adapter', 'out']) if (values[k] === undefined) throw new UsageError(`merge needs --${k}`);
  for (const k of ['base', 'adapter', 'out']) checkPath(`--${k}`, values[k]);
  const multiplier = parseMultiplier(values.multiplier);
  const gguf = isGgufFile(values.base);
  const dtype = values.dtype ?? 'keep';
  const dtypes = gguf ? ['keep', 'f32', 'f16', 'bf16', 'q8_0'] : ['keep', 'f32', 'f16', 'bf16'];
  if (!dtypes.includes(dtype)) throw new UsageError(`--dtype must be ${dtypes.slice(0, -1).join(', ')} or ${dtypes.at(-1)}${gguf ? '' : ' (q8_0 is for GGUF bases)'}, got ${dtype}`);
  const threadsArg = values.threads ?? 'auto';
  const threads = threadsArg === 'auto' ? 'auto' : Number(threadsArg);
  if (threads !== 'auto' && !(Number.isInteger(threads) && threads >= 1)) throw new UsageError(`--threads must be auto or a whole number ≥ 1, got ${threadsArg}`);
  const { files, index } = gguf ? { files: [values.base], index: undefined } : baseFiles(values.base);
  const af = adapterFiles(values.adapter);
  const sharded = index !== undefined;
  const out = values.out;
  const force = Boolean(values.force);
  const inputs = [
    { what: 'the adapter\'s weights', file: af.weights },
    ...(af.configPath ? [{ what: 'the adapter\'s adapter_config.json', file: af.configPath }] : []),
    ...files.map((f) => ({ what: sharded ? `the base shard ${path.basename(f)}` : 'the base model', file: f })),
    ...(index ? [{ what: 'the base model\'s index', file: index.path }] : []),
  ];
  const target = path.resolve(out); // the writers' path ('.' or 'dir/' name no folder of their own)
  const cleared = await clearStaleTemps(target); // first: a forced replace cut short is put back before --out is checked
  if (cleared.length && !values.quiet) note(`cleared what a stopped run left beside --out: ${cleared.join(', ')}`);
  checkOut(out, { sharded, force, inputs });
  if (multiplier === 0) note('--multiplier 0: the LoRA modules change nothing (replaced tensors and --dtype still apply)');

  const lw = await init({ threads });
  const adapter = await lw.loadAdapter({ weights: af.weights, config: af.config });
  let readers = [];
  const opened = [];
  let folder;
  try {
    for (const m of adapter.modules) {
      const s = Math.fround(multiplier * m.scale);
      if (multiplier !== 0 && (s === 0 || !Number.isFinite(s))) throw new LoRARangeError(`--multiplier ${values.multiplier ?? 1} times the scale ${m.scale} of module "${m.name}" rounds to ${s} in f32`);
    }
    readers = gguf ? [await GgufReader.open(await fileSource(files[0]))] : await openAll(files);
    if (sharded) checkIndex(index, readers);
    const totalTensors = readers.reduce((s, r) => s + r.tensors.length, 0);
    if (sharded) {
      folder = await atomicFolder(target, force);
      for (const f of files) opened.push(await folder.file(path.basename(f)));
    } else opened.push(await atomicFile(target, force));
    bar = values.quiet ? undefined : new cliProgress.SingleBar({
      format: 'merge |{bar}| {percentage}% | {value}/{total} tensors | {done} of {size}',
      stream: process.stderr, hideCursor: true, noTTYOutput: false,
    }, cliProgress.Presets.shades_classic);
    bar?.start(totalTensors, 0, { done: formatBytes(0), size: '' });
    const report = await lw.mergeAdapterFiles({
      base: gguf ? readers[0] : readers, adapter, sink: (f) => opened[f], dtype, multiplier, prefix: values.prefix ?? '', safe: Boolean(values.safe),
      onProgress: (p) => bar?.update(p.tensors, { done: formatBytes(p.bytes), size: formatBytes(p.totalBytes) }),
    });
    if (sharded) {
      const idx = await folder.file(path.basename(index.path));
      opened.push(idx);
      const weightMap = Object.fromEntries(Object.entries(report.weightMap).map(([name, f]) => [name, path.basename(files[f])]));
      // total_size: the data bytes of every shard as written (float tensors in the output dtype)
      const totalSize = readers.flatMap((r) => r.tensors).reduce((a, t) => a + (t.end - t.begin) / (dtype !== 'keep' && DTYPE_OF_ST[t.dtype] ? ITEM_BYTES[DTYPE_OF_ST[t.dtype]] / ITEM_BYTES[dtype] : 1), 0);
      await idx.write(new TextEncoder().encode(`${JSON.stringify({ metadata: { ...(index.json.metadata ?? {}), total_size: totalSize }, weight_map: weightMap }, null, 2)}\n`));
    }
    for (const o of opened) await o.commit(); // a sharded output's files are committed inside its temp folder
    await folder?.commit(); // ... which then appears at --out whole
    bar?.stop();
    bar = undefined;
    const written = sharded ? readdirSync(out).reduce((s, f) => s + statSync(path.join(out, f)).size, 0) : statSync(out).size;
    say(`merged ${report.merged} modules and replaced ${report.replaced} tensors into ${sharded ? `${files.length} shards in ${out}` : out} (${formatBytes(written)} written from ${formatBytes(report.bytes)} of tensors; wasm memory peaked at ${formatBytes(report.peakWasmBytes)})`);
  } catch (e) {
    bar?.stop();
    bar = undefined;
    for (const o of opened) await o.abort();
    await folder?.abort();
    throw e;
  } finally {
    for (const r of readers) await r.close();
    adapter.dispose();
  }
}

/** A PEFT adapter as a llama.cpp LoRA adapter for the GGUF model --base (names, row order and scales folded). */
async function convertGguf(values) {
  for (const k of ['base', 'adapter', 'out']) if (values[k] === undefined) throw new UsageError(`convert needs --${k}`);
  for (const k of ['base', 'adapter', 'out']) checkPath(`--${k}`, values[k]);
  const dtype = values.dtype ?? 'f32';
  if (!['f32', 'f16'].includes(dtype)) throw new UsageError(`--dtype for convert must be f32 or f16, got ${dtype}`);
  if (!isGgufFile(values.base)) throw new CliError(`--base ${values.base}: not a GGUF model; convert writes a llama.cpp adapter for the GGUF model it will run on`);
  const af = adapterFiles(values.adapter);
  if (af.gguf) throw new CliError(`--adapter ${values.adapter} is already a llama.cpp adapter`);
  const force = Boolean(values.force);
  const target = path.resolve(values.out);
  await clearStaleTemps(target);
  checkOut(values.out, {
    sharded: false, force,
    inputs: [{ what: 'the adapter\'s weights', file: af.weights }, ...(af.configPath ? [{ what: 'the adapter\'s adapter_config.json', file: af.configPath }] : []), { what: 'the base model', file: values.base }],
  });
  const lw = await init();
  const adapter = await lw.loadAdapter({ weights: af.weights, config: af.config });
  const base = await GgufReader.open(await fileSource(values.base));
  let file;
  try {
    const plan = planGgufAdapter(adapter, base, { dtype, prefix: values.prefix ?? '' });
    file = await atomicFile(target, force);
    await writeGgufAdapter(plan, file, lw);
    await file.commit();
    file = undefined;
    const folded = plan.modules.filter((m) => m.fold !== 1);
    say(`converted ${plan.modules.length} modules into ${values.out} (adapter.lora.alpha ${plan.alpha}, ${dtype}${folded.length ? `; ${folded.length} modules' scales folded into lora_b: ${folded.slice(0, 3).map((m) => m.module.name).join(', ')}${folded.length > 3 ? ', …' : ''}` : ''})`);
  } catch (e) {
    await file?.abort();
    throw e;
  } finally {
    await base.close();
    adapter.dispose();
  }
}

// ---------------------------------------------------------------- the adapter algebra: extract, resize, combine

/** A whole number ≥ 1 (--rank). */
function parseCount(flag, raw) {
  if (raw === undefined) return undefined;
  if (!/^\d+$/.test(raw) || Number(raw) < 1 || !Number.isSafeInteger(Number(raw))) throw new UsageError(`${flag} must be a whole number ≥ 1, got ${raw}`);
  return Number(raw);
}
/** A fraction in (0, 1] (--energy, --density). */
function parseFraction(flag, raw) {
  if (raw === undefined) return undefined;
  const x = /^([01]?\.\d+|[01]|[01]\.0*|\d*\.?\d+[eE][+-]?\d+)$/.test(raw) ? Number(raw) : NaN;
  if (!(x > 0 && x <= 1)) throw new UsageError(`${flag} must be a fraction in (0, 1], such as 0.9, got ${raw}`);
  return x;
}
/** --seed: a whole number in [0, 2³² − 1]. */
function parseSeed(raw) {
  if (raw === undefined) return undefined;
  if (!/^\d+$/.test(raw) || Number(raw) > 2 ** 32 - 1) throw new UsageError(`--seed must be a whole number in [0, 4294967295], got ${raw}`);
  return Number(raw);
}
/** Exactly one of --rank k and --energy e. */
function rankOrEnergy(command, values) {
  const rank = parseCount('--rank', values.rank);
  const energy = parseFraction('--energy', values.energy);
  if ((rank === undefined) === (energy === undefined)) throw new UsageError(`${command} needs exactly one of --rank k (a whole number) and --energy e (the fraction of ‖ΔW‖² to keep, e.g. 0.9)`);
  return rank !== undefined ? { rank } : { energy };
}

/** A progress bar on stderr (none with --quiet); the signal handler stops it. */
function startBar(quiet, label, total, unit) {
  if (quiet) return undefined;
  bar = new cliProgress.SingleBar({
    format: `${label} |{bar}| {percentage}% | {value}/{total} ${unit} | {what}`,
    stream: process.stderr, hideCursor: true, noTTYOutput: false,
  }, cliProgress.Presets.shades_classic);
  bar.start(total, 0, { what: '' });
  return bar;
}
function stopBar() {
  bar?.stop();
  bar = undefined;
}

/** The inputs of an adapter (for checkOut), from adapterFiles(). */
const adapterInputs = (af, what = 'the adapter') => [
  { what: `${what}'s weights`, file: af.weights },
  ...(af.configPath && exists(af.configPath) ? [{ what: `${what}'s adapter_config.json`, file: af.configPath }] : []),
];
/** The inputs of a model (for checkOut), from baseFiles(). */
const modelInputs = ({ files, index }, what) => [
  ...files.map((f) => ({ what: index ? `the ${what} shard ${path.basename(f)}` : `the ${what}`, file: f })),
  ...(index ? [{ what: `the ${what}'s index`, file: index.path }] : []),
];

/** An adapter the algebra can take: PEFT or kohya, without lora_bias (a bias is not low-rank). */
async function loadForAlgebra(lw, flag, p) {
  const af = adapterFiles(p);
  if (af.gguf) throw new CliError(`${flag} ${p} is a llama.cpp adapter; resize and combine read PEFT and kohya adapters`);
  const adapter = await lw.loadAdapter({ weights: af.weights, config: af.config });
  const biased = adapter.modules.find((m) => m.biasDelta);
  if (biased) {
    adapter.dispose();
    throw new CliError(`${flag} ${p}: module "${biased.name}" has a lora_bias, which is not low-rank; resize and combine do not carry it`);
  }
  return { af, adapter };
}

/**
 * Writes an adapter at --out: a PEFT folder (adapter_model.safetensors + adapter_config.json, through
 * lw.saveAdapter) or a kohya file, atomically. Returns nothing; aborts its temp on failure.
 */
async function writeAdapter(lw, adapter, { out, force, kohya, baseModel, taskType, kohyaPrefix }) {
  const target = path.resolve(out);
  if (kohya) {
    const bytes = encodeKohyaAdapter(adapter, kohyaPrefix ? { prefix: kohyaPrefix } : {});
    const file = await atomicFile(target, force);
    try {
      await file.write(bytes);
      await file.commit();
    } catch (e) {
      await file.abort();
      throw e;
    }
    return;
  }
  const { config, weights } = lw.saveAdapter(adapter, { baseModel: baseModel ?? '', taskType: taskType ?? null });
  const folder = await atomicFolder(target, force);
  const opened = [];
  try {
    const w = await folder.file('adapter_model.safetensors');
    opened.push(w);
    await w.write(weights);
    const c = await folder.file('adapter_config.json');
    opened.push(c);
    await c.write(new TextEncoder().encode(`${JSON.stringify(config, null, 2)}\n`));
    for (const f of opened) await f.commit();
    await folder.commit();
  } catch (e) {
    for (const f of opened) await f.abort();
    await folder.abort();
    throw e;
  }
}

/** --out for an adapter: a folder for PEFT, a .safetensors file for kohya; stale temps cleared first. */
async function prepareOut(values, { kohya, inputs }) {
  const target = path.resolve(values.out);
  const cleared = await clearStaleTemps(target);
  if (cleared.length && !values.quiet) note(`cleared what a stopped run left beside --out: ${cleared.join(', ')}`);
  checkOut(values.out, { sharded: false, adapterFolder: !kohya, file: 'adapter.safetensors', force: Boolean(values.force), inputs });
}

const summaryRanks = (mods) => {
  const ranks = mods.map((m) => m.rank ?? m.r);
  const lo = Math.min(...ranks);
  const hi = Math.max(...ranks);
  return lo === hi ? `rank ${lo}` : `ranks ${lo}–${hi}`;
};

/** extract --base A --tuned B --rank k | --energy e [--modules regex] --out DIR: a PEFT adapter from a fine-tune. */
async function extract(values) {
  for (const k of ['base', 'tuned', 'out']) if (values[k] === undefined) throw new UsageError(`extract needs --${k}`);
  for (const k of ['base', 'tuned', 'out']) checkPath(`--${k}`, values[k]);
  const choice = rankOrEnergy('extract', values);
  const seed = parseSeed(values.seed);
  let modules;
  if (values.modules !== undefined) {
    try {
      modules = new RegExp(values.modules);
    } catch (e) {
      throw new UsageError(`--modules must be a regular expression (searched in each module name, e.g. 'q_proj|v_proj'): ${e.message}`);
    }
  }
  for (const k of ['base', 'tuned']) if (isGgufFile(values[k])) throw new CliError(`--${k} ${values[k]} is a GGUF model; extract reads safetensors models (one file or its shards)`);
  const base = baseFiles(values.base);
  let tuned;
  try {
    tuned = baseFiles(values.tuned);
  } catch (e) {
    if (e instanceof UsageError) throw new UsageError(e.message.replace('--base', '--tuned'));
    throw e;
  }
  await prepareOut(values, { kohya: false, inputs: [...modelInputs(base, 'base model'), ...modelInputs(tuned, 'tuned model')] });
  const lw = await init();
  const readers = [];
  let result;
  try {
    const b = await openAll(base.files);
    readers.push(...b);
    if (base.index) checkIndex(base.index, b);
    const t = await openAll(tuned.files);
    readers.push(...t);
    if (tuned.index) checkIndex(tuned.index, t);
    const total = planExtract(b, t, modules).length;
    startBar(values.quiet, 'extract', total, 'modules');
    result = await extractAdapterFiles(lw, { base: b, tuned: t, ...choice, modules, seed, onProgress: (p) => bar?.update(p.done, { what: p.module }) });
    await writeAdapter(lw, result.adapter, { out: values.out, force: Boolean(values.force), baseModel: values.base });
    stopBar();
  } catch (e) {
    stopBar();
    throw e;
  } finally {
    for (const r of readers) await r.close();
    result?.adapter.dispose();
  }
  if (!values.quiet) {
    if (result.zero.length) note(`skipped ${result.zero.length} modules whose difference is zero: ${result.zero.slice(0, 5).join(', ')}${result.zero.length > 5 ? ', …' : ''}`);
    if (result.clamped.length) note(`--rank ${choice.rank} exceeds min(out, in) of ${result.clamped.length} modules; they keep their full rank: ${result.clamped.slice(0, 3).map((c) => `${c.name} (${c.rank})`).join(', ')}${result.clamped.length > 3 ? ', …' : ''}`);
  }
  const energy = Math.min(...result.modules.map((m) => m.energy));
  say(`extracted ${result.modules.length} modules (${summaryRanks(result.modules)}; the least kept energy ${energy.toFixed(4)}) into ${values.out}${result.zero.length ? `; skipped ${result.zero.length} with zero difference` : ''}`);
}

/** resize --adapter DIR --rank k | --energy e --out DIR: each module truncated from its factors (lw.resizeAdapter). */
async function resize(values) {
  for (const k of ['adapter', 'out']) if (values[k] === undefined) throw new UsageError(`resize needs --${k}`);
  for (const k of ['adapter', 'out']) checkPath(`--${k}`, values[k]);
  const choice = rankOrEnergy('resize', values);
  const lw = await init();
  const { af, adapter } = await loadForAlgebra(lw, '--adapter', values.adapter);
  const kohya = adapter.format === 'kohya';
  const made = [];
  try {
    await prepareOut(values, { kohya, inputs: adapterInputs(af) });
    startBar(values.quiet, 'resize', adapter.modules.length, 'modules');
    const reports = [];
    // module by module (each module's truncation is its own): the bar moves, and the result is lw.resizeAdapter's
    for (const m of adapter.modules) {
      const one = lw.resizeAdapter(new Adapter(adapter.format, [m], [], adapter.config), choice);
      made.push(one.adapter);
      reports.push(one.modules[0]);
      bar?.increment(1, { what: m.name });
    }
    const modules = made.flatMap((a) => a.modules);
    const out = kohya ? new Adapter('kohya', modules, [], {}) : new Adapter('peft', modules, [...adapter.replacements], adapter.config);
    await writeAdapter(lw, out, { out: values.out, force: Boolean(values.force), kohya, baseModel: adapter.config.base_model_name_or_path, taskType: adapter.config.task_type });
    stopBar();
    const before = adapter.modules.reduce((s, m) => s + m.r, 0) / adapter.modules.length;
    say(`resized ${reports.length} modules (${summaryRanks(reports)}, mean r ${before.toFixed(1)} before; the least kept energy ${Math.min(...reports.map((r) => r.energy)).toFixed(4)}) into ${values.out}${adapter.replacements.length ? `; ${adapter.replacements.length} modules_to_save tensors carried over` : ''}`);
  } catch (e) {
    stopBar();
    throw e;
  } finally {
    for (const a of made) a.dispose();
    adapter.dispose();
  }
}

const COMBINE_METHODS = ['cat', 'linear', 'svd', 'ties', 'dare_linear', 'dare_ties', 'magnitude_prune'];
const PRUNED_METHODS = ['ties', 'dare_linear', 'dare_ties', 'magnitude_prune'];
/** Which combine methods take each option (combine.ts APPLIES); density is required by the pruned ones. */
const COMBINE_OPTIONS = { rank: ['svd', ...PRUNED_METHODS], density: PRUNED_METHODS, seed: PRUNED_METHODS };

/** combine DIR_1 DIR_2 … --weights w1,w2,… --method M [--rank k] [--density d] [--seed n] --out DIR (lw.combineAdapters). */
async function combine(values, dirs) {
  if (dirs.length === 0) throw new UsageError('combine needs the adapters to combine: combine DIR_1 DIR_2 … --weights w1,w2,… --method M --out DIR');
  for (const k of ['weights', 'method', 'out']) if (values[k] === undefined) throw new UsageError(`combine needs --${k}`);
  for (const d of dirs) checkPath('combine', d);
  checkPath('--out', values.out);
  const method = values.method;
  if (!COMBINE_METHODS.includes(method)) throw new UsageError(`--method must be one of ${COMBINE_METHODS.join(', ')}, got ${method}`);
  for (const [k, methods] of Object.entries(COMBINE_OPTIONS)) {
    if (values[k] !== undefined && !methods.includes(method)) throw new UsageError(`--${k} applies to ${methods.join(', ')}, not --method ${method}`);
  }
  if (PRUNED_METHODS.includes(method) && values.density === undefined) throw new UsageError(`--method ${method} needs --density d (the fraction of each ΔW kept, in (0, 1])`);
  const weights = values.weights.split(',').map((w) => {
    if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(w.trim()) || !Number.isFinite(Number(w))) throw new UsageError(`--weights must be finite decimal numbers separated by commas, such as 0.7,0.3, got ${values.weights}`);
    return Number(w);
  });
  if (weights.length !== dirs.length) throw new UsageError(`--weights has ${weights.length} values for ${dirs.length} adapters; give one weight per adapter`);
  const opts = { method, rank: parseCount('--rank', values.rank), density: parseFraction('--density', values.density), seed: parseSeed(values.seed) };
  for (const k of Object.keys(opts)) if (opts[k] === undefined) delete opts[k];
  const lw = await init();
  const loaded = [];
  let combined;
  try {
    for (const [i, d] of dirs.entries()) loaded.push(await loadForAlgebra(lw, `adapter ${i + 1}`, d));
    const formats = [...new Set(loaded.map((l) => l.adapter.format))];
    if (formats.length > 1) throw new CliError(`the adapters mix formats (${loaded.map((l, i) => `${dirs[i]}: ${l.adapter.format}`).join(', ')}); combine PEFT adapters with PEFT ones and kohya with kohya`);
    const kohya = formats[0] === 'kohya';
    const names = loaded[0].adapter.modules.map((m) => m.name);
    loaded.forEach(({ adapter }, i) => {
      const have = new Set(adapter.modules.map((m) => m.name));
      const lacks = names.filter((n) => !have.has(n));
      const extra = [...have].filter((n) => !names.includes(n));
      if (lacks.length) throw new CliError(`${dirs[i]} has no module ${lacks.slice(0, 3).join(', ')}${lacks.length > 3 ? ', …' : ''}, which ${dirs[0]} has; combined adapters must have the same modules`);
      if (extra.length) throw new CliError(`${dirs[i]} has module ${extra.slice(0, 3).join(', ')}${extra.length > 3 ? ', …' : ''}, which ${dirs[0]} lacks; combined adapters must have the same modules`);
    });
    const dropped = loaded.reduce((s, l) => s + l.adapter.replacements.length, 0);
    await prepareOut(values, { kohya, inputs: loaded.flatMap(({ af }, i) => adapterInputs(af, `adapter ${dirs[i]}`)) });
    startBar(values.quiet, `combine ${method}`, names.length, 'modules');
    // module by module (each module's combination is its own; the seed's streams do not depend on the module)
    const parts = [];
    for (const name of names) {
      const items = loaded.map(({ adapter }, i) => ({ adapter: new Adapter(adapter.format, [adapter.modules.find((m) => m.name === name)], [], adapter.config), weight: weights[i] }));
      parts.push(lw.combineAdapters(items, opts));
      bar?.increment(1, { what: name });
    }
    const modules = parts.flatMap((a) => a.modules);
    combined = kohya ? new Adapter('kohya', modules, [], {}) : new Adapter('peft', modules, [], parts[0].config);
    const c0 = loaded[0].adapter.config;
    await writeAdapter(lw, combined, { out: values.out, force: Boolean(values.force), kohya, baseModel: c0.base_model_name_or_path, taskType: c0.task_type });
    stopBar();
    if (dropped && !values.quiet) note(`${dropped} modules_to_save tensors of the inputs are not carried over (no method defines how to combine them)`);
    say(`combined ${dirs.length} adapters by ${method} (weights ${weights.join(', ')}): ${modules.length} modules, ${summaryRanks(modules)}, into ${values.out}`);
  } catch (e) {
    stopBar();
    throw e;
  } finally {
    combined?.dispose();
    for (const l of loaded) l.adapter.dispose();
  }
}

/** The adapter's safetensors header as text ('' when unreadable or huge), without loading it. */
function adapterHeader(af) {
  const fd = openSync(af.weights, 'r');
  try {
    const b = Buffer.alloc(8);
    if (readSync(fd, b, 0, 8, 0) !== 8) return '';
    const n = Number(b.readBigUInt64LE(0));
    if (n > 100_000_000) return '';
    const h = Buffer.alloc(n);
    readSync(fd, h, 0, n, 8);
    return h.toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/** A PEFT DoRA adapter (use_dora: a lora_magnitude_vector per module), from its header. */
const isDoraAdapter = (af) => !af.gguf && /\.lora_magnitude_vector(\.weight)?"/.test(adapterHeader(af));

/** The adapter's format from its tensor names, without loading it: 'kohya', 'peft', or 'gguf'. */
function adapterFormat(af) {
  if (af.gguf) return 'gguf';
  return /"lora_(unet|te\d?)_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)"/.test(adapterHeader(af)) ? 'kohya' : 'peft';
}

/**
 * convert, chosen by its inputs and outputs:
 *   PEFT --adapter, --base model.gguf               → a llama.cpp adapter (.gguf)
 *   PEFT --adapter, --out x.safetensors (no --base) → a kohya file (lora_te_<module with . as _>)
 *   kohya --adapter, --base model.safetensors|dir   → a PEFT folder (names from the base's tensors)
 *   PEFT DoRA --adapter, --base model.safetensors  → a plain PEFT LoRA folder (convertDora; --rank | --energy)
 */
async function convert(values) {
  for (const k of ['adapter', 'out']) if (values[k] === undefined) throw new UsageError(`convert needs --${k}`);
  for (const k of ['base', 'adapter', 'out']) if (values[k] !== undefined) checkPath(`--${k}`, values[k]);
  const af = adapterFiles(values.adapter);
  const format = adapterFormat(af);
  if (format === 'peft' && isDoraAdapter(af)) return convertDora(values, af);
  for (const k of ['rank', 'energy', 'seed']) if (values[k] !== undefined) throw new UsageError(`--${k} is for a DoRA → LoRA conversion (a DoRA --adapter); ${values.adapter} is not DoRA`);
  if ((values.base !== undefined && isGgufFile(values.base)) || values.out.endsWith('.gguf') || (format === 'peft' && values.base !== undefined)) {
    if (values['kohya-prefix'] !== undefined) throw new UsageError('--kohya-prefix is for a PEFT → kohya conversion, not for a llama.cpp adapter');
    return convertGguf(values);
  }
  if (values.dtype !== undefined) throw new UsageError('--dtype is for a conversion into a llama.cpp adapter (--base model.gguf); kohya ⇄ PEFT keeps the factors\' dtype');
  if (format === 'gguf') throw new CliError(`--adapter ${values.adapter} is a llama.cpp adapter; convert reads PEFT and kohya adapters`);
  const force = Boolean(values.force);
  if (format === 'peft') {
    if (values.prefix !== undefined) throw new UsageError('--prefix is for --base; a PEFT → kohya conversion names modules directly (use --kohya-prefix for lora_te/lora_te1/lora_te2/lora_unet)');
    if (!values.out.endsWith('.safetensors')) throw new UsageError(`--out ${values.out}: a PEFT adapter converts into a kohya file, named *.safetensors`);
    const kohyaPrefix = values['kohya-prefix'] ?? 'lora_te';
    if (!KOHYA_PREFIXES.includes(kohyaPrefix)) throw new UsageError(`--kohya-prefix must be one of ${KOHYA_PREFIXES.join(', ')}, got ${kohyaPrefix}`);
    await prepareOut(values, { kohya: true, inputs: adapterInputs(af) });
    const lw = await init();
    const adapter = await lw.loadAdapter({ weights: af.weights, config: af.config });
    try {
      startBar(values.quiet, 'convert', 1, 'files');
      await writeAdapter(lw, adapter, { out: values.out, force, kohya: true, kohyaPrefix });
      bar?.increment(1, { what: values.out });
      stopBar();
    } catch (e) {
      stopBar();
      throw e;
    } finally {
      adapter.dispose();
    }
    say(`converted ${adapter.modules.length} PEFT modules into the kohya file ${values.out} (${kohyaPrefix}_<module with . as _>, alpha = scale·r)`);
    return;
  }
  // kohya → PEFT
  if (values['kohya-prefix'] !== undefined) throw new UsageError('--kohya-prefix is for a PEFT → kohya conversion; a kohya file carries its own');
  if (values.base === undefined) throw new UsageError('a kohya → PEFT conversion needs --base model.safetensors (or its shards\' folder or index): its tensor names turn the underscores back into dots');
  const base = baseFiles(values.base);
  await prepareOut(values, { kohya: false, inputs: [...adapterInputs(af), ...modelInputs(base, 'base model')] });
  const lw = await init();
  const adapter = await lw.loadAdapter({ weights: af.weights });
  const readers = [];
  try {
    readers.push(...await openAll(base.files));
    if (base.index) checkIndex(base.index, readers);
    const shapes = new Map(readers.flatMap((r) => r.tensors.map((t) => [t.name, t.shape])));
    const peft = kohyaToPeft(adapter, new Set(shapes.keys()), { prefix: values.prefix ?? '', shapeOf: (n) => shapes.get(n) });
    startBar(values.quiet, 'convert', 1, 'files');
    await writeAdapter(lw, peft, { out: values.out, force, baseModel: values.base });
    bar?.increment(1, { what: values.out });
    stopBar();
    say(`converted ${peft.modules.length} kohya modules into the PEFT adapter ${values.out} (module names from ${values.base})`);
  } catch (e) {
    stopBar();
    throw e;
  } finally {
    for (const r of readers) await r.close();
    adapter.dispose();
  }
}

/**
 * convert --adapter <DoRA dir> --base <model> --rank k | --energy e --out <dir>: DoRA → plain LoRA
 * (lw.doraToLora), module by module, reading each DoRA module's base tensor alone; every target is
 * checked in the headers before the first is read. Modules without a magnitude are copied as they are.
 */
async function convertDora(values, af) {
  if (values.base === undefined) throw new UsageError('a DoRA → LoRA conversion needs --base model.safetensors (or its shards\' folder or index): W′ − W needs each changed W');
  for (const k of ['dtype', 'kohya-prefix']) if (values[k] !== undefined) throw new UsageError(`--${k} is not for a DoRA → LoRA conversion (it writes a PEFT folder in f32)`);
  if (isGgufFile(values.base)) throw new CliError(`--base ${values.base} is a GGUF model; a DoRA → LoRA conversion reads safetensors models (one file or its shards)`);
  const choice = rankOrEnergy('a DoRA → LoRA conversion', values);
  const seed = parseSeed(values.seed);
  const prefix = values.prefix ?? '';
  const base = baseFiles(values.base);
  await prepareOut(values, { kohya: false, inputs: [...adapterInputs(af), ...modelInputs(base, 'base model')] });
  const lw = await init();
  const adapter = await lw.loadAdapter({ weights: af.weights, config: af.config });
  const readers = [];
  const made = [];
  try {
    readers.push(...await openAll(base.files));
    if (base.index) checkIndex(base.index, readers);
    const at = new Map(readers.flatMap((r) => r.tensors.map((t) => [t.name, r])));
    const dora = adapter.modules.filter((m) => m.magnitude);
    for (const m of dora) {
      const name = `${prefix}${m.name}.weight`;
      if (!at.has(name)) throw new CliError(`DoRA module "${m.name}" needs the base tensor "${name}", which ${values.base} does not hold${prefix ? '' : ' (does the base name it with a prefix? --prefix P)'}`);
    }
    startBar(values.quiet, 'convert DoRA', dora.length, 'modules');
    const modules = [];
    const reports = [];
    for (const m of adapter.modules) {
      if (!m.magnitude) {
        modules.push(m);
        continue;
      }
      const name = `${prefix}${m.name}.weight`;
      const { tensors } = await lw.loadTensors(at.get(name), { names: [name] });
      try {
        const one = lw.doraToLora(new Adapter('peft', [m], [], adapter.config), tensors, { ...choice, prefix, seed });
        made.push(one.adapter);
        modules.push(one.adapter.modules[0]);
        reports.push(one.modules[0]);
      } finally {
        for (const t of Object.values(tensors)) t.dispose();
      }
      bar?.increment(1, { what: m.name });
    }
    const out = new Adapter('peft', modules, [...adapter.replacements], { ...adapter.config, use_dora: false });
    await writeAdapter(lw, out, { out: values.out, force: Boolean(values.force), baseModel: adapter.config.base_model_name_or_path ?? values.base, taskType: adapter.config.task_type });
    stopBar();
    if (!values.quiet) for (const r of reports) say(`  ${r.name}  rank ${r.rank}  kept ${r.energy.toFixed(6)} of ‖W′ − W‖²`);
    const worst = reports.reduce((a, b) => (b.energy < a.energy ? b : a));
    const mean = reports.reduce((s, r) => s + r.energy, 0) / reports.length;
    const plain = adapter.modules.length - dora.length;
    say(`converted ${reports.length} DoRA modules into plain LoRA (${summaryRanks(reports)}; kept of ‖W′ − W‖²: worst ${worst.energy.toFixed(6)} (${worst.name}), mean ${mean.toFixed(6)}) into ${values.out}${plain ? `; ${plain} plain modules copied` : ''}`);
  } catch (e) {
    stopBar();
    throw e;
  } finally {
    for (const r of readers) await r.close();
    for (const a of made) a.dispose();
    adapter.dispose();
  }
}

/**
 * A signal removes every unfinished output (temp files and folders), then ends the process by the same
 * signal with its default action (exit status 128 + its number). Not process.exit(): that joins libuv's
 * thread pool, and a pool thread can be stuck (fs.copyFile loops forever when its source shrinks
 * during the copy), so the process would never end.
 */
const SIGNALS = ['SIGHUP', 'SIGINT', 'SIGTERM'];
for (const signal of SIGNALS) {
  process.on(signal, () => {
    bar?.stop();
    const removed = abortOpenTempsSync();
    process.stderr.write(`lora-wasm: stopped by ${signal}${removed.length ? '; the unfinished output was removed' : ''}\n`);
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
  });
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
      parsed = parseArgs({ args: joinNumbers(rest), options: {
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
  const COMMON = { out: { type: 'string' }, force: { type: 'boolean' }, quiet: { type: 'boolean' } };
  const COMMANDS = {
    convert: [convert, {
      base: { type: 'string' }, adapter: { type: 'string' }, dtype: { type: 'string' }, prefix: { type: 'string' }, 'kohya-prefix': { type: 'string' },
      rank: { type: 'string' }, energy: { type: 'string' }, seed: { type: 'string' },
    }],
    extract: [extract, { base: { type: 'string' }, tuned: { type: 'string' }, rank: { type: 'string' }, energy: { type: 'string' }, modules: { type: 'string' }, seed: { type: 'string' } }],
    resize: [resize, { adapter: { type: 'string' }, rank: { type: 'string' }, energy: { type: 'string' } }],
    combine: [combine, { weights: { type: 'string' }, method: { type: 'string' }, rank: { type: 'string' }, density: { type: 'string' }, seed: { type: 'string' } }],
  };
  if (Object.hasOwn(COMMANDS, command)) {
    const [run, options] = COMMANDS[command];
    let parsed;
    try {
      parsed = parseArgs({ args: joinNumbers(rest), options: { ...COMMON, ...options }, allowPositionals: command === 'combine' });
    } catch (e) {
      throw new UsageError(e.message);
    }
    await run(parsed.values, parsed.positionals);
    return 0;
  }
  throw new UsageError(`unknown command "${command}"`);
}

main().then((code) => process.exit(code), (e) => {
  if (e instanceof UsageError) {
    process.stderr.write(`lora-wasm: ${printable(e.message)}\n${USAGE}\n`);
    process.exit(2);
  }
  const known = e instanceof LoRAError || e instanceof CliError || ['ENOENT', 'EACCES', 'EEXIST', 'ENOSPC', 'EISDIR', 'ENOTDIR', 'EROFS'].includes(e?.code);
  process.stderr.write(`lora-wasm: ${known ? printable(e.message) : `unexpected error: ${e?.stack ?? e}`}\n`);
  process.exit(1);
});
