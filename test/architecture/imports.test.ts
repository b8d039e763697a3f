import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { buildImportGraph, subfolders, type ImportEdge } from './import-graph.js';
import { featureSets, findViolations, layerOf } from './import-rules.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

describe('import rules (docs/ARCHITECTURE.md)', () => {
  const features = featureSets(subfolders(root, 'src/server'), subfolders(root, 'src/agent'));
  const violations = findViolations(buildImportGraph(root, 'src'), features).map((v) => `${v.pair}\n    ${v.reason}`);

  // No allowlist: an import against the table fails here, whoever adds it.
  it('src/ has no import that breaks the layer table', () => {
    expect(violations, `import-rule violations (fix the import, or the rule in test/architecture/import-rules.ts if the table changed):\n  ${violations.join('\n  ')}`).toEqual([]);
  });

  it('derives the feature folders from the tree', () => {
    expect([...features.server]).toEqual(expect.arrayContaining(['mesh', 'ops', 'observability']));
    expect([...features.agent]).toEqual(expect.arrayContaining(['mesh', 'ops', 'observability']));
    expect(features.server.has('store')).toBe(false);
  });
});

describe('the import rules catch violations', () => {
  const features = featureSets(['mesh', 'ops', 'store', 'billing'], ['mesh', 'ops', 'state']);
  const edge = (from: string, to: string, typeOnly = false): ImportEdge => ({ from, to, typeOnly });
  const pairs = (edges: ImportEdge[]): string[] => findViolations(edges, features).map((v) => v.pair);

  it('classifies modules into layers, with features from the folder list', () => {
    expect(layerOf('src/server/billing/store.ts', features)).toEqual({ layer: 'server feature', feature: 'billing' });
    expect(layerOf('src/server/store/store.ts', features)).toEqual({ layer: 'server core' });
    expect(layerOf('src/server/billing.ts', features)).toEqual({ layer: 'server core' });
    expect(layerOf('src/agent/state/dir.ts', features)).toEqual({ layer: 'agent core' });
    expect(layerOf('src/errors.ts', features)).toEqual({ layer: 'errors' });
    expect(layerOf('src/misc/thing.ts', features)).toEqual({ layer: 'outside the layer table' });
  });

  it.each([
    ['src/errors.ts', 'src/util/duration.ts'],
    ['src/errors.ts', 'node:util'],
    ['src/util/duration.ts', 'src/protocol/frame.ts'],
    ['src/protocol/session.ts', 'src/util/logger.ts'],
    ['src/protocol/session.ts', 'node:net'],
    ['src/protocol/session.ts', 'ws'],
    ['src/contract/mesh-event.ts', 'src/net/ws-session.ts'],
    ['src/contract/mesh-event.ts', 'src/protocol/registry.ts'],
    ['src/contract/mesh-event.ts', 'node:fs'],
    ['src/net/ws-session.ts', 'src/util/logger.ts'],
    ['src/net/wire-counters.ts', 'src/server/metrics.ts'],
    ['src/admin-api/client.ts', 'src/server/admin.ts'],
    ['src/admin-api/client.ts', 'src/protocol/session.ts'],
    ['src/server/gateway.ts', 'src/server/billing/routes.ts'],
    ['src/server/gateway.ts', 'src/agent/runner.ts'],
    ['src/server/gateway.ts', 'src/cli/main.ts'],
    ['src/server/mesh/feed.ts', 'src/server/billing/store.ts'],
    ['src/server/mesh/feed.ts', 'src/agent/mesh/wire.ts'],
    ['src/server/mesh/feed.ts', 'src/server/features.ts'],
    ['src/server/mesh/feed.ts', 'src/net/ws-session.ts'],
    ['src/agent/runner.ts', 'src/server/config.ts'],
    ['src/agent/runner.ts', 'src/cli/main.ts'],
    ['src/agent/runner.ts', 'src/agent/mesh/index.ts'],
    ['src/agent/mesh/apply.ts', 'src/agent/ops/exec.ts'],
    ['src/agent/mesh/apply.ts', 'src/server/mesh/policy.ts'],
    ['src/cli/server/mesh.ts', 'src/server/store/store.ts'],
    ['src/cli/server/mesh.ts', 'src/server/billing/store.ts'],
    ['src/cli/server/mesh.ts', 'src/server/gateway.ts'],
    ['src/cli/server/mesh.ts', 'src/protocol/session.ts'],
    ['src/cli/agent/run.ts', 'src/agent/mesh/wire.ts'],
    ['src/agent/ops/log.ts', 'pino'],
    ['src/agent/runner.ts', 'commander'],
    ['src/server/mesh/service.ts', 'better-sqlite3'],
    ['src/misc/thing.ts', 'src/errors.ts'],
    ['src/util/duration.ts', 'src/misc/thing.ts'],
  ])('reports %s -> %s', (from, to) => {
    expect(pairs([edge(from, to)])).toEqual([`${from} -> ${to}`]);
  });

  it.each([
    ['src/util/duration.ts', 'src/errors.ts'],
    ['src/util/logger.ts', 'pino'],
    ['src/protocol/session.ts', 'src/protocol/frame.ts'],
    ['src/protocol/codec.ts', '@msgpack/msgpack'],
    ['src/protocol/stream.ts', 'node:stream'],
    ['src/contract/ca-pin.ts', 'node:crypto'],
    ['src/net/ws-session.ts', 'src/protocol/session.ts'],
    ['src/net/wire-counters.ts', 'node:diagnostics_channel'],
    ['src/admin-api/client.ts', 'src/contract/mesh-event.ts'],
    ['src/server/features.ts', 'src/server/billing/index.ts'],
    ['src/server/gateway.ts', 'src/server/fleet/sessions.ts'],
    ['src/server/store/database.ts', 'better-sqlite3'],
    ['src/server/billing/store.ts', 'src/server/store/store.ts'],
    ['src/server/billing/routes.ts', 'src/server/billing/store.ts'],
    ['src/agent/features.ts', 'src/agent/mesh/index.ts'],
    ['src/agent/mesh/apply.ts', 'src/agent/runner.ts'],
    ['src/agent/mesh/apply.ts', 'src/net/ws-session.ts'],
    ['src/cli/main.ts', 'commander'],
    ['src/cli/server/start.ts', 'src/server/start.ts'],
    ['src/cli/server/mesh.ts', 'src/server/operator/mesh.ts'],
    ['src/cli/server/mesh.ts', 'src/admin-api/client.ts'],
    ['src/cli/agent/run.ts', 'src/agent/mesh/index.ts'],
    ['src/cli/protocol.ts', 'src/protocol/registry.ts'],
  ])('allows %s -> %s', (from, to) => {
    expect(pairs([edge(from, to)])).toEqual([]);
  });

  it('allows contract to import registry types, and only types', () => {
    expect(pairs([edge('src/contract/mesh-event.ts', 'src/protocol/registry.ts', true)])).toEqual([]);
    expect(pairs([edge('src/contract/mesh-event.ts', 'src/protocol/registry.ts', false)])).toEqual(['src/contract/mesh-event.ts -> src/protocol/registry.ts']);
  });

  it('counts type-only imports across layers', () => {
    expect(pairs([edge('src/server/mesh/feed.ts', 'src/agent/mesh/wire.ts', true)])).toEqual(['src/server/mesh/feed.ts -> src/agent/mesh/wire.ts']);
  });

  it('says which rule an import breaks', () => {
    const [violation] = findViolations([edge('src/agent/metrics.ts', 'src/server/metrics.ts')], features);
    expect(violation?.reason).toMatch(/^agent core imports server core; rule: .*never the server/);
  });

  describe('on a tree on disk', () => {
    const tmp = mkdtempSync(join(tmpdir(), 'meshlink-imports-'));
    afterAll(() => rmSync(tmp, { recursive: true, force: true }));
    const write = (path: string, text: string): void => {
      mkdirSync(dirname(join(tmp, path)), { recursive: true });
      writeFileSync(join(tmp, path), text);
    };
    write('src/errors.ts', 'export class MeshlinkError extends Error {}\n');
    write('src/protocol/frame.ts', "import { MeshlinkError } from '../errors.js';\nimport pino from 'pino';\nexport const f = [MeshlinkError, pino];\n");
    write('src/server/store/database.ts', "import type Database from 'better-sqlite3';\nexport type Db = Database.Database;\n");
    // A feature folder nobody has told the rules about: it is found from the tree.
    write('src/server/billing/invoices.ts', "export { meshThing } from '../mesh/thing.js';\nexport const lazy = () => import('../../agent/runner.js');\n");
    write('src/server/mesh/thing.ts', "import type { Db } from '../store/database.js';\nexport const meshThing = 1 as unknown as Db;\n");
    write('src/agent/runner.ts', "export type Cfg = import('../server/config.js').Config;\nimport { nothing } from './missing.js';\nexport const r = nothing;\n");
    write('src/server/config.ts', 'export interface Config { a: number }\n');

    it('reads every kind of import and reports the violations', () => {
      const found = findViolations(buildImportGraph(tmp, 'src'), featureSets(subfolders(tmp, 'src/server'), subfolders(tmp, 'src/agent')));
      expect(found.map((v) => v.pair)).toEqual([
        'src/agent/runner.ts -> src/agent/missing.js',
        'src/agent/runner.ts -> src/server/config.ts',
        'src/protocol/frame.ts -> pino',
        'src/server/billing/invoices.ts -> src/agent/runner.ts',
        'src/server/billing/invoices.ts -> src/server/mesh/thing.ts',
      ]);
    });
  });
});
