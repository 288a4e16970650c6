/**
 * Node's way to read a .wasm: file: URLs and plain paths, through node:fs.
 * The browser bundles swap this module for load-file.browser.ts, so they
 * contain no node: imports at all.
 */
export async function readFileUrl(url: URL): Promise<Uint8Array> {
  const fs = await import(/* webpackIgnore: true */ /* @vite-ignore */ 'node:fs/promises');
  return fs.readFile(url);
}

/** A string that is not an absolute URL is a file path (relative to the working directory). */
export async function pathToUrl(s: string): Promise<URL> {
  const { pathToFileURL } = await import(/* webpackIgnore: true */ /* @vite-ignore */ 'node:url');
  return pathToFileURL(s);
}
