/**
 * One worker thread, as the pool sees it (Node: worker_threads).
 * The browser bundles swap this module for thread.browser.ts (Web Workers).
 */
export interface Thread {
  /** Sends the start message (structured clone: the Module, the shared Memory and SharedArrayBuffer are shared, not copied). */
  start(message: unknown): void;
  /** Resolves when the worker reports 'ready'; rejects with its error or its exit. */
  readonly ready: Promise<void>;
  /**
   * False once the thread has stopped. Synchronous, so a caller blocked on
   * Atomics.wait can see a worker that died mid-job.
   */
  alive(): boolean;
  /** Lets the process exit while this worker idles (Node). */
  release(): void;
  terminate(): void;
}

/** Node: a worker_threads Worker running `source` (CommonJS, eval). */
export async function startThread(source: string, onExit: (reason: string) => void): Promise<Thread> {
  const { Worker } = await import(/* webpackIgnore: true */ /* @vite-ignore */ 'node:worker_threads');
  // execArgv: [] — the worker is plain CommonJS and needs none of the parent's loaders or
  // --input-type; V8 flags such as --experimental-wasm-relaxed-simd are process-wide anyway.
  const worker = new Worker(source, { eval: true, name: 'lora-wasm', execArgv: [] });
  let exited = false;
  let settle: { resolve: () => void; reject: (e: Error) => void } | undefined;
  const ready = new Promise<void>((resolve, reject) => {
    settle = { resolve, reject };
  });
  ready.catch(() => {}); // observed by the pool; never an unhandled rejection
  worker.on('message', (m: { type: string; message?: string }) => {
    if (m.type === 'ready') settle?.resolve();
    else if (m.type === 'error') settle?.reject(new Error(m.message));
  });
  worker.on('error', (e: Error) => settle?.reject(e));
  worker.on('exit', (code: number) => {
    exited = true;
    settle?.reject(new Error(`the worker exited with code ${code} before it was ready`));
    onExit(`exit code ${code}`);
  });
  return {
    start: (message) => worker.postMessage(message),
    ready,
    // Node 20 answers a stopped worker's event-loop idle time with -1, synchronously
    // (the 'exit' event itself waits for this thread's event loop).
    alive: () => !exited && worker.performance.eventLoopUtilization().idle >= 0,
    release: () => worker.unref(),
    terminate: () => {
      exited = true;
      void worker.terminate();
    },
  };
}

/** Cores this process may use (Node: os.availableParallelism()). */
export async function availableCores(): Promise<number> {
  const os = await import(/* webpackIgnore: true */ /* @vite-ignore */ 'node:os');
  return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
}

/** Whether threads can share memory here (Node: always). */
export function sharedMemoryAvailable(): { ok: boolean; why?: string } {
  return typeof SharedArrayBuffer === 'function' ? { ok: true } : { ok: false, why: 'SharedArrayBuffer is not available' };
}
