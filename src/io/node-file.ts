/**
 * Files on disk, for Node: a ByteSource over a file handle (reads at offsets, never the whole file)
 * and atomic writers. The browser bundles swap this module for node-file.browser.ts, so they contain
 * no node: import.
 *
 * An atomic output is written under a hidden temp name beside its target,
 *   .<name>.<pid>.<stamp>.tmp        (a file, or a folder for atomicFolder)
 *   .<name>.<pid>.<stamp>.old        (atomicFolder with force: the replaced folder, until it is deleted)
 * and appears at its target only on commit(). Without force, commit never replaces anything (a file
 * is hard-linked into place, a folder claims its name with an exclusive mkdir), so of two concurrent
 * writers one wins and the other fails. The pid in the name lets clearStaleTemps remove what a killed
 * process left, and only that. Every temp this process has open is listed for abortOpenTempsSync, which
 * a signal handler calls before it exits.
 */
import { LoRAEnvironmentError, LoRAFormatError } from '../errors.js';
import type { ByteSource } from './source.js';

const fsp = () => import(/* webpackIgnore: true */ /* @vite-ignore */ 'node:fs/promises');
const fsSync = () => import(/* webpackIgnore: true */ /* @vite-ignore */ 'node:fs');
const nodePath = () => import(/* webpackIgnore: true */ /* @vite-ignore */ 'node:path');

/** Opens a file for reading at offsets; close() it when done. */
export async function fileSource(path: string): Promise<ByteSource> {
  const fs = await fsp();
  const handle = await fs.open(path, 'r');
  const { size } = await handle.stat();
  const readInto = async (offset: number, target: Uint8Array): Promise<void> => {
    const length = target.length;
    let done = 0;
    while (done < length) {
      const { bytesRead } = await handle.read(target, done, length - done, offset + done);
      if (bytesRead === 0) throw new LoRAFormatError(`${path}: nothing to read at byte ${offset + done} (reading ${length} bytes at ${offset}): the file is shorter than the ${size} bytes it had when it was opened`);
      done += bytesRead;
    }
  };
  return {
    name: path,
    path,
    size,
    async read(offset, length) {
      const buf = new Uint8Array(length);
      await readInto(offset, buf);
      return buf;
    },
    readInto,
    close: () => handle.close(),
  };
}

export interface AtomicFile {
  readonly path: string;
  /** The hidden file the bytes go to until commit(). */
  readonly tempPath: string;
  write(bytes: Uint8Array): Promise<void>;
  /**
   * Makes the (still empty) file a reflink of `source`'s file (fs.copyFile with COPYFILE_FICLONE_FORCE:
   * btrfs, XFS), sharing its blocks until they are written. False, and nothing done, when the source
   * is not a file or the file system cannot reflink (ext4): the caller then writes every byte.
   */
  copyOf(source: ByteSource): Promise<boolean>;
  /** Writes `bytes` at `offset` (after copyOf: replaces that range of the copy). */
  writeAt(offset: number, bytes: Uint8Array): Promise<void>;
  /**
   * fsync, close, and put into place: renamed over `path` with force; without force hard-linked to
   * `path` (which fails if a file appeared there meanwhile: then the temp is removed and nothing replaced).
   */
  commit(): Promise<void>;
  /** Close and remove the temp file (after a failure): nothing appears at `path`. */
  abort(): Promise<void>;
}

/** Every temp file or folder this process has open: removed by abortOpenTempsSync. */
const openTemps = new Set<string>();
let stamps = 0;

/** The temp name for `path` (same folder, hidden, with this process's pid). */
async function tempFor(path: string, kind: 'tmp' | 'old' = 'tmp'): Promise<string> {
  const { dirname, basename, join } = await nodePath();
  return join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now().toString(36)}${(stamps++).toString(36)}.${kind}`);
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === 'EPERM'; // it exists, it is someone else's
  }
}

/**
 * Removes what a killed writer left beside `path`: entries named exactly like our temps for that
 * target whose pid is not a live process. A `.old` folder (a forced replace cut short between its two
 * renames) is put back at `path` when nothing is there, else removed. Returns the names it handled.
 */
export async function clearStaleTemps(path: string): Promise<string[]> {
  const fs = await fsp();
  const { dirname, basename, join } = await nodePath();
  const pattern = new RegExp(`^\\.${escapeRegExp(basename(path))}\\.(\\d+)\\.[0-9a-z]+\\.(tmp|old)$`);
  const handled: string[] = [];
  for (const entry of await fs.readdir(dirname(path)).catch(() => [] as string[])) {
    const m = pattern.exec(entry);
    if (!m || alive(Number(m[1]))) continue;
    const full = join(dirname(path), entry);
    const free = await fs.lstat(path).then(() => false, () => true);
    if (m[2] === 'old' && free) await fs.rename(full, path);
    else await fs.rm(full, { recursive: true, force: true });
    handled.push(entry);
  }
  return handled;
}

/**
 * Removes every temp file and folder this process has open, synchronously: for a signal handler
 * that exits right after (committed outputs are not touched). Returns the paths removed.
 */
export function abortOpenTempsSync(): string[] {
  const removed = [...openTemps];
  for (const p of removed) {
    try {
      syncFs?.rmSync(p, { recursive: true, force: true }); // loaded before any temp was made
    } catch {
      // best effort: the process is exiting
    }
    openTemps.delete(p);
  }
  return removed;
}
/** node:fs, loaded by the writers before they make a temp, for the steps that must not yield. */
let syncFs: typeof import('node:fs') | undefined;

const exists = async (path: string): Promise<boolean> => {
  const fs = await fsp();
  return fs.lstat(path).then(() => true, () => false);
};
const appeared = (path: string) => new LoRAEnvironmentError(`${path} appeared while this output was being written; it was not replaced (pass --force, or { force: true }, to replace it)`);

/** Bytes written between two background datasyncs of an atomic file. */
const FLUSH_BEHIND = 64 << 20;

/** A file that appears at `path` only on commit(); `force` allows replacing an existing file. */
export async function atomicFile(path: string, force = false): Promise<AtomicFile> {
  const fs = await fsp();
  syncFs ??= await fsSync();
  if (!force && (await exists(path))) throw new LoRAEnvironmentError(`${path} exists; pass --force (or { force: true }) to replace it`);
  const tmp = await tempFor(path);
  openTemps.add(tmp); // before the file exists: a signal between open and here must still find it
  let handle: import('node:fs/promises').FileHandle;
  try {
    handle = await fs.open(tmp, 'wx');
  } catch (e) {
    openTemps.delete(tmp);
    throw e;
  }
  let open = true;
  // Write-behind: every FLUSH_BEHIND bytes, a datasync starts in the background (one at a time), so the
  // disk writes while the merge goes on, instead of all at commit's fsync. Without it, 1 GiB of dirty
  // pages also throttles the writes themselves (measured: read + write + fsync of 1 GiB took 1.9–3.1 s
  // here, 0.96–0.98 s with it; `cp && sync` 1.0–1.1 s).
  let flushing: Promise<void> | undefined;
  let unflushed = 0;
  const flushBehind = (n: number) => {
    unflushed += n;
    if (unflushed < FLUSH_BEHIND || flushing) return;
    unflushed = 0;
    flushing = handle.datasync().catch(() => {}).finally(() => { flushing = undefined; }); // commit's fsync reports errors
  };
  const drop = async () => {
    await flushing;
    if (open) await handle.close().catch(() => {});
    open = false;
    await fs.rm(tmp, { force: true });
    openTemps.delete(tmp);
  };
  let written = false;
  return {
    path,
    tempPath: tmp,
    async write(bytes) {
      written = true;
      let done = 0;
      while (done < bytes.byteLength) done += (await handle.write(bytes, done, bytes.byteLength - done)).bytesWritten;
      flushBehind(bytes.byteLength);
    },
    async copyOf(source) {
      if (!source.path || written) return false;
      await handle.close();
      open = false;
      // A reflink or nothing: one ioctl, no copy loop. (A copying fs.copyFile loops forever in libuv
      // when its source shrinks meanwhile, and would write every byte that the merge then rewrites.)
      const cloned = await fs.copyFile(source.path, tmp, syncFs!.constants.COPYFILE_FICLONE_FORCE).then(() => true, () => false);
      handle = await fs.open(tmp, cloned ? 'r+' : 'w');
      open = true;
      written = cloned;
      return cloned;
    },
    async writeAt(offset, bytes) {
      written = true;
      let done = 0;
      while (done < bytes.byteLength) done += (await handle.write(bytes, done, bytes.byteLength - done, offset + done)).bytesWritten;
      flushBehind(bytes.byteLength);
    },
    async commit() {
      try {
        await flushing;
        await handle.sync();
        await handle.close();
        open = false;
        const s = syncFs!; // sync from here: no signal handler runs between the steps
        if (force) s.renameSync(tmp, path);
        else {
          try {
            s.linkSync(tmp, path);
          } catch (e) {
            const code = (e as { code?: string }).code;
            if (code === 'EEXIST') throw appeared(path);
            if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EMLINK'].includes(code ?? '')) throw e;
            // a file system without hard links: check, then rename (a narrow race remains)
            if (s.existsSync(path)) throw appeared(path);
            s.renameSync(tmp, path);
          }
          s.rmSync(tmp, { force: true });
        }
        openTemps.delete(tmp);
      } catch (e) {
        await drop();
        throw e;
      }
    },
    abort: drop,
  };
}

export interface AtomicFolder {
  readonly path: string;
  /** The hidden folder the files go to until commit(). */
  readonly tempPath: string;
  /** A file `name` inside the folder; commit it before committing the folder. */
  file(name: string): Promise<AtomicFile>;
  /**
   * Puts the folder into place. Without force, claims `path` with an exclusive mkdir and renames the
   * temp over that empty folder (fails if `path` appeared meanwhile). With force, an existing folder is
   * renamed aside, the new one renamed into place (the old one is put back if that fails), and the old
   * one deleted: at every moment `path` holds either the whole old output or the whole new one.
   */
  commit(): Promise<void>;
  /** Removes the temp folder and everything in it. */
  abort(): Promise<void>;
}

/** A folder of files that appears at `path` only on commit(), all at once. Its parent must exist. */
export async function atomicFolder(path: string, force = false): Promise<AtomicFolder> {
  const fs = await fsp();
  const { join } = await nodePath();
  syncFs ??= await fsSync();
  if (!force && (await exists(path))) throw new LoRAEnvironmentError(`${path} exists; pass --force (or { force: true }) to replace it`);
  const tmp = await tempFor(path);
  openTemps.add(tmp);
  try {
    await fs.mkdir(tmp);
  } catch (e) {
    openTemps.delete(tmp);
    throw e;
  }
  const abort = async () => {
    await fs.rm(tmp, { recursive: true, force: true });
    openTemps.delete(tmp);
  };
  return {
    path,
    tempPath: tmp,
    file: (name) => atomicFile(join(tmp, name)),
    async commit() {
      const old = await tempFor(path, 'old');
      try {
        const s = syncFs!; // sync from here: no signal handler runs between the renames
        let claimed = true;
        try {
          s.mkdirSync(path); // exclusive: EEXIST if the target is there (or another writer got here first)
        } catch (e) {
          if ((e as { code?: string }).code !== 'EEXIST') throw e;
          claimed = false;
        }
        if (claimed) {
          try {
            s.renameSync(tmp, path); // over the empty folder just made
          } catch (e) {
            try {
              s.rmdirSync(path); // only if still empty
            } catch {
              // someone else's files are in it now: leave them
            }
            throw e;
          }
        } else {
          if (!force) throw appeared(path);
          s.renameSync(path, old);
          try {
            s.renameSync(tmp, path);
          } catch (e) {
            s.renameSync(old, path);
            throw e;
          }
        }
        openTemps.delete(tmp);
      } catch (e) {
        await abort();
        throw e;
      }
      await fs.rm(old, { recursive: true, force: true });
    },
    abort,
  };
}
