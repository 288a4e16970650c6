/**
 * Loading, feature detection and init().
 *
 * Two .wasm flavours are built from one source (assembly/simd.ts):
 *   relaxed   f32x4.relaxed_madd  Chromium, Node ≥ 22, Node 20 with --experimental-wasm-relaxed-simd
 *   baseline  f32x4.mul + add     every engine with SIMD128
 * `simd: 'auto'` picks relaxed when the engine validates it.
 *
 * Memory is created here and imported by the module, so that one day several
 * instances (workers) can share it; the kernels only take pointers and sizes.
 */
import { instantiate } from '@assemblyscript/loader';
import { LoRAError, LoRAMemoryError, LoRATypeError } from './errors.js';
import type { Kernels } from './kernels.js';
import { MAX_PAGES, PAGE_BYTES, WasmHeap } from './memory.js';
import { describeValue } from './operands.js';
import { LoRAWasm } from './lorawasm.js';
import { pathToUrl, readFileUrl } from './load-file.js';
import { defaultWasm } from './wasm-source.js';

export type Build = 'relaxed' | 'baseline';

/** A .wasm source: a URL (fetched, or read from disk for file: URLs), the bytes, or a compiled module. */
export type WasmSource = string | URL | ArrayBuffer | ArrayBufferView | WebAssembly.Module;

export interface InitOptions {
  /** Which flavour to run. 'auto' (default) prefers relaxed where the engine supports it. */
  simd?: 'auto' | Build;
  /**
   * Where the .wasm comes from. Default: `build/lora-<flavour>.wasm` next to the
   * package (read from disk in Node, fetched in browsers). Either one source,
   * whose flavour is read from the module itself, or one per flavour. A string
   * is a URL (relative to the page in browsers); in Node a non-URL string is a
   * file path.
   */
  wasm?: WasmSource | { relaxed?: WasmSource; baseline?: WasmSource };
  /** Cap on wasm memory in bytes (default and maximum: 4 GiB, the wasm32 limit). */
  maxMemoryBytes?: number;
}


export interface Engine {
  readonly build: Build;
  readonly heap: WasmHeap;
  /** The wasm exports, typed once in kernels.ts. */
  readonly kernels: Kernels;
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

const memo = new Map<string, Promise<LoRAWasm>>();
let uniqueKeys = 0;

/**
 * Loads and instantiates lora-wasm. Memoised: the same options give the same
 * instance (and the same memory). Works in Node and in browsers.
 */
export function init(options: InitOptions = {}): Promise<LoRAWasm> {
  const key = memoKey(options);
  let p = memo.get(key);
  if (!p) {
    p = create(options);
    memo.set(key, p);
    p.catch(() => memo.delete(key));
  }
  return p;
}

function memoKey(o: InitOptions): string {
  const base = `${o.simd ?? 'auto'}|${o.maxMemoryBytes ?? ''}`;
  if (o.wasm === undefined) return base;
  if (typeof o.wasm === 'string' || o.wasm instanceof URL) return `${base}|${String(o.wasm)}`;
  return `${base}|${++uniqueKeys}`; // bytes, modules and per-flavour maps are not compared: a fresh instance each time
}

async function create(options: InitOptions): Promise<LoRAWasm> {
  const simd = options.simd ?? 'auto';
  if (simd !== 'auto' && simd !== 'relaxed' && simd !== 'baseline') {
    throw new LoRATypeError(`init: options.simd must be 'auto', 'relaxed' or 'baseline', got ${describeValue(simd)}`);
  }
  const maxBytes = options.maxMemoryBytes ?? MAX_PAGES * PAGE_BYTES;
  if (typeof maxBytes !== 'number' || !(maxBytes >= PAGE_BYTES) || maxBytes > MAX_PAGES * PAGE_BYTES) {
    throw new LoRAMemoryError(
      `init: options.maxMemoryBytes must be between 64 KiB and 4 GiB, got ${describeValue(maxBytes)}`,
    );
  }
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
  let instance: { exports: Record<string, unknown> };
  try {
    const bytesOrModule = await resolveSource(source ?? defaultWasm(want));
    instance = (await instantiate(bytesOrModule as WebAssembly.Module, { env: { memory } })) as unknown as {
      exports: Record<string, unknown>;
    };
  } catch (e) {
    throw new LoRAError(`init: could not load the ${want} lora-wasm module: ${(e as Error).message}`, { cause: e });
  }
  const k = instance.exports as { simdFlavour(): number; heapBase(): number };
  const build: Build = k.simdFlavour() === 1 ? 'relaxed' : 'baseline';
  if (simd !== 'auto' && build !== simd) {
    throw new LoRATypeError(`init: options.simd is '${simd}' but the given wasm module is the ${build} build`);
  }
  const heap = new WasmHeap(memory, k.heapBase() >>> 0, maxPages * PAGE_BYTES);
  return new LoRAWasm({ build, heap, kernels: instance.exports as unknown as Kernels });
}

function pickSource(wasm: InitOptions['wasm'], want: Build): WasmSource | undefined {
  if (wasm === undefined) return undefined;
  if (
    typeof wasm === 'object' &&
    !(wasm instanceof URL) &&
    !(wasm instanceof WebAssembly.Module) &&
    !(wasm instanceof ArrayBuffer) &&
    !ArrayBuffer.isView(wasm)
  ) {
    const map = wasm as { relaxed?: WasmSource; baseline?: WasmSource };
    const s = map[want];
    if (s === undefined) throw new LoRATypeError(`init: options.wasm has no '${want}' entry`);
    return s;
  }
  return wasm as WasmSource;
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

async function resolveSource(source: WasmSource): Promise<WebAssembly.Module | ArrayBuffer | ArrayBufferView> {
  if (source instanceof WebAssembly.Module || source instanceof ArrayBuffer || ArrayBuffer.isView(source)) {
    return source;
  }
  const url = source instanceof URL ? source : await toUrl(String(source));
  if (url.protocol === 'file:') return readFileUrl(url);
  const res = await fetch(url);
  if (!res.ok) throw new Error(`fetch ${url.href} answered ${res.status} ${res.statusText}`);
  if (typeof WebAssembly.compileStreaming === 'function' && res.headers.get('content-type')?.startsWith('application/wasm')) {
    return WebAssembly.compileStreaming(res);
  }
  return res.arrayBuffer();
}

