/**
 * Browser stand-in for thread.ts: a classic Web Worker from a Blob URL, so
 * nothing has to be served (cross-origin-isolated pages allow blob: workers;
 * a Content-Security-Policy without `worker-src blob:` does not).
 */
import type { Thread } from './thread.js';

export type { Thread };

export async function startThread(source: string, onExit: (reason: string) => void): Promise<Thread> {
  const url = URL.createObjectURL(new Blob([source], { type: 'text/javascript' }));
  const worker = new Worker(url, { name: 'lora-wasm' });
  URL.revokeObjectURL(url);
  let exited = false;
  let settle: { resolve: () => void; reject: (e: Error) => void } | undefined;
  const ready = new Promise<void>((resolve, reject) => {
    settle = { resolve, reject };
  });
  ready.catch(() => {});
  worker.onmessage = (e: MessageEvent<{ type: string; message?: string }>) => {
    if (e.data.type === 'ready') settle?.resolve();
    else if (e.data.type === 'error') settle?.reject(new Error(e.data.message));
  };
  worker.onerror = (e: ErrorEvent) => {
    e.preventDefault();
    settle?.reject(new Error(e.message || 'the worker script failed'));
    exited = true;
    onExit(e.message || 'error');
  };
  return {
    start: (message) => worker.postMessage(message),
    ready,
    alive: () => !exited,
    release: () => {},
    terminate: () => {
      exited = true;
      worker.terminate();
    },
  };
}

/** Logical cores as the browser reports them. */
export async function availableCores(): Promise<number> {
  return globalThis.navigator?.hardwareConcurrency ?? 1;
}

/** Shared memory needs a cross-origin-isolated page (COOP: same-origin, COEP: require-corp). */
export function sharedMemoryAvailable(): { ok: boolean; why?: string } {
  if (typeof SharedArrayBuffer !== 'function' || globalThis.crossOriginIsolated === false) {
    return { ok: false, why: 'this page is not cross-origin isolated (it needs the headers Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp)' };
  }
  if (typeof Worker !== 'function') return { ok: false, why: 'this context cannot start Web Workers' };
  return { ok: true };
}
