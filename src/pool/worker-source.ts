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
 *   start message { module, memory, control, slot, names, layout, spinMs }
 *   → instantiate the module on the shared memory (the module has no data
 *     segments, so this writes nothing to memory), set READY, post 'ready';
 *   → loop: wait until SEQ changes (polling for spinMs by the clock, then in
 *     Atomics.wait); then claim jobs of the current run by compare-and-swap on
 *     their STATE, PREFER first, then any still open, until none is left: run
 *     names[FN](...ARGS), store RESULT and STATUS, mark the job done, decrement
 *     PENDING and notify the caller on zero.
 * Jobs are claimed, not assigned, so a worker that wakes late loses its job to
 * a thread that is free (the caller included) instead of holding up the run.
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
    const slot = (L.slotsByte + msg.slot * L.slotBytes) / 4;
    let fns;
    try {
      const instance = await WebAssembly.instantiate(msg.module, { env: { memory: msg.memory } });
      fns = msg.names.map((name) => instance.exports[name]);
    } catch (e) {
      post({ type: 'error', message: String((e && e.message) || e) });
      return;
    }
    const mine = -3 - msg.slot; // a job's STATE while this worker runs it
    const args = [];
    const runJob = (j) => {
      const w = (L.jobsByte + j * L.jobBytes) / 4;
      const f = (L.jobsByte + j * L.jobBytes) / 8;
      I[w + L.taker] = msg.slot;
      if (node && I[slot + L.kill] === 1) process.exit(70);
      const n = I[w + L.nargs];
      args.length = n;
      for (let i = 0; i < n; i++) args[i] = F[f + L.argsByte / 8 + i];
      try {
        const r = fns[I[w + L.fn]].apply(null, args);
        F[f + L.resultByte / 8] = typeof r === 'number' ? r : 0;
        I[w + L.status] = 0;
      } catch (e) {
        const text = String((e && e.message) || e).slice(0, L.messageChars);
        const chars = new Uint16Array(msg.control, L.slotsByte + msg.slot * L.slotBytes + L.messageByte, L.messageChars);
        for (let i = 0; i < text.length; i++) chars[i] = text.charCodeAt(i);
        I[slot + L.msgLen] = text.length;
        I[w + L.status] = 1;
      }
      Atomics.store(I, w + L.state, L.doneState);
      if (Atomics.sub(I, L.pending, 1) === 1) Atomics.notify(I, L.pending);
    };
    const claim = (run, j) => Atomics.compareExchange(I, (L.jobsByte + j * L.jobBytes) / 4 + L.state, run, mine) === run;
    let seen = Atomics.load(I, slot + L.seq);
    Atomics.store(I, slot + L.ready, 1);
    post({ type: 'ready' });
    const now = () => performance.now();
    for (;;) {
      // poll for spinMs (by the clock) before sleeping, and again after each run: an op is several
      // runs with a little work of the caller's between them, and a sleeping thread wakes late
      let until = now() + msg.spinMs;
      let polls = 0;
      while (Atomics.load(I, slot + L.seq) === seen) {
        if ((++polls & 63) !== 0 || now() < until) continue;
        Atomics.wait(I, slot + L.seq, seen);
        until = now() + msg.spinMs;
      }
      seen = Atomics.load(I, slot + L.seq);
      if (I[slot + L.stop] === 1) break;
      // RUN is published after the run's jobs and COUNT: a job of another run never matches it
      const run = Atomics.load(I, L.run);
      const count = Atomics.load(I, L.count);
      const first = I[slot + L.prefer];
      if (first < count && claim(run, first)) runJob(first);
      if (Atomics.load(I, L.steal) === 1) for (let j = 0; j < count; j++) if (claim(run, j)) runJob(j);
    }
    Atomics.store(I, slot + L.ready, 0);
    if (node) port.close();
    else self.close();
  };
  if (node) port.once('message', start);
  else self.onmessage = (e) => { self.onmessage = null; start(e.data); };
})();
`;
