/**
 * init(): the package's entry point. Loads an Engine (src/runtime/) and wraps
 * it in the LoRAWasm facade. Memoised: the same options give the same
 * instance (and the same memory). Never throws synchronously: bad options
 * reject the promise with a typed error.
 */
import { LoRAWasm } from './lorawasm.js';
import { type InitOptions, checkInitOptions, loadEngine } from './runtime/load.js';

const memo = new Map<string, Promise<LoRAWasm>>();
let uniqueKeys = 0;

/** Loads and instantiates lora-wasm, in Node and in browsers. */
export function init(options?: InitOptions): Promise<LoRAWasm> {
  let o: InitOptions;
  try {
    o = checkInitOptions(options);
  } catch (e) {
    return Promise.reject(e);
  }
  const key = memoKey(o);
  let p = memo.get(key);
  if (!p) {
    const mine: Promise<LoRAWasm> = loadEngine(o).then((engine) => new LoRAWasm(engine, () => {
      if (memo.get(key) === mine) memo.delete(key);
    }));
    p = mine;
    memo.set(key, p);
    p.catch(() => memo.delete(key));
  }
  return p;
}

function memoKey(o: InitOptions): string {
  // threads left out: 'auto' for the package's own builds (the same instance as threads: 'auto'), else as the module given decides
  const base = `${o.build ?? o.simd ?? 'auto'}|${o.maxMemoryBytes ?? ''}|${o.threads ?? (o.wasm === undefined ? 'auto' : 'default')}`;
  if (o.wasm === undefined) return base;
  if (typeof o.wasm === 'string' || o.wasm instanceof URL) return `${base}|${String(o.wasm)}`;
  return `${base}|${++uniqueKeys}`; // bytes, modules and per-build maps are not compared: a fresh instance each time
}
