import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * The agent bundle must not carry server code, and CLI code only on the entry's own chain (the entry
 * and the src/cli modules it reaches through src/cli: the agent's commands). Checked on the import
 * edges esbuild reports, so a new path in is named by the file that opened it.
 */

interface Metafile {
  inputs: Record<string, { bytes: number; imports: Array<{ path: string; external?: boolean }> }>;
  outputs: Record<string, { bytes: number; entryPoint?: string }>;
}

/** Import edges into src/server (from anywhere) or into src/cli (from outside the entry's chain). */
function forbiddenBundleEdges(meta: Metafile, entry: string): string[] {
  const onEntryChain = (path: string): boolean => path === entry || path.startsWith('src/cli/');
  const found: string[] = [];
  for (const [importer, input] of Object.entries(meta.inputs)) {
    for (const { path } of input.imports) {
      if (path.startsWith('src/server/') || (path.startsWith('src/cli/') && !onEntryChain(importer))) found.push(`${importer} -> ${path}`);
    }
  }
  return [...new Set(found)].sort();
}

/** How the entry reaches `target` (breadth-first over the bundle's imports), for failure messages. */
function chainTo(meta: Metafile, entry: string, target: string): string {
  const via = new Map<string, string>([[entry, '']]);
  const queue = [entry];
  while (queue.length > 0) {
    const file = queue.shift()!;
    if (file === target) break;
    for (const { path } of meta.inputs[file]?.imports ?? []) {
      if (!via.has(path)) {
        via.set(path, file);
        queue.push(path);
      }
    }
  }
  const chain: string[] = [];
  for (let at: string | undefined = target; at; at = via.get(at)) chain.unshift(at);
  return chain.join(' -> ');
}

describe('the esbuild agent bundle (scripts/bundle-agent.mjs)', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'meshlink-bundle-'));
  const bundle = join(tmp, 'meshlink-agent.mjs');
  let meta: Metafile;
  let entry: string;

  beforeAll(async () => {
    // The script itself, so the test sees the bundle's real options; paths in the metafile are
    // relative to the working directory, the project root here.
    await promisify(execFile)(process.execPath, ['scripts/bundle-agent.mjs', '--out', bundle, '--metafile', join(tmp, 'meta.json')], { cwd: root });
    meta = JSON.parse(readFileSync(join(tmp, 'meta.json'), 'utf8')) as Metafile;
    const entries = Object.values(meta.outputs).flatMap((o) => (o.entryPoint ? [o.entryPoint] : []));
    expect(entries).toHaveLength(1);
    entry = entries[0]!;
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('contains no src/server file and src/cli only on its entry chain', () => {
    const bytes = statSync(bundle).size;
    const inputs = Object.keys(meta.inputs);
    // Recorded, not asserted: the project documents no size budget for the bundle yet.
    console.log(
      `agent bundle: ${bytes} bytes (${(bytes / 1024).toFixed(0)} KiB), ${inputs.length} inputs, ${inputs.filter((p) => p.startsWith('src/')).length} from src/, ` +
        `${inputs.filter((p) => p.startsWith('src/server/')).length} from src/server/`,
    );
    const edges = forbiddenBundleEdges(meta, entry);
    const explained = edges.map((e) => `${e}\n    reached as ${chainTo(meta, entry, e.split(' -> ')[1]!)}`);
    expect(edges, `server or CLI code in the agent bundle:\n  ${explained.join('\n  ')}`).toEqual([]);
  });

  it('the check reports server code and CLI code reached from agent code', () => {
    const synthetic: Metafile = {
      inputs: {
        'src/agent/entry.ts': { bytes: 1, imports: [{ path: 'src/cli/agent.ts' }, { path: 'src/agent/runner.ts' }] },
        'src/cli/agent.ts': { bytes: 1, imports: [{ path: 'src/cli/agent-run.ts' }] },
        'src/cli/agent-run.ts': { bytes: 1, imports: [{ path: 'src/server/config.ts' }] },
        'src/agent/runner.ts': { bytes: 1, imports: [{ path: 'src/cli/table.ts' }, { path: 'ws' }] },
        'src/server/config.ts': { bytes: 1, imports: [] },
        'src/cli/table.ts': { bytes: 1, imports: [] },
      },
      outputs: {},
    };
    expect(forbiddenBundleEdges(synthetic, 'src/agent/entry.ts')).toEqual(['src/agent/runner.ts -> src/cli/table.ts', 'src/cli/agent-run.ts -> src/server/config.ts']);
    expect(chainTo(synthetic, 'src/agent/entry.ts', 'src/server/config.ts')).toBe('src/agent/entry.ts -> src/cli/agent.ts -> src/cli/agent-run.ts -> src/server/config.ts');
  });
});
