/**
 * Files on disk, for Node: a ByteSource over a file handle (reads at offsets, never the whole file)
 * and an atomic writer (a temp file in the same folder, fsync, rename). The browser bundles swap this
 * module for node-file.browser.ts, so they contain no node: import.
 */
import { LoRAError } from '../errors.js';
import type { ByteSource } from './source.js';

const fsp = () => import(/* webpackIgnore: true */ /* @vite-ignore */ 'node:fs/promises');

/** Opens a file for reading at offsets; close() it when done. */
export async function fileSource(path: string): Promise<ByteSource> {
  const fs = await fsp();
  const handle = await fs.open(path, 'r');
  const { size } = await handle.stat();
  return {
    name: path,
    size,
    async read(offset, length) {
      const buf = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) throw new LoRAError(`${path}: the file ended at byte ${offset + done} while reading ${length} bytes at ${offset}`);
        done += bytesRead;
      }
      return buf;
    },
    close: () => handle.close(),
  };
}

export interface AtomicFile {
  readonly path: string;
  write(bytes: Uint8Array): Promise<void>;
  /** fsync, close, and rename into place. */
  commit(): Promise<void>;
  /** Close and remove the temp file (after a failure): nothing appears at `path`. */
  abort(): Promise<void>;
}

/** A file that appears at `path` only on commit(); `force` allows replacing an existing file. */
export async function atomicFile(path: string, force = false): Promise<AtomicFile> {
  const fs = await fsp();
  const { dirname, basename, join } = await import(/* webpackIgnore: true */ /* @vite-ignore */ 'node:path');
  if (!force) {
    const exists = await fs.stat(path).then(() => true, () => false);
    if (exists) throw new LoRAError(`${path} exists; pass --force (or { force: true }) to replace it`);
  }
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now()}.tmp`);
  const handle = await fs.open(tmp, 'wx');
  let open = true;
  return {
    path,
    async write(bytes) {
      let done = 0;
      while (done < bytes.byteLength) done += (await handle.write(bytes, done, bytes.byteLength - done)).bytesWritten;
    },
    async commit() {
      await handle.sync();
      await handle.close();
      open = false;
      await fs.rename(tmp, path);
    },
    async abort() {
      if (open) await handle.close().catch(() => {});
      open = false;
      await fs.rm(tmp, { force: true });
    },
  };
}
