// The kernel layer as architecture: the hand-written Kernels interface matches what asc generates,
// kernel calls are typed tuples derived from it, only src/kernel/ calls the wasm exports, and src/
// imports point one way, down, with no cycle.
// Node only (reads the source and build trees).
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { KERNEL_NAMES, type KernelCall } from '../src/kernel/kernels.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const src = path.join(root, 'src');

interface Signature {
  params: string[];
  returns: string;
}

/** name → parameter names and return type text, from function declarations or interface methods. */
function signatures(file: string, pick: (node: ts.Node) => ts.SignatureDeclarationBase | undefined): Map<string, Signature> {
  const sf = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.ES2022, true);
  const out = new Map<string, Signature>();
  const visit = (node: ts.Node): void => {
    const decl = pick(node);
    if (decl?.name && decl.type) {
      out.set(decl.name.getText(sf), { params: decl.parameters.map((p) => `${p.name.getText(sf)}: ${p.type?.getText(sf)}`), returns: decl.type.getText(sf) });
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

test('the Kernels interface matches the bindings asc generates (names, parameters, return kinds)', () => {
  const generated = signatures(path.join(root, 'build/lora-baseline.d.ts'), (n) => (ts.isFunctionDeclaration(n) ? n : undefined));
  const ours = signatures(path.join(src, 'kernel/kernels.ts'), (n) =>
    ts.isMethodSignature(n) && ts.isInterfaceDeclaration(n.parent) && n.parent.name.text === 'Kernels' ? n : undefined);
  assert.ok(generated.size >= 19, `asc bindings list ${generated.size} functions`);
  assert.equal([...ours.keys()].sort(), [...generated.keys()].sort(), 'the same exported functions');
  for (const [name, g] of generated) {
    assert.equal(ours.get(name), g, `${name}: (${g.params.join(', ')}): ${g.returns}`);
  }
  assert.equal([...KERNEL_NAMES].sort(), [...generated.keys()].sort(), 'init() checks for every export');
});

// Compile-time claims, checked by `tsc -p tsconfig.check.json` (each line below must fail to compile)
// and again at run time by the compiler API in the next test.
const wellFormed: KernelCall[] = [['absMax', 0, 64, 0], ['reluForward', 0, 0, 8]];
// @ts-expect-error absMax takes (x, n, dt): one argument missing
const missing: KernelCall = ['absMax', 0, 64];
// @ts-expect-error absMax takes (x, n, dt): one argument too many
const extra: KernelCall = ['absMax', 0, 64, 0, 1];
// @ts-expect-error there is no kernel absMaximum
const unknown: KernelCall = ['absMaximum', 0, 64, 0];
// @ts-expect-error arguments are numbers
const notNumber: KernelCall = ['absMax', 0, '64', 0];
void [wellFormed, missing, extra, unknown, notNumber];

test('a kernel call with a wrong name, a wrong arity or a non-number argument does not compile', () => {
  const file = path.join(root, 'test/__kernel-call-check.ts');
  const text = [
    "import type { KernelCall } from '../src/kernel/kernels.js';",
    "export const ok: KernelCall[] = [['absMax', 0, 64, 0], ['gemvT', 0, 0, 0, 8, 8, 1, 0], ['heapBase']];",
    "export const missing: KernelCall = ['absMax', 0, 64];",
    "export const extra: KernelCall = ['absMax', 0, 64, 0, 1];",
    "export const unknown: KernelCall = ['absMaximum', 0, 64, 0];",
    "export const notNumber: KernelCall = ['absMax', 0, '64', 0];",
    "export const gemvShort: KernelCall = ['gemvT', 0, 0, 0, 8, 8, 1];",
  ].join('\n');
  const options: ts.CompilerOptions = {
    strict: true, noEmit: true, target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext,
    skipLibCheck: true, types: [],
  };
  const host = ts.createCompilerHost(options);
  const read = host.getSourceFile.bind(host);
  host.getSourceFile = (name, lang, ...rest) => (path.resolve(name) === file ? ts.createSourceFile(name, text, lang) : read(name, lang, ...rest));
  const exists = host.fileExists.bind(host);
  host.fileExists = (name) => path.resolve(name) === file || exists(name);
  const program = ts.createProgram([file], options, host);
  const lines = ts.getPreEmitDiagnostics(program, program.getSourceFile(file))
    .filter((d) => d.file && path.resolve(d.file.fileName) === file)
    .map((d) => d.file!.getLineAndCharacterOfPosition(d.start!).line);
  assert.equal([...new Set(lines)].sort(), [2, 3, 4, 5, 6], 'errors on exactly the malformed calls (0-based lines)');
});

const sources = (): string[] =>
  (readdirSync(src, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts')).map((f) => f.split(path.sep).join('/'));

/** Relative imports of a source file, as paths under src/ (type-only imports included). */
function importsOf(file: string): string[] {
  const text = readFileSync(path.join(src, file), 'utf8');
  const specs = [...text.matchAll(/(?:import|export)\s[^;]*?from\s+'(\.[^']+)'/g)].map((m) => m[1]!);
  return specs.map((s) => path.posix.normalize(path.posix.join(path.posix.dirname(file), s)).replace(/\.js$/, '.ts'));
}

test('only src/kernel/ holds the wasm exports: loading hands them straight to the kernel layer', () => {
  for (const file of sources()) {
    // the worker script calls the exports of its own instance, by the names and arguments the kernel layer posts
    if (file.startsWith('kernel/') || file === 'runtime/load.ts' || file === 'pool/worker-source.ts') continue;
    assert.not.ok(/\bKernels\b|\.exports\b/.test(readFileSync(path.join(src, file), 'utf8')), `${file} touches the raw wasm exports`);
  }
  const load = readFileSync(path.join(src, 'runtime/load.ts'), 'utf8');
  const uses = [...load.matchAll(/^.*\bkernels\b(?!\.ts).*$/gm)].map((m) => m[0].trim()).filter((l) => !l.startsWith('*') && !l.startsWith('import'));
  assert.equal(uses, [
    'const kernels = exports as unknown as Kernels;',
    'const info = moduleInfo(kernels);',
    'return { build, heap, kernel: new KernelLayer(heap, kernels, pool), threadsNote: poolNote };',
  ], 'load.ts only passes the exports to moduleInfo() and new KernelLayer()');
});

test('src/ has no import cycle, and layers depend only downward (nn → ops → kernel → memory, pool; runtime)', () => {
  const files = sources();
  const graph = new Map(files.map((f) => [f, importsOf(f)]));
  const state = new Map<string, 'open' | 'done'>();
  const visit = (f: string, trail: string[]): void => {
    if (state.get(f) === 'done') return;
    if (state.get(f) === 'open') assert.unreachable(`import cycle: ${[...trail, f].join(' → ')}`);
    state.set(f, 'open');
    for (const d of graph.get(f) ?? []) visit(d, [...trail, f]);
    state.set(f, 'done');
  };
  for (const f of files) visit(f, []);
  const layer = (f: string): string => (f.includes('/') ? f.split('/')[0]! : f.replace(/\.ts$/, ''));
  const allowed: Record<string, string[]> = {
    errors: [],
    random: [],
    memory: ['errors'],
    pool: ['errors'],
    kernel: ['errors', 'memory', 'pool'],
    runtime: ['errors', 'memory', 'kernel', 'pool'],
    ops: ['errors', 'memory', 'kernel', 'runtime'],
    nn: ['errors', 'memory', 'kernel', 'runtime', 'ops', 'random'],
    io: ['errors', 'memory'],
    gguf: ['errors', 'memory', 'kernel', 'runtime', 'io'],
    adapters: ['errors', 'memory', 'kernel', 'runtime', 'ops', 'nn', 'io', 'gguf', 'random'],
  };
  for (const [f, deps] of graph) {
    const from = layer(f);
    if (!(from in allowed)) continue; // the facade (lorawasm, init, index) sits on top
    for (const d of deps.filter((x) => x.endsWith('.ts'))) {
      const to = layer(d);
      if (to !== from) assert.ok(allowed[from]!.includes(to), `${f} imports ${d}: ${from}/ may not depend on ${to}`);
    }
  }
  const loading = [...graph.get('runtime/load.ts')!];
  assert.not.ok(loading.some((d) => d.startsWith('nn/') || d.startsWith('ops/') || d === 'lorawasm.ts'), 'loading knows nothing of layers');
});

test.run();
