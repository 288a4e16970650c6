#!/usr/bin/env node
// The package as a new user meets it: copy the tree as a fresh clone has it (tracked and untracked,
//   nothing ignored, so no build/ or dist/), `npm pack` there (the prepack script must build
//   everything), install the tarball into a fresh project, then import it from ESM and require it
//   from CJS in Node, compile TypeScript against its types with tsc --strict (ESM and CJS), and bundle
//   pages with esbuild: the main entry with no configuration and no .wasm copied, the inlined build,
//   the URL-loading build (with and without its .wasm served), plus a <script> page with the IIFE build,
//   run in headless Chromium.
// Prints uvu-style Total/Passed lines; exits 1 on any failure.
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { launch, serve } from './browser.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(path.join(os.tmpdir(), 'lora-wasm-consumer-'));
const checks = [];
const check = async (name, fn) => {
  try {
    await fn();
    checks.push([name, true]);
    console.log(`  ok    ${name}`);
  } catch (e) {
    checks.push([name, false]);
    console.log(`  FAIL  ${name}\n${String(e.stack ?? e).split('\n').map((l) => `        ${l}`).join('\n')}`);
  }
};
const run = (cmd, args, opts = {}) => {
  const r = spawnSync(cmd, args, { cwd: dir, encoding: 'utf8', ...opts, env: { ...process.env, FORCE_COLOR: '0', ...opts.env } });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}\n${r.stdout}\n${r.stderr}`);
  return r.stdout.trim();
};
const expect = (got, want, what) => {
  if (got !== want) throw new Error(`${what}: expected ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
};
const MERGE = `const W = lw.matrix(2, 3, [1, 2, 3, 4, 5, 6]);
const A = lw.matrix(2, 1, [1, 2]);
const B = lw.matrix(1, 3, [0.5, 0.25, 0.125]);
lw.merge(W, A, B, { scale: loraScale({ alpha: 2, r: 1 }), safe: true });
const result = Array.from(W.data).join(',') + ' ' + lw.build;`;
const WANT = (build) => `2,2.5,3.25,6,6,6.5 ${build}`;

try {
  // A never-built copy of the tree, as a clone has it; node_modules is linked (installing is CI's job).
  const clone = path.join(dir, 'clone');
  const files = execFileSync('git', ['ls-files', '-co', '--exclude-standard', '-z'], { cwd: root, encoding: 'utf8' }).split('\0').filter(Boolean);
  for (const f of files) {
    if (!existsSync(path.join(root, f))) continue; // deleted in the working tree
    mkdirSync(path.dirname(path.join(clone, f)), { recursive: true });
    copyFileSync(path.join(root, f), path.join(clone, f));
  }
  symlinkSync(path.join(root, 'node_modules'), path.join(clone, 'node_modules'));
  if (existsSync(path.join(clone, 'build')) || existsSync(path.join(clone, 'dist'))) throw new Error('the clone already has build/ or dist/');
  const tarball = execFileSync('npm', ['pack', '--pack-destination', dir, '--silent'], { cwd: clone, encoding: 'utf8' }).trim().split('\n').at(-1);
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  run('npm', ['install', `./${tarball}`, '--no-audit', '--no-fund', '--prefer-offline', '--silent']);
  const installed = readdirSync(path.join(dir, 'node_modules/lora-wasm'));
  console.log(`installed ${tarball} (packed from a never-built copy): ${installed.join(', ')}`);

  await check('npm pack from a never-built tree ships dist/ and both .wasm, and no @internal member in the types', () => {
    const pkg = path.join(dir, 'node_modules/lora-wasm');
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/cjs/index.cjs', 'dist/lora-wasm.inline.js', 'dist/browser.js', 'dist/lora-wasm.iife.js', 'build/lora-relaxed.wasm', 'build/lora-baseline.wasm']) {
      if (!existsSync(path.join(pkg, f))) throw new Error(`the package lacks ${f}`);
    }
    const matrix = readFileSync(path.join(pkg, 'dist/memory/matrix.d.ts'), 'utf8');
    for (const internal of ['readonly heap', 'readonly block', 'get ptr', 'assertLive']) {
      if (matrix.includes(internal)) throw new Error(`the published Matrix type still shows ${internal}`);
    }
  });

  await check('import from ESM in Node', () => {
    writeFileSync(path.join(dir, 'esm.mjs'), `import { init, loraScale } from 'lora-wasm';\nconst lw = await init();\n${MERGE}\nconsole.log(result);\n`);
    expect(run(process.execPath, ['esm.mjs']), WANT('baseline'), 'ESM merge');
    expect(run(process.execPath, ['--experimental-wasm-relaxed-simd', 'esm.mjs']), WANT('relaxed'), 'ESM merge, relaxed');
  });
  await check('require from CommonJS in Node', () => {
    writeFileSync(path.join(dir, 'cjs.cjs'), `const { init, loraScale, LoRAShapeError } = require('lora-wasm');\ninit().then((lw) => {\n${MERGE}\nlet typed = false;\ntry { lw.merge(W, B, A); } catch (e) { typed = e instanceof LoRAShapeError; }\nconsole.log(result + ' ' + typed);\n});\n`);
    expect(run(process.execPath, ['cjs.cjs']), `${WANT('baseline')} true`, 'CJS merge');
  });
  await check('the lora-wasm command runs from the installed package (npx lora-wasm)', () => {
    const help = run(path.join(dir, 'node_modules/.bin/lora-wasm'), ['--help']);
    if (!help.includes('lora-wasm merge --base')) throw new Error(`unexpected --help output: ${help}`);
    writeFileSync(path.join(dir, 'm.mjs'), `import { encodeSafetensors } from 'lora-wasm';\nimport { writeFileSync } from 'node:fs';\nwriteFileSync('m.safetensors', encodeSafetensors([{ name: 'w', dtype: 'F32', shape: [2, 2], data: new Uint8Array(16) }]));\n`);
    run(process.execPath, ['m.mjs']);
    const out = run(path.join(dir, 'node_modules/.bin/lora-wasm'), ['inspect', 'm.safetensors']);
    if (!out.includes('m.safetensors: 1 tensors, 16 B, dtypes F32')) throw new Error(`unexpected inspect output: ${out}`);
  });
  await check('tsc --strict against the types (ESM and CJS)', () => {
    writeFileSync(path.join(dir, 'use.ts'), `import { init, loraScale, LoRAShapeError, type Matrix, type MergeOptions } from 'lora-wasm';
const lw = await init({ simd: 'auto' });
const W: Matrix = lw.matrix(4, 4);
const opts: MergeOptions = { scale: loraScale({ alpha: 8, r: 2 }), safe: true };
const A = lw.matrix(4, 2);
const B = lw.matrix(2, 4);
const out: Matrix = lw.merge(W, A, B, opts);
const layer = lw.linear({ W, r: 2, alpha: 4 });
const y: Matrix = layer.forward(lw.matrix(3, 4));
const n: number = y.rows + layer.trainableParameters;
const e: unknown = new LoRAShapeError('x');
export const ok = out === W && n > 0 && e instanceof Error;
`);
    writeFileSync(path.join(dir, 'use.cts'), `import { init, type Matrix } from 'lora-wasm';
export async function main(): Promise<number> {
  const lw = await init();
  const m: Matrix = lw.matrix(2, 2, [1, 2, 3, 4]);
  return m.data[0] ?? 0;
}
`);
    writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { strict: true, noEmit: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', lib: ['es2022', 'dom', 'esnext.disposable'], types: [] },
      files: ['use.ts', 'use.cts'],
    }));
    run(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json']);
  });

  // Pages: the main entry bundled by esbuild (browser condition; .wasm served from ../build/ next to
  // the bundle's folder), the one-file inlined build, and the IIFE build from a <script> tag.
  // site/ serves bundles only; site-url/ also serves build/*.wasm next to js/ for the URL-loading entry.
  const site = path.join(dir, 'site');
  mkdirSync(path.join(site, 'js'), { recursive: true });
  mkdirSync(path.join(site, 'u/build'), { recursive: true });
  mkdirSync(path.join(site, 'u/js'), { recursive: true });
  // the README's rule for lora-wasm/url: a bundle at u/js/url.js loads u/build/lora-<flavour>.wasm
  for (const f of ['lora-baseline.wasm', 'lora-relaxed.wasm', 'lora-baseline-threads.wasm', 'lora-relaxed-threads.wasm']) copyFileSync(path.join(dir, 'node_modules/lora-wasm/build', f), path.join(site, 'u/build', f));
  const page = (entry) =>
    `import { init, loraScale } from '${entry}';\ntry {\nconst lw = await init();\n${MERGE}\ndocument.title = 'done ' + result;\n} catch (e) { document.title = 'error ' + e.name + ': ' + e.message; }\n`;
  writeFileSync(path.join(dir, 'page.js'), page('lora-wasm'));
  writeFileSync(path.join(dir, 'page-inline.js'), page('lora-wasm/inline'));
  writeFileSync(path.join(dir, 'page-url.js'), page('lora-wasm/url'));
  for (const [entry, out] of [['page.js', 'js/app.js'], ['page-inline.js', 'js/inline.js'], ['page-url.js', 'u/js/url.js'], ['page-url.js', 'js/url-unserved.js']]) {
    await esbuild.build({ absWorkingDir: dir, entryPoints: [entry], bundle: true, format: 'esm', platform: 'browser', outfile: path.join(site, out), logLevel: 'error' });
  }
  writeFileSync(path.join(site, 'u/url.html'), '<!doctype html><script type="module" src="js/url.js"></script>');
  writeFileSync(path.join(site, 'url-unserved.html'), '<!doctype html><script type="module" src="js/url-unserved.js"></script>');
  copyFileSync(path.join(dir, 'node_modules/lora-wasm/dist/lora-wasm.iife.js'), path.join(site, 'js', 'lora-wasm.iife.js'));
  writeFileSync(path.join(site, 'app.html'), '<!doctype html><script type="module" src="js/app.js"></script>');
  writeFileSync(path.join(site, 'inline.html'), '<!doctype html><script type="module" src="js/inline.js"></script>');
  writeFileSync(path.join(site, 'iife.html'), `<!doctype html><script src="js/lora-wasm.iife.js"></script><script>
const { init, loraScale } = LoRAWasm;
init().then((lw) => {\n${MERGE}\ndocument.title = 'done ' + result;\n});</script>`);
  // The README's <script>-tag example, as written, but for the path it loads the IIFE build from.
  const readme = readFileSync(path.join(root, 'README.md'), 'utf8');
  const example = readme.slice(readme.indexOf('**A `<script>` tag**')).match(/```html\n([\s\S]*?)```/)[1];
  writeFileSync(path.join(site, 'readme.html'), `<!doctype html><body>${example.replace('node_modules/lora-wasm/dist/', 'js/')}`);
  const server = await serve({ '/': site });
  const browser = await launch();
  try {
    for (const [name, file] of [
      ["esbuild-bundled page (main entry, no configuration, no .wasm copied) in Chromium", 'app.html'],
      ['esbuild-bundled page (lora-wasm/inline) in Chromium', 'inline.html'],
      ['esbuild-bundled page (lora-wasm/url, .wasm served beside it) in Chromium', 'u/url.html'],
      ['<script> page (IIFE build) in Chromium', 'iife.html'],
    ]) {
      await check(name, async () => {
        const p = await browser.newPage();
        const errors = [];
        p.on('pageerror', (e) => errors.push(e.message));
        p.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
        await p.goto(`${server.url}/${file}`);
        await p.waitForFunction(() => document.title.startsWith('done') || document.title.startsWith('error'), null, { timeout: 30_000 }).catch(() => {});
        const title = await p.title();
        await p.close();
        if (errors.length) throw new Error(errors.join('\n'));
        expect(title, `done ${WANT('relaxed')}`, file);
      });
    }
    await check('lora-wasm/url with no .wasm served fails with a LoRAEnvironmentError that names the remedy', async () => {
      const p = await browser.newPage();
      await p.goto(`${server.url}/url-unserved.html`);
      await p.waitForFunction(() => document.title.startsWith('done') || document.title.startsWith('error'), null, { timeout: 30_000 });
      const title = await p.title();
      await p.close();
      for (const words of ['error LoRAEnvironmentError', '404', /lora-relaxed(-threads)?\.wasm/, 'init({ wasm', "import 'lora-wasm'"]) {
        if (typeof words === 'string' ? !title.includes(words) : !words.test(title)) throw new Error(`the error "${title}" should mention "${words}"`);
      }
    });
    await check("the README's <script>-tag example in Chromium", async () => {
      const p = await browser.newPage();
      await p.goto(`${server.url}/readme.html`);
      // the body holds the example's own <script> text (which has colons too) until the example replaces it
      await p.waitForFunction(() => /^(relaxed|baseline): /.test(document.body.textContent.trim()), null, { timeout: 30_000 }).catch(() => {});
      expect(await p.evaluate(() => document.body.textContent.trim()), 'relaxed: 1.5,2.5,3.5,4.5', 'README example output');
      await p.close();
    });
  } finally {
    await browser.close();
    await server.close();
  }
} catch (e) {
  checks.push(['setup', false]);
  console.log(`  FAIL  setup\n${e.stack ?? e}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
const passed = checks.filter(([, ok]) => ok).length;
console.log(`\n  Total:     ${checks.length}\n  Passed:    ${passed}\n  Skipped:   0\n`);
process.exit(passed === checks.length ? 0 : 1);
