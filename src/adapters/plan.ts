/**
 * What an adapter does to a model, decided once: which base tensor each module changes, whether the
 * shapes agree, which tensors are replaced. The executors (apply-resident.ts, apply-files.ts) only
 * carry a plan out.
 */
import { LoRAShapeError } from '../errors.js';
import type { AdapterModule } from './adapter.js';

/** The base tensor a module changes, found among `names` (PEFT: `<prefix><module>.weight`; kohya: by its underscored name). */
export function targetOf(module: AdapterModule, format: 'peft' | 'kohya', names: ReadonlySet<string>, prefix = ''): string {
  if (format === 'peft') {
    const want = `${prefix}${module.name}.weight`;
    if (names.has(want)) return want;
    throw new LoRAShapeError(`mergeAdapter: the base model has no tensor "${want}" for module "${module.name}"${closeNames(want, names)}`);
  }
  const bare = module.name.replace(/^lora_(unet|te\d?)_/, '');
  const hits = [...names].filter((n) => n.endsWith('.weight') && n.slice(prefix.length, -'.weight'.length).replaceAll('.', '_') === bare && n.startsWith(prefix));
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) throw new LoRAShapeError(`mergeAdapter: kohya module "${module.name}" matches several base tensors: ${hits.join(', ')}`);
  throw new LoRAShapeError(`mergeAdapter: no base tensor matches kohya module "${module.name}" (looked for "${prefix}${bare.replaceAll('_', '.')}.weight" with '.' for '_')${closeNames(bare, names)}`);
}

/** ", close names: …" from the names sharing the most trailing components with `want`. */
function closeNames(want: string, names: ReadonlySet<string>): string {
  const tail = (s: string) => s.split(/[._]/).reverse();
  const w = tail(want);
  const score = (n: string): number => {
    const t = tail(n);
    let k = 0;
    while (k < w.length && k < t.length && w[k] === t[k]) k++;
    return k;
  };
  const best = [...names].map((n) => [n, score(n)] as const).filter(([, s]) => s >= 2).sort((a, b) => b[1] - a[1]).slice(0, 3);
  return best.length ? `; close names: ${best.map(([n]) => `"${n}"`).join(', ')} (pass { prefix } if the base model's names carry one)` : '';
}

export function checkTargetShape(module: AdapterModule, target: string, shape: readonly [number, number]): void {
  if (module.A.rows !== shape[0] || module.B.cols !== shape[1]) {
    const layout = module.fanInFanOut ? ' (fan_in_fan_out: W stored [in, out])' : '';
    throw new LoRAShapeError(
      `mergeAdapter: module "${module.name}" changes a [${module.A.rows}, ${module.B.cols}] weight${layout} but "${target}" is [${shape[0]}, ${shape[1]}]`,
    );
  }
}
