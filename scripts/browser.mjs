// Shared by the browser checks: a static server on 127.0.0.1 (with the COOP/COEP headers that
// cross-origin isolation and SharedArrayBuffer need) and Debian's Chromium driven by playwright-core.
import { existsSync, readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic',
];

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm',
  '.map': 'application/json', '.json': 'application/json', '.css': 'text/css', '.png': 'image/png',
};

/** Serves `routes` (URL prefix → directory) on 127.0.0.1; resolves to { url, close }. */
export function serve(routes, port = 0) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    const prefix = Object.keys(routes).filter((p) => url.pathname.startsWith(p)).sort((a, b) => b.length - a.length)[0];
    let file = prefix === undefined ? undefined : path.join(routes[prefix], decodeURIComponent(url.pathname.slice(prefix.length)));
    if (file && existsSync(file) && statSync(file).isDirectory()) file = path.join(file, 'index.html');
    if (!file || !file.startsWith(routes[prefix]) || !existsSync(file)) {
      res.writeHead(404).end('not found');
      return;
    }
    // ?isolated=0 serves a page without cross-origin isolation (no SharedArrayBuffer: the threads fallback)
    const isolation = url.searchParams.get('isolated') === '0'
      ? {}
      : { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' };
    res.writeHead(200, {
      'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      ...isolation,
      'cache-control': 'no-store',
    });
    res.end(readFileSync(file));
  });
  return new Promise((resolve) => {
    server.listen(port, '127.0.0.1', () => {
      resolve({ url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

/** Launches Chromium, or explains why it cannot. */
export async function launch(extraArgs = []) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: install Debian's package (apt-get install chromium) or set CHROMIUM_PATH`);
  }
  const { chromium } = await import('playwright-core');
  return chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_FLAGS, ...extraArgs] });
}
