/**
 * The worker pool: threads that run kernel calls on the shared wasm memory.
 *
 * Only the kernel layer uses it. A run is a list of jobs `[kernel, ...args]`
 * (the kernel layer's KernelCall tuples, typed from the wasm interface in src/kernel/kernels.ts),
 * published in the control block (control.ts). Each job is claimed by one thread
 * (compare-and-swap): the caller takes the first, each woken worker its own, and
 * every thread that is free takes whatever is still open, so a worker that wakes
 * late (after an idle spell the OS may take milliseconds to run it) costs at most
 * the job it took, never a whole share: a run is never much slower than on one
 * thread. Then the caller waits for the jobs still running:
 *   - Node's main thread and workers block in Atomics.wait (in 10 ms slices,
 *     checking between slices that every busy worker is still alive);
 *   - a browser's main thread may not block, so it spins on Atomics.load after
 *     doing its own share, as Emscripten's pthreads do. The synchronous API
 *     stays synchronous; a page that must stay responsive runs lora-wasm in
 *     a Web Worker (there Atomics.wait is allowed).
 *
 * Workers never allocate and never write outside the pointers of their call.
 * A worker that dies mid-run makes that run throw a LoRAError naming the
 * worker; its slot is respawned in the background, and until it is back the
 * remaining threads take the work (results do not depend on the thread count).
 */
import { LoRAEnvironmentError, LoRAError } from '../errors.js';

import {
  ARGS_BYTE, CALLER, COUNT, DONE_STATE, FN, KILL, LAYOUT, MAX_ARGS, MAX_JOBS, MSG_LEN, NARGS, PENDING, PREFER, READY, RESULT_BYTE, RUN, SEQ, STEAL,
  STATE, STATUS, STOP, TAKER, controlBytes, jobF64, jobWord, messageByte, slotWord, takerOf, taken,
} from './control.js';
import { type Thread, startThread } from './thread.js';
import { WORKER_SOURCE } from './worker-source.js';

/**
 * A job as the pool moves it: an export's name and its numeric arguments. The pool knows no
 * kernel; its caller passes its own, narrower tuples (the kernel layer's KernelCall, derived from
 * the typed wasm interface) and gets them back typed in `own`.
 */
export type Job = readonly [name: string, ...args: number[]];

/**
 * How long (by the clock) a worker polls for its next job after a run or a wake-up before it sleeps
 * in Atomics.wait (OpenMP's "blocktime", 200 ms by default there), and how long the caller polls for
 * the jobs still running before it sleeps.
 * Workers poll long: a thread asleep in Atomics.wait on an idle machine wakes milliseconds late (its
 * core has gone idle; in a VM the vCPU halts), so with 0.1 ms a merge after a 30 ms gap got no help
 * from the second thread (1.0× against 1 thread, 4096² r=8) and with 50 ms it gets 1.79× (1024²
 * r=16: 0.88× → 1.47×), measured with bench/threads-idle.ts on a quiet 2-core machine. The cost is
 * up to 50 ms of one core per worker after the last call. On a machine oversubscribed several times
 * over, polling takes time from the threads doing the work; the caller polls briefly for that reason.
 */
export const WORKER_SPIN_MS = 50;
export const CALLER_SPIN_MS = 0.1;
/** How long the caller sleeps between checks that its busy workers are alive. */
const WAIT_SLICE_MS = 10;

interface Slot {
  index: number;
  thread: Thread | undefined;
  state: 'starting' | 'ready' | 'dead' | 'stopped';
  /** Why the last respawn failed, for status() (and so lw.threadsNote). */
  failure?: string;
}

export interface PoolStatus {
  /** Workers that can take jobs now. */
  ready: number;
  /** Workers requested at init (threads − 1). */
  workers: number;
  /** Why a worker is missing, when one is. */
  problems: string[];
}

export class WorkerPool {
  readonly #slots: Slot[];
  readonly #i32: Int32Array;
  readonly #f64: Float64Array;
  readonly #control: SharedArrayBuffer;
  readonly #module: WebAssembly.Module;
  readonly #memory: WebAssembly.Memory;
  readonly #names: readonly string[];
  readonly #fnIndex: Map<string, number>;
  readonly #canBlock: boolean;
  #running = false;
  #disposed = false;
  /** The current run's number (RUN): the STATE of its open jobs. */
  #run = 0;
  /** @internal test hook: false makes job i + 1 wait for worker i (nothing is stolen), so a test can aim at one worker. */
  stealing = true;
  /** Runs that used at least one worker (for tests and benchmarks). */
  runs = 0;

  private constructor(workers: number, module: WebAssembly.Module, memory: WebAssembly.Memory, names: readonly string[]) {
    this.#control = new SharedArrayBuffer(controlBytes(workers));
    this.#i32 = new Int32Array(this.#control);
    this.#f64 = new Float64Array(this.#control);
    this.#module = module;
    this.#memory = memory;
    this.#names = names;
    this.#fnIndex = new Map(names.map((n, i) => [n, i]));
    this.#slots = Array.from({ length: workers }, (_, index) => ({ index, thread: undefined, state: 'starting' as const }));
    for (let j = 0; j < MAX_JOBS; j++) this.#i32[jobWord(j, STATE)] = DONE_STATE;
    this.#canBlock = canBlock(this.#i32);
  }

  /** Starts `workers` workers on `memory` (shared) running `module`; resolves when all are ready. */
  static async start(workers: number, module: WebAssembly.Module, memory: WebAssembly.Memory, names: readonly string[]): Promise<WorkerPool> {
    const pool = new WorkerPool(workers, module, memory, names);
    try {
      await Promise.all(pool.#slots.map((s) => pool.#spawn(s)));
    } catch (e) {
      pool.dispose();
      throw e;
    }
    return pool;
  }

  /** Workers able to take a job now (a respawned worker counts once it is ready). */
  get available(): number {
    let n = 0;
    for (const s of this.#slots) if (this.#isReady(s)) n++;
    return n;
  }

  status(): PoolStatus {
    const problems = this.#slots.filter((s) => s.state !== 'ready' && s.failure).map((s) => `worker ${s.index}: ${s.failure}`);
    return { ready: this.available, workers: this.#slots.length, problems };
  }

  /**
   * Runs every call, on this thread through `own` or on a worker, and returns
   * every call's result in order. Waits for every job that was started, also
   * when one throws, so no worker still writes when this returns.
   */
  run<C extends Job>(fn: string, calls: readonly C[], own: (call: C) => number, parts?: readonly string[]): number[] {
    if (this.#running) throw new LoRAError(`${fn}: internal error, the worker pool was re-entered`);
    if (calls.length > MAX_JOBS) throw new LoRAError(`${fn}: internal error, ${calls.length} jobs for a pool that takes ${MAX_JOBS}`);
    this.#running = true;
    this.runs++;
    const i32 = this.#i32;
    const n = calls.length;
    const results = new Array<number>(n).fill(0);
    const byCaller = new Array<boolean>(n).fill(false);
    let ownError: unknown;
    try {
      const run = (this.#run = (this.#run + 1) & 0x7fffffff);
      // job 0 is this thread's from the start; the others are open
      calls.forEach((call, j) => this.#publish(j, call, j === 0 ? taken(CALLER) : run));
      Atomics.store(i32, PENDING, n);
      Atomics.store(i32, STEAL, this.stealing ? 1 : 0);
      Atomics.store(i32, COUNT, n);
      Atomics.store(i32, RUN, run);
      let woken = 0;
      const prefer: Slot[] = [];
      for (const s of this.#slots) {
        if (woken === n - 1) break;
        if (!this.#isReady(s)) continue;
        prefer[++woken] = s;
        Atomics.store(i32, slotWord(s.index, PREFER), woken);
        Atomics.add(i32, slotWord(s.index, SEQ), 1);
        Atomics.notify(i32, slotWord(s.index, SEQ), 1);
      }
      // this thread: the first job, then (unless a job threw here) any job no worker has taken yet
      const stealing = this.stealing || woken < n - 1;
      for (let j = 0; j < n && ownError === undefined; j++) {
        if (j > 0 && (!stealing || Atomics.compareExchange(i32, jobWord(j, STATE), run, taken(CALLER)) !== run)) continue;
        byCaller[j] = true;
        try {
          results[j] = own(calls[j]!);
        } catch (e) {
          ownError = e;
        }
        this.#finish(j);
      }
      if (ownError !== undefined) {
        // nothing more starts: the open jobs are withdrawn, and the call throws once the taken ones are done
        for (let j = 0; j < n; j++) if (Atomics.compareExchange(i32, jobWord(j, STATE), run, DONE_STATE) === run) this.#finish(j, false);
      }
      const dead = this.#await(n, prefer);
      if (dead.length > 0) {
        const slots = [...new Set(dead.map(([s]) => s.index + 1))];
        throw new LoRAError(
          `${fn}: worker thread ${slots.join(', ')} stopped while running its share of this call ` +
            `(${dead.map(([, j]) => parts?.[j] ?? describeCall(calls[j]!)).join('; ')}); the output of this call is incomplete and must not be used. ` +
            'The worker is being restarted; until it is back, calls run on the remaining threads.',
        );
      }
      if (ownError !== undefined) throw ownError;
      for (let j = 0; j < n; j++) {
        if (byCaller[j]) continue;
        if (i32[jobWord(j, STATUS)] === 1) {
          const s = i32[jobWord(j, TAKER)]!;
          const len = i32[slotWord(s, MSG_LEN)]!;
          const message = String.fromCharCode(...new Uint16Array(this.#control, messageByte(s), len));
          throw new LoRAError(`${fn}: internal error, the wasm kernel failed in worker thread ${s + 1} (${message}); please report this`);
        }
        results[j] = this.#f64[jobF64(j, RESULT_BYTE)]!;
      }
      return results;
    } finally {
      this.#running = false;
    }
  }

  /** Ends every worker. The pool cannot be used afterwards. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const s of this.#slots) {
      if (s.thread) {
        Atomics.store(this.#i32, slotWord(s.index, STOP), 1);
        Atomics.add(this.#i32, slotWord(s.index, SEQ), 1);
        Atomics.notify(this.#i32, slotWord(s.index, SEQ));
        s.thread.terminate();
      }
      s.state = 'stopped';
      s.thread = undefined;
    }
  }

  /** @internal test hook: worker `index` (0-based) exits at its next job without reporting, as a crashed thread would (Node). */
  killAtNextJob(index: number): void {
    Atomics.store(this.#i32, slotWord(index, KILL), 1);
  }

  /** @internal test hook: terminates worker `index` now, as if the system had killed it. */
  terminateWorker(index: number): void {
    this.#slots[index]?.thread?.terminate();
  }

  // ------------------------------------------------------------ internals

  #isReady(s: Slot): boolean {
    if (s.state === 'starting' && s.thread && Atomics.load(this.#i32, slotWord(s.index, READY)) === 1) s.state = 'ready';
    return s.state === 'ready' && s.thread !== undefined && s.thread.alive();
  }

  /** Writes job j; its STATE (the run's number: open) goes last, so a worker that can claim it sees it whole. */
  #publish(j: number, call: Job, state: number): void {
    const [name, ...args] = call;
    const fnIndex = this.#fnIndex.get(name);
    if (fnIndex === undefined || args.length > MAX_ARGS) throw new LoRAError(`internal: cannot post ${name} to a worker`);
    const i32 = this.#i32;
    const a0 = jobF64(j, ARGS_BYTE);
    for (let i = 0; i < args.length; i++) this.#f64[a0 + i] = args[i]!;
    i32[jobWord(j, FN)] = fnIndex;
    i32[jobWord(j, NARGS)] = args.length;
    i32[jobWord(j, STATUS)] = 0;
    Atomics.store(i32, jobWord(j, STATE), state);
  }

  /** Job j is finished (by this thread, or withdrawn). */
  #finish(j: number, done = true): void {
    if (done) Atomics.store(this.#i32, jobWord(j, STATE), DONE_STATE);
    Atomics.sub(this.#i32, PENDING, 1);
  }

  /**
   * Waits until every job of the run is finished or its worker is dead (the one that took it, or
   * for a job still open, the one it was meant for); returns the dead workers' [slot, job] pairs
   * (the slots are marked and being respawned).
   */
  #await(n: number, prefer: readonly Slot[]): [Slot, number][] {
    const i32 = this.#i32;
    const dead: [Slot, number][] = [];
    let spins = 0;
    if (this.#canBlock) {
      // poll first: a caller asleep in Atomics.wait is woken late (it may have lost its core)
      const until = performance.now() + CALLER_SPIN_MS;
      let polls = 0;
      while (Atomics.load(i32, PENDING) !== 0 && ((++polls & 63) !== 0 || performance.now() < until));
    }
    for (;;) {
      const pending = Atomics.load(i32, PENDING);
      if (pending === 0) break;
      if (this.#canBlock) Atomics.wait(i32, PENDING, pending, WAIT_SLICE_MS);
      else if (++spins % 4096 !== 0) continue;
      for (let j = 0; j < n; j++) {
        const state = Atomics.load(i32, jobWord(j, STATE));
        if (state === DONE_STATE || state === taken(CALLER) || dead.some(([, k]) => k === j)) continue;
        const s = state >= 0 ? prefer[j] : this.#slots[takerOf(state)];
        if (!s || (s.thread && s.thread.alive())) continue;
        // an open job is withdrawn; a taken one is re-checked (the worker may have finished it and then died)
        if (state >= 0 ? Atomics.compareExchange(i32, jobWord(j, STATE), state, DONE_STATE) !== state : Atomics.load(i32, jobWord(j, STATE)) !== state) continue;
        dead.push([s, j]);
        Atomics.sub(i32, PENDING, 1);
      }
      for (const [s] of dead) this.#lost(s, 'it stopped while running a job');
    }
    return dead;
  }

  /** Marks a slot dead and respawns it in the background. */
  #lost(s: Slot, why: string): void {
    if (s.state === 'dead' || s.state === 'stopped') return;
    s.thread?.terminate();
    s.thread = undefined;
    s.state = 'dead';
    s.failure = why;
    if (!this.#disposed) {
      this.#spawn(s).catch((e: Error) => {
        s.failure = `could not be restarted: ${e.message}`;
        console.warn(`lora-wasm: worker thread ${s.index + 1} ${s.failure}; continuing with ${this.available + 1} threads`);
      });
    }
  }

  async #spawn(s: Slot): Promise<void> {
    const i32 = this.#i32;
    for (const w of [SEQ, PREFER, STOP, READY, KILL, MSG_LEN]) Atomics.store(i32, slotWord(s.index, w), 0);
    s.state = 'starting';
    const thread = await startThread(WORKER_SOURCE, () => {
      // an idle worker that exits is noticed here; a busy one by #await
      if (s.thread === thread && !this.#disposed && !this.#running) this.#lost(s, 'it exited');
    });
    if (this.#disposed) {
      thread.terminate();
      return;
    }
    s.thread = thread;
    thread.start({
      module: this.#module, memory: this.#memory, control: this.#control, slot: s.index, names: this.#names, layout: LAYOUT, spinMs: WORKER_SPIN_MS,
    });
    try {
      await thread.ready;
    } catch (e) {
      if (s.thread === thread) {
        s.thread = undefined;
        s.state = 'dead';
      }
      thread.terminate();
      throw new LoRAEnvironmentError(`worker thread ${s.index + 1} could not start: ${(e as Error).message}`, { cause: e });
    }
    thread.release();
    s.failure = undefined;
    if (s.thread === thread) s.state = 'ready';
  }
}

/** Whether this thread may block in Atomics.wait (not a browser's main thread). */
function canBlock(i32: Int32Array): boolean {
  try {
    Atomics.wait(i32, PENDING, 1, 0); // PENDING is 0: returns 'not-equal' at once where waiting is allowed
    return true;
  } catch {
    return false;
  }
}

const describeCall = (call: Job): string => `${call[0]}(${call.slice(1).join(', ')})`;
