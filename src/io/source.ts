/**
 * Byte sources the file readers read from, at offsets: bytes in memory (zero-copy), a Blob or File
 * (browsers), or a file on disk (Node, through a file handle; src/io/node-file.ts).
 */
import { LoRATypeError, describeValue } from '../errors.js';

export interface ByteSource {
  /** For error messages: a path, a file name, or '(bytes)'. */
  readonly name: string;
  readonly size: number;
  /** `length` bytes from `offset` (the caller keeps inside [0, size)). */
  read(offset: number, length: number): Promise<Uint8Array>;
  /** `target.length` bytes from `offset` straight into `target` (for example a view of wasm memory): no buffer in between. */
  readInto?(offset: number, target: Uint8Array): Promise<void>;
  /** Node: the file's path, so a writer can copy it in the kernel (fs.copyFile). */
  readonly path?: string;
  /** Browsers: the Blob or File itself, so a writer can reference its ranges without reading them. */
  readonly blob?: Blob;
  close?(): Promise<void>;
}

/** Reads `target.length` bytes at `offset` into `target`, through readInto where the source has it. */
export async function readInto(source: ByteSource, offset: number, target: Uint8Array): Promise<void> {
  if (source.readInto) await source.readInto(offset, target);
  else target.set(await source.read(offset, target.length));
}

/** Bytes already in memory: reads are views, no copy. */
export function bytesSource(data: ArrayBuffer | ArrayBufferView, name = '(bytes)'): ByteSource {
  const u8 = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return {
    name, size: u8.byteLength,
    read: async (offset, length) => u8.subarray(offset, offset + length),
    readInto: async (offset, target) => target.set(u8.subarray(offset, offset + target.length)),
  };
}

/** A Blob or File (browsers, and Node ≥ 20): each read slices and reads only that range. */
export function blobSource(blob: Blob, name = (blob as File).name ?? '(blob)'): ByteSource {
  return { name, size: blob.size, blob, read: async (offset, length) => new Uint8Array(await blob.slice(offset, offset + length).arrayBuffer()) };
}

/** A ByteSource from anything the readers accept (a path needs Node: see openSource in node-file.ts). */
export function toSource(x: unknown, what: string): ByteSource {
  if (x instanceof ArrayBuffer || ArrayBuffer.isView(x)) return bytesSource(x);
  if (typeof Blob !== 'undefined' && x instanceof Blob) return blobSource(x);
  if (typeof x === 'object' && x !== null && typeof (x as ByteSource).read === 'function' && typeof (x as ByteSource).size === 'number') return x as ByteSource;
  throw new LoRATypeError(`${what} must be bytes (ArrayBuffer, Uint8Array), a Blob or File, or a ByteSource, got ${describeValue(x)}`);
}
