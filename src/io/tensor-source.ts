/**
 * TensorSource: what the facade's file readers (lw.loadTensors, lw.loadAdapter) accept as a
 * safetensors file, and the one function that opens any of them as a SafetensorsReader.
 */
import { fileSource } from './node-file.js';
import { SafetensorsReader } from './safetensors.js';
import { type ByteSource, toSource } from './source.js';

/**
 * A safetensors file: a path (Node only; relative to the working directory), its bytes, a Blob or
 * File, a ByteSource (bytesSource, blobSource, fileSource), or an open SafetensorsReader (left open:
 * the caller closes it).
 */
export type TensorSource = string | Uint8Array | ArrayBuffer | Blob | ByteSource | SafetensorsReader;

/**
 * A reader over any TensorSource: the reader itself when given one, else a new reader the caller
 * closes. Throws LoRATypeError for anything else (`what` names the argument), and closes the source
 * again when it is not a valid safetensors file.
 */
export async function openTensorSource(x: unknown, what: string): Promise<SafetensorsReader> {
  if (x instanceof SafetensorsReader) return x;
  const source: ByteSource = typeof x === 'string' ? await fileSource(x) : toSource(x, what);
  try {
    return await SafetensorsReader.open(source);
  } catch (e) {
    await source.close?.();
    throw e;
  }
}
