/**
 * The pool's control block: a SharedArrayBuffer, separate from wasm memory,
 * through which the calling thread hands kernel calls to workers.
 *
 *   Int32 word  0            PENDING: worker jobs of the current run not yet finished
 *   slot s at byte HEADER_BYTES + s·SLOT_BYTES, as Int32 words from its base:
 *     SEQ     job sequence number; the caller bumps it to post a job
 *     FN      index of the kernel in the worker's name list (STOP_FN ends the worker)
 *     NARGS   number of f64 arguments
 *     STATUS  0 ok, 1 the call threw (MESSAGE holds why)
 *     DONE    the SEQ the worker finished last
 *     KILL    test hook: the worker exits at its next job without reporting
 *     READY   1 once the worker has instantiated the module
 *     MSG_LEN length of MESSAGE in UTF-16 units
 *   f64 ARGS at byte ARGS_BYTE (16 of them), f64 RESULT at RESULT_BYTE,
 *   MESSAGE (UTF-16) at MESSAGE_BYTE, up to MESSAGE_CHARS units.
 *
 * The worker script (worker-source.ts) receives these numbers in its start
 * message, so this file is their only definition.
 */
export const HEADER_BYTES = 256;
export const SLOT_BYTES = 768;
export const PENDING = 0;

export const SEQ = 0;
export const FN = 1;
export const NARGS = 2;
export const STATUS = 3;
export const DONE = 4;
export const KILL = 5;
export const READY = 6;
export const MSG_LEN = 7;

export const ARGS_BYTE = 64;
export const MAX_ARGS = 16;
export const RESULT_BYTE = ARGS_BYTE + MAX_ARGS * 8;
export const MESSAGE_BYTE = 256;
export const MESSAGE_CHARS = (SLOT_BYTES - MESSAGE_BYTE) / 2;
export const STOP_FN = -1;

export interface ControlLayout {
  headerBytes: number;
  slotBytes: number;
  pending: number;
  seq: number;
  fn: number;
  nargs: number;
  status: number;
  done: number;
  kill: number;
  ready: number;
  msgLen: number;
  argsByte: number;
  resultByte: number;
  messageByte: number;
  messageChars: number;
  stopFn: number;
}

export const LAYOUT: ControlLayout = {
  headerBytes: HEADER_BYTES,
  slotBytes: SLOT_BYTES,
  pending: PENDING,
  seq: SEQ,
  fn: FN,
  nargs: NARGS,
  status: STATUS,
  done: DONE,
  kill: KILL,
  ready: READY,
  msgLen: MSG_LEN,
  argsByte: ARGS_BYTE,
  resultByte: RESULT_BYTE,
  messageByte: MESSAGE_BYTE,
  messageChars: MESSAGE_CHARS,
  stopFn: STOP_FN,
};

/** Int32 index of word `w` of slot `s`. */
export const slotWord = (s: number, w: number): number => (HEADER_BYTES + s * SLOT_BYTES) / 4 + w;
/** Float64 index of f64 `i` at byte `byte` of slot `s`. */
export const slotF64 = (s: number, byte: number, i = 0): number => (HEADER_BYTES + s * SLOT_BYTES + byte) / 8 + i;
