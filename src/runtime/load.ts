/**
 * Loading and feature detection: bytes → a checked module instance → Engine.
 * Knows nothing of operations or layers (src/init.ts wraps the Engine in the
 * public LoRAWasm facade).
 *
 * Two .wasm flavours are built from one source (assembly/simd.ts):
 *   relaxed   f32x4.relaxed_madd  Chromium, Node ≥ 22, Node 20 with --experimental-wasm-relaxed-simd
 *   baseline  f32x4.mul + add     every engine with SIMD128
 * `simd: 'auto'` picks relaxed when the engine validates it.
 *
 * Memory is created here and imported by the module, so that several
 * instances (workers) can share it; the kernels only take pointers and sizes.
 */
import { instantiate } from '@assemblyscript/loader';
import { LoRAError, LoRARangeError, LoRATypeError, describeValue } from '../errors.js';
import { KernelLayer, moduleInfo } from '../kernel/kernel.js';
import { KERNEL_NAMES, type Kernels } from '../kernel/kernels.js';
import { MAX_PAGES, PAGE_BYTES, WasmHeap } from '../memory/heap.js';

import type { Build, Engine, WasmSource } from './engine.js';

export type { WasmSource };
import { pathToUrl, readFileUrl } from './load-file.js';
import { defaultWasm } from './wasm-source.js';

export interface InitOptions {
  /** Which flavour to run. 'auto' (default) prefers relaxed where the engine supports it. */
  simd?: 'auto' | Build;
  /**
   * Where the .wasm comes from. Default: embedded in the browser bundles, and
   * `build/lora-<flavour>.wasm` next to the package in Node. Either one source,
   * whose flavour is read from the module itself, or one per flavour. A string
   * is a URL (relative to the page in browsers); in Node a non-URL string is a
   * file path.
   */
  wasm?: WasmSource | { relaxed?: WasmSource; baseline?: WasmSource };
  /** Cap on wasm memory in bytes (default and maximum: 4 GiB, the wasm32 limit; at least 64 KiB). */
  maxMemoryBytes?: number;
}

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

const isSource = (v: unknown): v is WasmSource =>
  typeof v === 'string' || v instanceof URL || v instanceof WebAssembly.Module || v instanceof ArrayBuffer || ArrayBuffer.isView(v);

/** Checks init()'s options synchronously; throws typed errors. */
export function checkInitOptions(options: unknown): InitOptions {
  if (options === undefined) return {};
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new LoRATypeError(`init: options must be an object like { simd, wasm, maxMemoryBytes }, got ${describeValue(options)}`);
  }
  const o = options as InitOptions;
  if (o.simd !== undefined && o.simd !== 'auto' && o.simd !== 'relaxed' && o.simd !== 'baseline') {
    throw new LoRATypeError(`init: options.simd must be 'auto', 'relaxed' or 'baseline', got ${describeValue(o.simd)}`);
  }
  if (o.maxMemoryBytes !== undefined) {
    if (typeof o.maxMemoryBytes !== 'number') {
      throw new LoRATypeError(`init: options.maxMemoryBytes must be a number of bytes, got ${describeValue(o.maxMemoryBytes)}`);
    }
    if (!(o.maxMemoryBytes >= PAGE_BYTES && o.maxMemoryBytes <= MAX_PAGES * PAGE_BYTES)) {
      throw new LoRARangeError(`init: options.maxMemoryBytes must be between 64 KiB and 4 GiB, got ${describeValue(o.maxMemoryBytes)}`);
    }
  }
  if (o.wasm !== undefined && !isSource(o.wasm)) {
    const map = o.wasm as Record<string, unknown> | null;
    const ok = typeof map === 'object' && map !== null && Object.keys(map).length > 0 &&
      Object.entries(map).every(([k, v]) => (k === 'relaxed' || k === 'baseline') && (v === undefined || isSource(v)));
    if (!ok) {
      throw new LoRATypeError(
        `init: options.wasm must be a URL, a path, bytes, a WebAssembly.Module or { relaxed, baseline } of those, got ${describeValue(o.wasm)}`,
      );
    }
  }
  return o;
}

/** Loads, instantiates and checks one module; the Engine owns a fresh memory. */
export async function loadEngine(options: InitOptions): Promise<Engine> {
  const simd = options.simd ?? 'auto';
  const maxBytes = options.maxMemoryBytes ?? MAX_PAGES * PAGE_BYTES;
  const features = detectFeatures();
  if (!features.simd) {
    throw new LoRAError('init: this engine has no WebAssembly SIMD128 support, which lora-wasm requires');
  }
  if (simd === 'relaxed' && !features.relaxed) {
    throw new LoRAError(
      "init: simd: 'relaxed' was requested but this engine does not support relaxed SIMD " +
        '(Node 20 needs --experimental-wasm-relaxed-simd; Node ≥ 22 and Chromium have it)',
    );
  }
  const want: Build = simd === 'auto' ? (features.relaxed ? 'relaxed' : 'baseline') : simd;
  const source = pickSource(options.wasm, want);

  const maxPages = Math.floor(maxBytes / PAGE_BYTES);
  const memory = new WebAssembly.Memory({ initial: 1, maximum: maxPages });
  let exports: Record<string, unknown>;
  try {
    const bytesOrModule = await resolveSource(source ?? defaultWasm(want), source === undefined);
    const instance = await instantiate(bytesOrModule as WebAssembly.Module, { env: { memory } });
    exports = instance.exports as unknown as Record<string, unknown>;
  } catch (e) {
    if (e instanceof LoRAError) throw e;
    throw new LoRAError(`init: could not load the ${want} lora-wasm module: ${(e as Error).message}`, { cause: e });
  }
  const missing = KERNEL_NAMES.filter((name) => typeof exports[name] !== 'function');
  if (missing.length > 0) {
    throw new LoRAError(
      `init: the given wasm is not a lora-wasm module of this version: it lacks ${missing.slice(0, 3).map((m) => `'${m}'`).join(', ')}` +
        `${missing.length > 3 ? ` and ${missing.length - 3} more` : ''} (build it from assembly/ with npm run build:wasm)`,
    );
  }
  const kernels = exports as unknown as Kernels;
  const info = moduleInfo(kernels);
  const build: Build = info.relaxed ? 'relaxed' : 'baseline';
  if (simd !== 'auto' && build !== simd) {
    throw new LoRATypeError(`init: options.simd is '${simd}' but the given wasm module is the ${build} build`);
  }
  const heap = new WasmHeap(memory, info.heapBase, maxPages * PAGE_BYTES);
  return { build, heap, kernel: new KernelLayer(heap, kernels) };
}

function pickSource(wasm: InitOptions['wasm'], want: Build): WasmSource | undefined {
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
    throw new LoRAError(`init: could not fetch ${url.href} (${(e as Error).message}); ${remedy(isDefault)}`, { cause: e });
  }
  if (!res.ok) throw new LoRAError(`init: fetching ${url.href} answered ${res.status} ${res.statusText}; ${remedy(isDefault)}`);
  if (typeof WebAssembly.compileStreaming === 'function' && res.headers.get('content-type')?.startsWith('application/wasm')) {
    return WebAssembly.compileStreaming(res);
  }
  return res.arrayBuffer();
}

const remedy = (isDefault: boolean): string =>
  isDefault
    ? "this entry point loads the .wasm by URL: serve node_modules/lora-wasm/build/lora-*.wasm at that address, pass init({ wasm: { relaxed: url, baseline: url } }), or import 'lora-wasm' (the default browser entry embeds both .wasm files)"
    : 'check the URL given in init({ wasm }) and that the server sends the file';
