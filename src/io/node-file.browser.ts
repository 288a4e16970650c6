/** Browser stand-in for node-file.ts: there is no file system; read Files and Blobs with blobSource. */
import { LoRAEnvironmentError } from '../errors.js';
import type { ByteSource } from './source.js';
import type { AtomicFile, AtomicFolder } from './node-file.js';

export type { AtomicFile, AtomicFolder } from './node-file.js';

export async function fileSource(path: string): Promise<ByteSource> {
  throw new LoRAEnvironmentError(`cannot open ${path} in a browser: pass a File or Blob (blobSource) or the bytes`);
}

export async function atomicFile(path: string): Promise<AtomicFile> {
  throw new LoRAEnvironmentError(`cannot write ${path} in a browser: encode the file in memory and offer it as a download`);
}

export async function atomicFolder(path: string): Promise<AtomicFolder> {
  throw new LoRAEnvironmentError(`cannot write ${path} in a browser: encode the files in memory and offer them as downloads`);
}

/** No temps in a browser: nothing to clear. */
export async function clearStaleTemps(_path: string): Promise<string[]> {
  return [];
}

/** No temps in a browser: nothing to remove. */
export function abortOpenTempsSync(): string[] {
  return [];
}
