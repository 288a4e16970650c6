/**
 * The worker pool: threads that run kernel calls on the shared wasm memory.
 *
 * Only the kernel layer uses it. A run is a list of jobs `[kernel, ...args]`
 * (the kernel layer's KernelCall tuples, typed from the wasm interface in src/kernel/kernels.ts):
 * the first runs on the calling thread, the others are posted to idle workers
 * through the control block (control.ts), and the caller waits for them:
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
  ARGS_BYTE, DONE, FN, KILL, LAYOUT, MAX_ARGS, MESSAGE_BYTE, MSG_LEN, NARGS, PENDING, READY, RESULT_BYTE, SEQ, SLOT_BYTES, STATUS, STOP_FN,
  HEADER_BYTES, slotF64, slotWord,
} from './control.js';
import { type Thread, startThread } from './thread.js';
import { WORKER_SOURCE } from './worker-source.js';

/**
 * A job as the pool moves it: an export's name and its numeric arguments. The pool knows no
 * kernel; its caller passes its own, narrower tuples (the kernel layer's KernelCall, derived from
 * the typed wasm interface) and gets them back typed in `own`.
 */
export type Job = readonly [name: string, ...args: number[]];

/** Iterations a worker polls for the next job before it sleeps in Atomics.wait (a few µs: back-to-back calls skip the wake-up). */
const WORKER_SPIN = 20000;
/** How long the caller sleeps between checks that its busy workers are alive. */
const WAIT_SLICE_MS = 10;

interface Slot {
  index: number;
  thread: Thread | undefined;
  state: 'starting' | 'ready' | 'dead' | 'stopped';
  /** Why the last respawn failed, for status() (and so lw.threadsNote). */
  failure?: string;
  /** SEQ of the job posted last. */
  seq: number;
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
  /** Runs that used at least one worker (for tests and benchmarks). */
  runs = 0;

  private constructor(workers: number, module: WebAssembly.Module, memory: WebAssembly.Memory, names: readonly string[]) {
    this.#control = new SharedArrayBuffer(HEADER_BYTES + workers * SLOT_BYTES);
    this.#i32 = new Int32Array(this.#control);
    this.#f64 = new Float64Array(this.#control);
    this.#module = module;
    this.#memory = memory;
    this.#names = names;
    this.#fnIndex = new Map(names.map((n, i) => [n, i]));
    this.#slots = Array.from({ length: workers }, (_, index) => ({ index, thread: undefined, state: 'starting' as const, seq: 0 }));
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
   * Runs calls[0] through `own` on this thread and calls[1..] on workers, and
   * returns every call's result in order. Waits for every worker it started,
   * also when `own` throws, so no worker still writes when this returns.
   */
  run<C extends Job>(fn: string, calls: readonly C[], own: (call: C) => number, parts?: readonly string[]): number[] {
    if (this.#running) throw new LoRAError(`${fn}: internal error, the worker pool was re-entered`);
    const ready = this.#slots.filter((s) => this.#isReady(s));
    if (calls.length - 1 > ready.length) throw new LoRAError(`${fn}: internal error, ${calls.length - 1} jobs for ${ready.length} workers`);
    this.#running = true;
    this.runs++;
    const i32 = this.#i32;
    const busy = ready.slice(0, calls.length - 1);
    const results = new Array<number>(calls.length).fill(0);
    try {
      Atomics.store(i32, PENDING, busy.length);
      busy.forEach((s, j) => this.#post(s, calls[j + 1]!));
      let ownError: unknown;
      try {
        results[0] = own(calls[0]!);
      } catch (e) {
        ownError = e;
      }
      const dead = this.#await(busy);
      if (dead.length > 0) {
        throw new LoRAError(
          `${fn}: worker thread ${dead.map((s) => s.index + 1).join(', ')} stopped while running its share of this call ` +
            `(${dead.map((s) => parts?.[busy.indexOf(s) + 1] ?? describeCall(calls[busy.indexOf(s) + 1]!)).join('; ')}); the output of this call is incomplete and must not be used. ` +
            'The worker is being restarted; until it is back, calls run on the remaining threads.',
        );
      }
      if (ownError !== undefined) throw ownError;
      busy.forEach((s, j) => {
        if (i32[slotWord(s.index, STATUS)] === 1) {
          const len = i32[slotWord(s.index, MSG_LEN)]!;
          const chars = new Uint16Array(this.#control, HEADER_BYTES + s.index * SLOT_BYTES + MESSAGE_BYTE, len);
          const message = String.fromCharCode(...chars);
          throw new LoRAError(`${fn}: internal error, the wasm kernel failed in worker thread ${s.index + 1} (${message}); please report this`);
        }
        results[j + 1] = this.#f64[slotF64(s.index, RESULT_BYTE)]!;
      });
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
        Atomics.store(this.#i32, slotWord(s.index, FN), STOP_FN);
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

  #post(s: Slot, call: Job): void {
    const [name, ...args] = call;
    const fnIndex = this.#fnIndex.get(name);
    if (fnIndex === undefined || args.length > MAX_ARGS) throw new LoRAError(`internal: cannot post ${name} to a worker`);
    const i32 = this.#i32;
    const f64 = this.#f64;
    const a0 = slotF64(s.index, ARGS_BYTE);
    for (let i = 0; i < args.length; i++) f64[a0 + i] = args[i]!;
    i32[slotWord(s.index, FN)] = fnIndex;
    i32[slotWord(s.index, NARGS)] = args.length;
    s.seq = Atomics.add(i32, slotWord(s.index, SEQ), 1) + 1;
    Atomics.notify(i32, slotWord(s.index, SEQ), 1);
  }

  /** Waits until every busy slot is done or dead; returns the dead ones (marked and being respawned). */
  #await(busy: Slot[]): Slot[] {
    const i32 = this.#i32;
    const dead: Slot[] = [];
    let open = busy.slice();
    let spins = 0;
    for (;;) {
      open = open.filter((s) => Atomics.load(i32, slotWord(s.index, DONE)) !== s.seq);
      if (open.length === 0) break;
      if (this.#canBlock) {
        const pending = Atomics.load(i32, PENDING);
        if (pending !== 0) Atomics.wait(i32, PENDING, pending, WAIT_SLICE_MS);
      } else if (++spins % 4096 !== 0) {
        continue;
      }
      for (const s of open) {
        if (!s.thread || s.thread.alive()) continue;
        // re-check DONE: the worker may have finished its job and then died
        if (Atomics.load(i32, slotWord(s.index, DONE)) === s.seq) continue;
        dead.push(s);
      }
      if (dead.length > 0) {
        open = open.filter((s) => !dead.includes(s));
        Atomics.sub(i32, PENDING, dead.length);
        for (const s of dead) this.#lost(s, 'it stopped while running a job');
      }
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
    for (const w of [SEQ, DONE, READY, KILL, STATUS, MSG_LEN]) Atomics.store(i32, slotWord(s.index, w), 0);
    s.seq = 0;
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
      module: this.#module, memory: this.#memory, control: this.#control, slot: s.index, names: this.#names, layout: LAYOUT, spin: WORKER_SPIN,
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
