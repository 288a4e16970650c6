/**
 * The pool's control block: a SharedArrayBuffer, separate from wasm memory,
 * through which the calling thread hands kernel calls (jobs) to workers.
 *
 *   header, Int32 words:
 *     PENDING  jobs of the current run not yet finished
 *     RUN      the current run's number (0 … 2³¹−1, wrapping)
 *     COUNT    jobs in the current run
 *     STEAL    1: a free worker takes any open job; 0: only its PREFER job (a test hook)
 *   job j at byte JOBS_BYTE + j·JOB_BYTES, as Int32 words from its base:
 *     STATE    RUN while open; taken(t) once thread t claimed it (compare-and-swap,
 *              so each job runs exactly once); DONE_STATE when finished
 *     FN       index of the kernel in the worker's name list
 *     NARGS    number of f64 arguments
 *     STATUS   0 ok, 1 the call threw (the taker's slot MESSAGE holds why)
 *     TAKER    the worker slot that ran it (written by that worker)
 *   and f64 ARGS at byte ARGS_BYTE (MAX_ARGS of them), f64 RESULT at RESULT_BYTE.
 *   worker slot s at byte SLOTS_BYTE + s·SLOT_BYTES, as Int32 words from its base:
 *     SEQ      the caller bumps it (and notifies) to wake the worker for a run
 *     PREFER   the job the worker claims first (it then takes any job still open)
 *     STOP     1: the worker ends at its next wake-up
 *     KILL     test hook: the worker exits at its next job without reporting
 *     READY    1 once the worker has instantiated the module
 *     MSG_LEN  length of MESSAGE in UTF-16 units
 *   and MESSAGE (UTF-16) at MESSAGE_BYTE, up to MESSAGE_CHARS units.
 *
 * The worker script (worker-source.ts) receives these numbers in its start
 * message, so this file is their only definition.
 */
export const HEADER_BYTES = 64;
export const PENDING = 0;
export const RUN = 1;
export const COUNT = 2;
export const STEAL = 3;

/** Jobs in one run, at most (the scheduler splits a call into at most threads × a few parts). */
export const MAX_JOBS = 64;
export const JOBS_BYTE = HEADER_BYTES;
export const JOB_BYTES = 168;
export const STATE = 0;
export const FN = 1;
export const NARGS = 2;
export const STATUS = 3;
export const TAKER = 4;
export const ARGS_BYTE = 32;
export const MAX_ARGS = 16;
export const RESULT_BYTE = ARGS_BYTE + MAX_ARGS * 8;

export const SLOTS_BYTE = JOBS_BYTE + MAX_JOBS * JOB_BYTES;
export const SLOT_BYTES = 544;
export const SEQ = 0;
export const PREFER = 1;
export const STOP = 2;
export const KILL = 3;
export const READY = 4;
export const MSG_LEN = 5;
export const MESSAGE_BYTE = 32;
export const MESSAGE_CHARS = (SLOT_BYTES - MESSAGE_BYTE) / 2;

/** A job's STATE once finished. */
export const DONE_STATE = -1;
/** The taker number of the calling thread (workers are 0 … workers − 1). */
export const CALLER = -1;
/** A job's STATE while thread `t` (a worker slot, or CALLER) runs it: negative, so never a RUN number. */
export const taken = (t: number): number => -3 - t;
/** The thread that took a job, from its STATE (≤ taken(CALLER)). */
export const takerOf = (state: number): number => -3 - state;

export interface ControlLayout {
  pending: number;
  run: number;
  count: number;
  steal: number;
  jobsByte: number;
  jobBytes: number;
  state: number;
  fn: number;
  nargs: number;
  status: number;
  taker: number;
  argsByte: number;
  resultByte: number;
  slotsByte: number;
  slotBytes: number;
  seq: number;
  prefer: number;
  stop: number;
  kill: number;
  ready: number;
  msgLen: number;
  messageByte: number;
  messageChars: number;
  doneState: number;
}

export const LAYOUT: ControlLayout = {
  pending: PENDING,
  run: RUN,
  count: COUNT,
  steal: STEAL,
  jobsByte: JOBS_BYTE,
  jobBytes: JOB_BYTES,
  state: STATE,
  fn: FN,
  nargs: NARGS,
  status: STATUS,
  taker: TAKER,
  argsByte: ARGS_BYTE,
  resultByte: RESULT_BYTE,
  slotsByte: SLOTS_BYTE,
  slotBytes: SLOT_BYTES,
  seq: SEQ,
  prefer: PREFER,
  stop: STOP,
  kill: KILL,
  ready: READY,
  msgLen: MSG_LEN,
  messageByte: MESSAGE_BYTE,
  messageChars: MESSAGE_CHARS,
  doneState: DONE_STATE,
};

/** Bytes of a control block for `workers` workers. */
export const controlBytes = (workers: number): number => SLOTS_BYTE + workers * SLOT_BYTES;
/** Int32 index of word `w` of job `j`. */
export const jobWord = (j: number, w: number): number => (JOBS_BYTE + j * JOB_BYTES) / 4 + w;
/** Float64 index of f64 `i` at byte `byte` of job `j`. */
export const jobF64 = (j: number, byte: number, i = 0): number => (JOBS_BYTE + j * JOB_BYTES + byte) / 8 + i;
/** Int32 index of word `w` of slot `s`. */
export const slotWord = (s: number, w: number): number => (SLOTS_BYTE + s * SLOT_BYTES) / 4 + w;
/** Byte offset of slot `s`'s MESSAGE. */
export const messageByte = (s: number): number => SLOTS_BYTE + s * SLOT_BYTES + MESSAGE_BYTE;
