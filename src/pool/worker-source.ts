/**
 * The worker's whole program, as JavaScript source text.
 *
 * It is a string, not a function turned into text, because build tools
 * rewrite functions (tsx and esbuild's keepNames insert `__name(…)` calls,
 * Babel inserts helpers) and the worker has no access to the module scope
 * those rewrites point into. The same text runs as a Node worker_threads
 * worker (`eval: true`, CommonJS: `require` exists) and as a classic Web
 * Worker from a Blob URL. test/threads.test.ts and the Chromium suite run it.
 *
 * Protocol (layout in control.ts, sent in the start message):
 *   start message { module, memory, control, slot, names, layout, spin }
 *   → instantiate the module on the shared memory (the module has no data
 *     segments, so this writes nothing to memory), set READY, post 'ready';
 *   → loop: wait until SEQ changes, run names[FN](...ARGS), store RESULT and
 *     STATUS, set DONE = SEQ, decrement PENDING, notify the caller on zero.
 * A worker never allocates: every pointer it is given, scratch included, was
 * allocated by the calling thread's heap.
 */
export const WORKER_SOURCE = String.raw`'use strict';
(() => {
  const node = typeof process === 'object' && process !== null && !!(process.versions && process.versions.node);
  const port = node
    ? (typeof require === 'function' ? require('node:worker_threads') : process.getBuiltinModule('node:worker_threads')).parentPort
    : self;
  const post = (m) => port.postMessage(m);
  const start = async (msg) => {
    const L = msg.layout;
    const I = new Int32Array(msg.control);
    const F = new Float64Array(msg.control);
    const base = (L.headerBytes + msg.slot * L.slotBytes) / 4;
    const fbase = (L.headerBytes + msg.slot * L.slotBytes) / 8;
    let fns;
    try {
      const instance = await WebAssembly.instantiate(msg.module, { env: { memory: msg.memory } });
      fns = msg.names.map((name) => instance.exports[name]);
    } catch (e) {
      post({ type: 'error', message: String((e && e.message) || e) });
      return;
    }
    let seen = Atomics.load(I, base + L.seq);
    Atomics.store(I, base + L.ready, 1);
    post({ type: 'ready' });
    const args = [];
    for (;;) {
      let spins = msg.spin;
      while (Atomics.load(I, base + L.seq) === seen) {
        if (spins > 0) spins--;
        else Atomics.wait(I, base + L.seq, seen);
      }
      seen = Atomics.load(I, base + L.seq);
      const fn = I[base + L.fn];
      if (fn === L.stopFn) break;
      if (node && I[base + L.kill] === 1) process.exit(70);
      const n = I[base + L.nargs];
      args.length = n;
      for (let i = 0; i < n; i++) args[i] = F[fbase + L.argsByte / 8 + i];
      try {
        const r = fns[fn].apply(null, args);
        F[fbase + L.resultByte / 8] = typeof r === 'number' ? r : 0;
        I[base + L.status] = 0;
      } catch (e) {
        const text = String((e && e.message) || e).slice(0, L.messageChars);
        const chars = new Uint16Array(msg.control, L.headerBytes + msg.slot * L.slotBytes + L.messageByte, L.messageChars);
        for (let i = 0; i < text.length; i++) chars[i] = text.charCodeAt(i);
        I[base + L.msgLen] = text.length;
        I[base + L.status] = 1;
      }
      Atomics.store(I, base + L.done, seen);
      if (Atomics.sub(I, L.pending, 1) === 1) Atomics.notify(I, L.pending);
    }
    Atomics.store(I, base + L.ready, 0);
    if (node) port.close();
    else self.close();
  };
  if (node) port.once('message', start);
  else self.onmessage = (e) => { self.onmessage = null; start(e.data); };
})();
`;
