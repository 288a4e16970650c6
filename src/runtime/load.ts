/**
 * Loading and feature detection: bytes → a checked module instance → Engine.
 * Knows nothing of operations or layers (src/init.ts wraps the Engine in the
 * public LoRAWasm facade).
 *
 * Two .wasm builds are compiled from one source (assembly/simd.ts):
 *   relaxed   f32x4.relaxed_madd  Chromium, Node ≥ 22, Node 20 with --experimental-wasm-relaxed-simd
 *   baseline  f32x4.mul + add     every engine with SIMD128
 * `build: 'auto'` (the default) picks relaxed when the engine validates it.
 *
 * Memory is created here and imported by the module, so that several
 * instances (workers) can share it; the kernels only take pointers and sizes.
 */
import { instantiate } from '@assemblyscript/loader';
import { LoRAEnvironmentError, LoRAError, LoRAFormatError, LoRARangeError, LoRATypeError, describeValue } from '../errors.js';
import { KernelLayer, moduleInfo } from '../kernel/kernel.js';
import { KERNEL_NAMES, type Kernels } from '../kernel/kernels.js';
import { MAX_PAGES, PAGE_BYTES, WasmHeap } from '../memory/heap.js';
import { WorkerPool } from '../pool/pool.js';
import { availableCores, sharedMemoryAvailable } from '../pool/thread.js';

import type { Build, Engine, WasmSource } from './engine.js';

export type { WasmSource };
import { pathToUrl, readFileUrl } from './load-file.js';
import { defaultWasm } from './wasm-source.js';

export interface InitOptions {
  /** Which build to run, as lw.build reports it. 'auto' (default) prefers relaxed where the engine supports it. */
  build?: 'auto' | Build;
  /** The former name of `build`, still accepted (giving both with different values is an error). */
  simd?: 'auto' | Build;
  /**
   * Where the .wasm comes from. Default: embedded in the browser bundles, and
   * `build/lora-<build>.wasm` next to the package in Node. Either one source,
   * whose build is read from the module itself, or one per build. A string
   * is a URL (relative to the page in browsers); in Node a non-URL string is a
   * file path.
   */
  wasm?: WasmSource | { relaxed?: WasmSource; baseline?: WasmSource };
  /** Cap on wasm memory in bytes (default and maximum: 4 GiB, the wasm32 limit; at least 64 KiB). */
  maxMemoryBytes?: number;
  /**
   * Threads that run large kernels: the calling thread plus `threads − 1`
   * workers on shared wasm memory. 'auto' (the default) takes the available
   * cores (os.availableParallelism(), navigator.hardwareConcurrency), at most
   * AUTO_THREADS_CAP; 1 starts no worker. Small calls stay on the calling thread
   * whatever this says. Results are bit-identical for every thread count.
   * Where memory cannot be shared (a page that is not cross-origin isolated)
   * this falls back to 1 thread (saying so once in the console when threads were
   * asked for explicitly), and lw.threads reports it. The default is 1 thread
   * when options.wasm is one module of the caller's (it is a single-thread
   * build unless the caller says otherwise with `threads`).
   */
  threads?: number | 'auto';
}

/** 'auto' uses at most this many threads: the merge is memory-bound well before, and GEMM gains little past it on wasm. */
export const AUTO_THREADS_CAP = 8;
/** The most threads init() accepts. */
export const MAX_THREADS = 64;

// (module (func (param v128 v128 v128) (result v128)
//   local.get 0 local.get 1 local.get 2 f32x4.relaxed_madd))
const RELAXED_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x01, 0x60, 0x03, 0x7b, 0x7b, 0x7b, 0x01, 0x7b, 0x03,
  0x02, 0x01, 0x00, 0x0a, 0x0d, 0x01, 0x0b, 0x00, 0x20, 0x00, 0x20, 0x01, 0x20, 0x02, 0xfd, 0x85, 0x02, 0x0b,
]);
// Same shape with f32x4.add (0xfd 0xe4 0x01): plain SIMD128.
const SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x07, 0x01, 0x60, 0x02, 0x7b, 0x7b, 0x01, 0x7b, 0x03, 0x02,
  0x01, 0x00, 0x0a, 0x0b, 0x01, 0x09, 0x00, 0x20, 0x00, 0x20, 0x01, 0xfd, 0xe4, 0x01, 0x0b,
]);

/** What this engine can run: { simd, relaxed }. */
export function detectFeatures(): { simd: boolean; relaxed: boolean } {
  return { simd: WebAssembly.validate(SIMD_PROBE), relaxed: WebAssembly.validate(RELAXED_PROBE) };
}

const WASM_KEYS = ['relaxed', 'baseline', 'relaxed-threads', 'baseline-threads'] as const;
type WasmKey = (typeof WASM_KEYS)[number];

let warnedFallback = false;

/**
 * options.threads, or its default: 'auto', except for one module of the caller's (options.wasm a
 * single source, or a map without the threads build of `build`), which runs as given on 1 thread.
 */
export function threadsOption(options: InitOptions, build: Build): number | 'auto' {
  if (options.threads !== undefined) return options.threads;
  const wasm = options.wasm;
  if (wasm === undefined) return 'auto';
  return !isSource(wasm) && wasm[`${build}-threads` as keyof typeof wasm] !== undefined ? 'auto' : 1;
}

/** How many threads to start: the option resolved against this machine and what this context allows. */
async function resolveThreads(option: number | 'auto', explicit: boolean): Promise<{ threads: number; note?: string }> {
  const want = option === 'auto' ? Math.max(1, Math.min(AUTO_THREADS_CAP, await availableCores())) : option;
  if (want === 1) return { threads: 1 };
  const shared = sharedMemoryAvailable();
  if (shared.ok) return { threads: want };
  const note = `lora-wasm: running on 1 thread instead of ${want}: ${shared.why}`;
  // the default ('auto') falls back quietly; threads asked for are not given without a word
  if (explicit && !warnedFallback) {
    warnedFallback = true;
    console.warn(note);
  }
  return { threads: 1, note };
}

const isSource = (v: unknown): v is WasmSource =>
  typeof v === 'string' || v instanceof URL || v instanceof WebAssembly.Module || v instanceof ArrayBuffer || ArrayBuffer.isView(v);

const BUILD_CHOICES: readonly unknown[] = ['auto', 'relaxed', 'baseline'];

/** options.build, or its alias options.simd, checked under the name the caller used. */
function requestedBuild(o: InitOptions): 'auto' | Build {
  for (const key of ['build', 'simd'] as const) {
    if (o[key] !== undefined && !BUILD_CHOICES.includes(o[key])) {
      throw new LoRATypeError(`init: options.${key} must be 'auto', 'relaxed' or 'baseline', got ${describeValue(o[key])}`);
    }
  }
  if (o.build !== undefined && o.simd !== undefined && o.build !== o.simd) {
    throw new LoRATypeError(`init: options.build is '${o.build}' but options.simd (its former name) is '${o.simd}'; give one`);
  }
  return o.build ?? o.simd ?? 'auto';
}

/** Checks init()'s options synchronously; throws typed errors. */
export function checkInitOptions(options: unknown): InitOptions {
  if (options === undefined) return {};
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new LoRATypeError(`init: options must be an object like { build, threads, wasm, maxMemoryBytes }, got ${describeValue(options)}`);
  }
  const o = options as InitOptions;
  requestedBuild(o);
  if (o.maxMemoryBytes !== undefined) {
    if (typeof o.maxMemoryBytes !== 'number') {
      throw new LoRATypeError(`init: options.maxMemoryBytes must be a number of bytes, got ${describeValue(o.maxMemoryBytes)}`);
    }
    if (!(o.maxMemoryBytes >= PAGE_BYTES && o.maxMemoryBytes <= MAX_PAGES * PAGE_BYTES)) {
      throw new LoRARangeError(`init: options.maxMemoryBytes must be between 64 KiB and 4 GiB, got ${describeValue(o.maxMemoryBytes)}`);
    }
  }
  if (o.threads !== undefined && o.threads !== 'auto') {
    if (typeof o.threads !== 'number') {
      throw new LoRATypeError(`init: options.threads must be a whole number or 'auto', got ${describeValue(o.threads)}`);
    }
    if (!Number.isInteger(o.threads) || o.threads < 1 || o.threads > MAX_THREADS) {
      throw new LoRARangeError(`init: options.threads must be a whole number from 1 to ${MAX_THREADS}, or 'auto', got ${describeValue(o.threads)}`);
    }
  }
  if (o.wasm !== undefined && !isSource(o.wasm)) {
    const map = o.wasm as Record<string, unknown> | null;
    const ok = typeof map === 'object' && map !== null && Object.keys(map).length > 0 &&
      Object.entries(map).every(([k, v]) => (WASM_KEYS as readonly string[]).includes(k) && (v === undefined || isSource(v)));
    if (!ok) {
      throw new LoRATypeError(
        `init: options.wasm must be a URL, a path, bytes, a WebAssembly.Module or { ${WASM_KEYS.join(', ')} } of those, got ${describeValue(o.wasm)}`,
      );
    }
  }
  return o;
}

/** Loads, instantiates and checks one module; the Engine owns a fresh memory. */
export async function loadEngine(options: InitOptions): Promise<Engine> {
  const requested = requestedBuild(options);
  const maxBytes = options.maxMemoryBytes ?? MAX_PAGES * PAGE_BYTES;
  const features = detectFeatures();
  if (!features.simd) {
    throw new LoRAEnvironmentError('init: this engine has no WebAssembly SIMD128 support, which lora-wasm requires');
  }
  if (requested === 'relaxed' && !features.relaxed) {
    throw new LoRAEnvironmentError(
      "init: the 'relaxed' build was requested but this engine does not support relaxed SIMD " +
        '(Node 20 needs --experimental-wasm-relaxed-simd; Node ≥ 22 and Chromium have it)',
    );
  }
  const want: Build = requested === 'auto' ? (features.relaxed ? 'relaxed' : 'baseline') : requested;
  const { threads, note } = await resolveThreads(threadsOption(options, want), options.threads !== undefined);
  const shared = threads > 1;
  const source = pickSource(options.wasm, shared ? `${want}-threads` : want);

  const maxPages = Math.floor(maxBytes / PAGE_BYTES);
  const memory = new WebAssembly.Memory({ initial: 1, maximum: maxPages, shared });
  let exports: Record<string, unknown>;
  let module: WebAssembly.Module;
  try {
    const bytesOrModule = await resolveSource(source ?? defaultWasm(want, shared), source === undefined);
    module = bytesOrModule instanceof WebAssembly.Module ? bytesOrModule : await WebAssembly.compile(bytesOrModule as BufferSource);
    const instance = await instantiate(module, { env: { memory } });
    exports = instance.exports as unknown as Record<string, unknown>;
  } catch (e) {
    if (e instanceof LoRAError) throw e;
    const hint = e instanceof WebAssembly.LinkError && /shared/i.test((e as Error).message)
      ? shared
        ? ` (with threads > 1 it needs a threads build, lora-${want}-threads.wasm: pass it as options.wasm['${want}-threads'])`
        : ` (this looks like a threads build: pass a single-thread build, or threads > 1)`
      : '';
    // a module that does not compile or link is a bad file; a file or fetch that failed is the host's
    const Kind = e instanceof WebAssembly.CompileError || e instanceof WebAssembly.LinkError ? LoRAFormatError : LoRAEnvironmentError;
    throw new Kind(`init: could not load the ${want} lora-wasm module: ${(e as Error).message}${hint}`, { cause: e });
  }
  const missing = KERNEL_NAMES.filter((name) => typeof exports[name] !== 'function');
  if (missing.length > 0) {
    throw new LoRAFormatError(
      `init: the given wasm is not a lora-wasm module of this version: it lacks ${missing.slice(0, 3).map((m) => `'${m}'`).join(', ')}` +
        `${missing.length > 3 ? ` and ${missing.length - 3} more` : ''} (build it from assembly/ with npm run build:wasm)`,
    );
  }
  const kernels = exports as unknown as Kernels;
  const info = moduleInfo(kernels);
  const build: Build = info.relaxed ? 'relaxed' : 'baseline';
  if (requested !== 'auto' && build !== requested) {
    const key = options.build !== undefined ? 'build' : 'simd';
    throw new LoRATypeError(`init: options.${key} is '${requested}' but the given wasm module is the ${build} build`);
  }
  const heap = new WasmHeap(memory, info.heapBase, maxPages * PAGE_BYTES);
  let pool: WorkerPool | undefined;
  let poolNote = note;
  if (shared) {
    try {
      pool = await WorkerPool.start(threads - 1, module, memory, KERNEL_NAMES);
    } catch (e) {
      poolNote = `lora-wasm: running on 1 thread instead of ${threads}: ${(e as Error).message}`;
      console.warn(poolNote);
    }
  }
  return { build, heap, kernel: new KernelLayer(heap, kernels, pool), threadsNote: poolNote };
}

function pickSource(wasm: InitOptions['wasm'], want: WasmKey): WasmSource | undefined {
  if (wasm === undefined || isSource(wasm)) return wasm;
  const s = wasm[want];
  if (s === undefined) throw new LoRATypeError(`init: options.wasm has no '${want}' entry`);
  return s;
}

/** Strings are URLs; in Node, a string that is not an absolute URL is a file path (relative to the cwd). */
async function toUrl(s: string): Promise<URL> {
  if (globalThis.location !== undefined) return new URL(s, globalThis.location.href);
  try {
    return new URL(s);
  } catch {
    return pathToUrl(s);
  }
}

async function resolveSource(source: WasmSource, isDefault: boolean): Promise<WebAssembly.Module | ArrayBuffer | ArrayBufferView> {
  if (source instanceof WebAssembly.Module || source instanceof ArrayBuffer || ArrayBuffer.isView(source)) {
    return source;
  }
  const url = source instanceof URL ? source : await toUrl(String(source));
  if (url.protocol === 'file:') return readFileUrl(url);
  let res: Response;
  try {
    res = await fetch(url);
  } catch (e) {
    throw new LoRAEnvironmentError(`init: could not fetch ${url.href} (${(e as Error).message}); ${remedy(isDefault)}`, { cause: e });
  }
  if (!res.ok) throw new LoRAEnvironmentError(`init: fetching ${url.href} answered ${res.status} ${res.statusText}; ${remedy(isDefault)}`);
  if (typeof WebAssembly.compileStreaming === 'function' && res.headers.get('content-type')?.startsWith('application/wasm')) {
    return WebAssembly.compileStreaming(res);
  }
  return res.arrayBuffer();
}

const remedy = (isDefault: boolean): string =>
  isDefault
    ? "this entry point loads the .wasm by URL: serve node_modules/lora-wasm/build/lora-*.wasm at that address, pass init({ wasm: { relaxed: url, baseline: url } }), or import 'lora-wasm' (the default browser entry embeds both .wasm files)"
    : 'check the URL given in init({ wasm }) and that the server sends the file';
