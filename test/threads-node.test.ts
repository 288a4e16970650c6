// Threads, the Node-only half: the shared-memory builds on disk, process exit with a live pool,
// workers that die mid-run or between runs, a worker whose kernel traps, and concurrent async
// callers. (Bit-identical results across thread counts are in threads.test.ts, run in Chromium too.)
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { type LoRAWasm, LoRAError, init } from '../src/index.js';
import { splitPolicy } from '../src/kernel/scheduler.js';
import { sharedVariant } from '../src/runtime/shared-variant.js';
import { BUILD, randomF32, rng } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const wasm = (name: string): Uint8Array => new Uint8Array(readFileSync(`${root}build/lora-${name}.wasm`));

/** Section ids of a .wasm binary (id 11 is the data section, 12 the data count). */
function sectionIds(bytes: Uint8Array): number[] {
  const ids: number[] = [];
  let at = 8;
  while (at < bytes.length) {
    ids.push(bytes[at]!);
    let size = 0;
    let shift = 0;
    let b: number;
    at++;
    do {
      b = bytes[at++]!;
      size += (b & 0x7f) * 2 ** shift;
      shift += 7;
    } while (b & 0x80);
    at += size;
  }
  return ids;
}

test('the threads builds are the single-thread code with a shared memory import, and no build has static data', () => {
  for (const flavour of ['baseline', 'relaxed']) {
    const single = wasm(flavour);
    const threads = wasm(`${flavour}-threads`);
    assert.ok(Buffer.from(sharedVariant(single)).equals(Buffer.from(threads)), `${flavour}: one flag byte apart from asc's threads build`);
    for (const [name, bytes] of [[flavour, single], [`${flavour}-threads`, threads]] as const) {
      const ids = sectionIds(bytes);
      assert.ok(ids.includes(10), `${name}: has code`);
      assert.not.ok(ids.includes(11) || ids.includes(12), `${name}: no data segments (a worker's instantiation writes nothing)`);
    }
  }
});

/** A pool of its own (a distinct memo key), so that killing its workers disturbs no other suite. */
let own: Promise<LoRAWasm> | undefined;
const isolated = (): Promise<LoRAWasm> => (own ??= init({ simd: BUILD, threads: 3, maxMemoryBytes: 2 ** 31 }));

/** A merge big enough to be split over every thread. */
function bigMerge(lw: LoRAWasm, seed = 21): { w: Float32Array; dispose: () => void; run: () => void } {
  const r = rng(seed);
  const [dOut, dIn, rank] = [1024, 1024, 16]; // 16.8 M multiply-adds: split over 3 threads at the default thresholds
  const W = lw.matrix(dOut, dIn, randomF32(r, dOut * dIn));
  const A = lw.matrix(dOut, rank, randomF32(r, dOut * rank));
  const B = lw.matrix(rank, dIn, randomF32(r, rank * dIn));
  return {
    get w() {
      return W.toFloat32();
    },
    run: () => lw.merge(W, A, B, { scale: 0.5 }),
    dispose: () => [W, A, B].forEach((m) => m.dispose()),
  };
}

const reference = async (): Promise<Float32Array> => {
  const lw1 = await init({ simd: BUILD, threads: 1 });
  const m = bigMerge(lw1);
  m.run();
  const w = m.w;
  m.dispose();
  return w;
};

const until = async (ok: () => boolean, ms: number): Promise<void> => {
  const t = Date.now();
  while (!ok()) {
    if (Date.now() - t > ms) throw new Error(`not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

test('a worker killed mid-run: that call throws a LoRAError naming it; the next call works; the worker is respawned', async () => {
  const lw = await isolated();
  const want = await reference();
  const pool = lw.workerPool!;
  assert.is(lw.threads, 3);
  const m = bigMerge(lw);
  pool.killAtNextJob(1); // the second worker exits at its next job, without a word, as a crashed thread does
  pool.stealing = false; // its job waits for it (a free thread would otherwise take it)
  const err = (() => {
    try {
      m.run();
    } catch (e) {
      return e as Error;
    } finally {
      pool.stealing = true;
    }
    return undefined;
  })();
  assert.instance(err, LoRAError);
  assert.match(err!.message, /merge: worker thread 2 stopped while running its share of this call \(rows \d+–\d+ of W\)/);
  assert.match(err!.message, /restarted/);
  m.dispose();

  const again = bigMerge(lw); // at once, before the respawn: runs on the remaining threads
  again.run();
  assert.equal(again.w, want, 'the next call is right');
  again.dispose();
  await until(() => lw.threads === 3, 10_000);
  const runs = pool.runs;
  const third = bigMerge(lw);
  third.run();
  assert.equal(third.w, want, 'right again on the respawned worker');
  assert.ok(pool.runs > runs, 'the pool ran it');
  third.dispose();
  assert.is(lw.threadsNote, undefined, 'nothing is missing any more');
});

test('a worker terminated between calls is noticed at the next call, which runs without it, and it comes back', async () => {
  const lw = await isolated();
  const want = await reference();
  await until(() => lw.threads === 3, 10_000);
  lw.workerPool!.terminateWorker(0);
  assert.is(lw.threads, 2, 'the terminated worker is not counted');
  const m = bigMerge(lw);
  m.run();
  assert.equal(m.w, want);
  m.dispose();
});

test("a worker whose kernel traps: a LoRAError naming the worker and the trap; the pool keeps working", async () => {
  const lw = await isolated();
  await until(() => lw.threads === 3, 10_000);
  const pool = lw.workerPool!;
  const outOfBounds = 2 ** 31 - 64; // far past this memory's end
  pool.stealing = false; // the second job waits for the first worker
  try {
    assert.throws(
      () => pool.run('test', [['absMax', 0, 0, 0], ['absMax', outOfBounds, 64, 0]], () => 0),
      (e: Error) => e instanceof LoRAError && /wasm kernel failed in worker thread 1 \(.*out of bounds.*\)/.test(e.message),
    );
  } finally {
    pool.stealing = true;
  }
  const want = await reference();
  const m = bigMerge(lw);
  m.run();
  assert.equal(m.w, want);
  m.dispose();
});

test('concurrent async callers interleave whole calls: the same results as one after the other', async () => {
  const lw = await isolated();
  await until(() => lw.threads === 3, 10_000);
  const saved = { ...splitPolicy };
  splitPolicy.minMacs = 1;
  splitPolicy.minBytes = 1;
  try {
    const job = async (seed: number, steps: number): Promise<Float32Array> => {
      const m = bigMerge(lw, seed);
      for (let i = 0; i < steps; i++) {
        m.run();
        await new Promise((r) => setTimeout(r, 0));
      }
      const w = m.w;
      m.dispose();
      return w;
    };
    const together = await Promise.all([job(1, 5), job(2, 5), job(3, 5)]);
    const apart = [await job(1, 5), await job(2, 5), await job(3, 5)];
    assert.equal(together, apart);
  } finally {
    Object.assign(splitPolicy, saved);
  }
});

test('a single-thread build given with threads > 1, or a threads build with threads: 1, is refused with the build it needs', async () => {
  await init({ simd: BUILD, threads: 2, wasm: wasm(BUILD) }).then(
    () => assert.unreachable('a single-thread build was accepted for threads: 2'),
    (e: Error) => assert.ok(e instanceof LoRAError && e.message.includes(`needs a threads build, lora-${BUILD}-threads.wasm`), e.message),
  );
  await init({ simd: BUILD, threads: 1, wasm: wasm(`${BUILD}-threads`) }).then(
    () => assert.unreachable('a threads build was accepted for threads: 1'),
    (e: Error) => assert.ok(e instanceof LoRAError && e.message.includes('looks like a threads build'), e.message),
  );
});

test('the pool refuses to be re-entered from inside a run', async () => {
  const lw = await isolated();
  await until(() => lw.threads === 3, 10_000);
  const pool = lw.workerPool!;
  assert.throws(
    () => pool.run('outer', [['absMax', 0, 0, 0], ['absMax', 0, 0, 0]], () => pool.run('inner', [['absMax', 0, 0, 0], ['absMax', 0, 0, 0]], () => 0)[0]!),
    (e: Error) => e instanceof LoRAError && /inner: internal error, the worker pool was re-entered/.test(e.message),
  );
  assert.equal(pool.run('after', [['absMax', 0, 0, 0], ['absMax', 0, 0, 0]], () => 0), [0, 0], 'and works afterwards');
});

test('a Node process whose pool is never disposed exits by itself within a second of its last line', () => {
  const flags = BUILD === 'relaxed' ? ['--experimental-wasm-relaxed-simd'] : [];
  const script = `
    import { init } from './src/index.ts';
    const lw = await init({ threads: 3 });
    const W = lw.matrix(1024, 1024), A = lw.matrix(1024, 16), B = lw.matrix(16, 1024);
    lw.merge(W, A, B);
    console.log(lw.threads, Date.now());`;
  const run = spawnSync(process.execPath, [...flags, '--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: root, encoding: 'utf8', timeout: 20_000, env: { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1' },
  });
  const end = Date.now();
  assert.is(run.status, 0, run.stderr);
  const [threads, last] = run.stdout.trim().split(' ').map(Number);
  assert.is(threads, 3);
  assert.ok(end - last! < 1000, `exited ${end - last!} ms after its last line`);
});

test('lw.dispose() ends the pool; the instance keeps working on one thread; init() then makes a new one', async () => {
  const lw = await init({ simd: BUILD, threads: 2, maxMemoryBytes: 2 ** 30 });
  assert.is(lw.threads, 2);
  lw.dispose();
  assert.is(lw.threads, 1);
  assert.is(lw.workerPool, undefined);
  const m = bigMerge(lw);
  m.run();
  assert.equal(m.w, await reference());
  m.dispose();
  const fresh = await init({ simd: BUILD, threads: 2, maxMemoryBytes: 2 ** 30 });
  assert.is.not(fresh, lw);
  assert.is(fresh.threads, 2);
  fresh.dispose();
});

test.run();
