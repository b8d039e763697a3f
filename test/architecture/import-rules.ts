import { isBuiltin } from 'node:module';
import type { ImportEdge } from './import-graph.js';

/**
 * The layer table of docs/ARCHITECTURE.md as code: which module belongs to which layer, and what each
 * layer may import. Folders that do not exist yet (src/contract, src/admin-api, src/errors.ts, the server
 * core folders) are here already, so code is checked the moment it moves there.
 */

/** Folders under src/server that are server core; every other folder there is a feature. */
export const SERVER_CORE_FOLDERS: readonly string[] = ['store', 'pki', 'enrollment', 'fleet', 'http', 'admin', 'operator'];
/** Folders under src/agent that are agent core; every other folder there is a feature. */
export const AGENT_CORE_FOLDERS: readonly string[] = ['state', 'enroll'];

/** The only server core modules that may import a feature: the list of features and the start-up that runs it. */
const SERVER_COMPOSITION_ROOTS: readonly string[] = ['src/server/features.ts', 'src/server/start.ts'];
/** The only agent core module that may import an agent feature. */
const AGENT_COMPOSITION_ROOTS: readonly string[] = ['src/agent/features.ts'];
/**
 * What the CLI may take from the server: composition (start, the feature list, config) and the operator
 * functions. server.ts is today's name of start.ts.
 */
const CLI_SERVER_ENTRY = /^src\/server\/(start\.ts|server\.ts|features\.ts|config\.ts|operator\/)/;
/** `meshlink protocol` prints the protocol's own description: the registry and the supported versions. */
const CLI_PROTOCOL_ENTRY: readonly string[] = ['src/protocol/registry.ts', 'src/protocol/handshake.ts'];

export type LayerName =
  | 'errors'
  | 'version'
  | 'util'
  | 'protocol'
  | 'contract'
  | 'net'
  | 'admin-api'
  | 'server core'
  | 'server feature'
  | 'agent core'
  | 'agent feature'
  | 'cli'
  | 'outside the layer table';

export interface ModuleLayer {
  layer: LayerName;
  /** The feature folder name, for the two feature layers. */
  feature?: string;
}

/** The feature folders, derived from the tree: any subfolder of src/server or src/agent that is not core. */
export interface FeatureSets {
  server: ReadonlySet<string>;
  agent: ReadonlySet<string>;
}

export function featureSets(serverFolders: readonly string[], agentFolders: readonly string[]): FeatureSets {
  return {
    server: new Set(serverFolders.filter((f) => !SERVER_CORE_FOLDERS.includes(f))),
    agent: new Set(agentFolders.filter((f) => !AGENT_CORE_FOLDERS.includes(f))),
  };
}

export function layerOf(path: string, features: FeatureSets): ModuleLayer {
  if (path === 'src/errors.ts') return { layer: 'errors' };
  if (path === 'src/version.ts') return { layer: 'version' };
  const [top, second, third] = path.split('/').slice(1);
  switch (top) {
    case 'util':
    case 'protocol':
    case 'contract':
    case 'net':
    case 'admin-api':
    case 'cli':
      return { layer: top };
    case 'server':
      // A file directly in src/server has no third part; a file in a folder is a feature's if the folder is one.
      return third !== undefined && second !== undefined && features.server.has(second) ? { layer: 'server feature', feature: second } : { layer: 'server core' };
    case 'agent':
      return third !== undefined && second !== undefined && features.agent.has(second) ? { layer: 'agent feature', feature: second } : { layer: 'agent core' };
    default:
      return { layer: 'outside the layer table' };
  }
}

/** Packages that exactly one place may use, whatever its layer's row says. */
const PACKAGE_OWNERS: ReadonlyArray<{ name: string; owner: RegExp; where: string }> = [
  { name: 'pino', owner: /^src\/util\/logger\.ts$/, where: 'src/util/logger.ts' },
  { name: 'commander', owner: /^src\/cli\//, where: 'src/cli' },
  // The drivers: only the store's backends know them; every store module queries through kysely.
  { name: 'better-sqlite3', owner: /^src\/server\/store\/database\.ts$/, where: 'src/server/store/database.ts (the SQLite backend)' },
  // The query layer: every store module writes its queries with it; only src/server/store knows the drivers.
  { name: 'kysely', owner: /^src\/server\/(store\/|audit-log\.ts$|[^/]+\/store\.ts$)/, where: 'the store modules (src/server/store, a feature\'s store.ts, the core audit log)' },
  { name: 'pg', owner: /^src\/server\/store\/database\.ts$/, where: 'src/server/store/database.ts (the PostgreSQL backend)' },
];

interface LayerRule {
  /** Layers this one may import (its own layer is always allowed, except that features are kept apart below). */
  layers: readonly LayerName[];
  /** Third-party packages, or 'any' (still subject to PACKAGE_OWNERS). */
  packages: readonly string[] | 'any';
  /** node: built-ins, or 'any'. */
  builtins: readonly string[] | 'any';
  /** The row of the table, for failure messages. */
  says: string;
}

const RULES: Record<LayerName, LayerRule> = {
  errors: { layers: [], packages: [], builtins: [], says: 'src/errors.ts imports nothing' },
  // version.ts is a leaf (it reads package.json) that the application layers may use.
  version: { layers: [], packages: [], builtins: 'any', says: 'src/version.ts imports only node: built-ins' },
  // zod for the one zod-error-text helper; pino for the logger (PACKAGE_OWNERS narrows it to logger.ts).
  util: { layers: ['errors'], packages: ['zod', 'pino'], builtins: 'any', says: 'util may import errors (and zod; pino in logger.ts)' },
  protocol: {
    layers: ['errors'],
    packages: ['zod', '@msgpack/msgpack'],
    builtins: ['node:events', 'node:stream', 'node:zlib'],
    says: 'protocol may import errors, util/zod-error.ts, zod, msgpack, node:events, node:stream, node:zlib',
  },
  contract: {
    layers: ['errors'],
    packages: ['zod', '@msgpack/msgpack'],
    // node:zlib for the CRC-32 of STUN's FINGERPRINT, node:net for isIP (contract/stun.ts).
    builtins: ['node:crypto', 'node:zlib', 'node:net'],
    says: 'contract may import errors, registry types, zod, msgpack, node:crypto, node:zlib, node:net',
  },
  net: { layers: ['protocol', 'errors'], packages: ['ws'], builtins: 'any', says: 'net may import protocol, errors, ws' },
  // net for the WebSocket masking choice the tunnel client shares with the agent's connection (net/ws-mask.ts).
  'admin-api': { layers: ['errors', 'util', 'contract', 'net'], packages: ['zod', 'ws'], builtins: 'any', says: 'admin-api may import errors, util, contract, net, zod, ws' },
  'server core': {
    layers: ['protocol', 'net', 'contract', 'errors', 'util', 'admin-api', 'version'],
    packages: 'any',
    builtins: 'any',
    says: 'server core may import protocol, net, contract, errors, util, admin-api; never a feature, except the composition root (src/server/features.ts, start.ts)',
  },
  // A feature sees what the core sees, minus net (it talks to agents through the core's sessions facade).
  'server feature': {
    layers: ['server core', 'protocol', 'contract', 'errors', 'util', 'admin-api', 'version'],
    packages: 'any',
    builtins: 'any',
    says: "a server feature may import server core's public modules (and errors, util, protocol, contract, admin-api); never another feature, the agent or the CLI",
  },
  'agent core': {
    layers: ['protocol', 'net', 'contract', 'errors', 'util', 'version'],
    packages: 'any',
    builtins: 'any',
    says: 'agent core may import protocol, net, contract, errors, util, agent core; never the server or the CLI; a feature only from src/agent/features.ts',
  },
  'agent feature': {
    layers: ['agent core', 'protocol', 'net', 'contract', 'errors', 'util', 'version'],
    packages: 'any',
    builtins: 'any',
    says: 'an agent feature may import protocol, net, contract, errors, util, agent core; never another feature, the server or the CLI',
  },
  cli: {
    // The server and agent layers are narrowed to their entry points in checkLocal().
    // contract too: the CLI validates flags with the schemas both roles share (endpoints, CA pins).
    layers: ['admin-api', 'agent core', 'agent feature', 'server core', 'contract', 'util', 'errors', 'version'],
    packages: 'any',
    builtins: 'any',
    says: "cli may import admin-api, the agent's entry points, server composition and operator functions, contract, util, errors, the protocol registry and versions; never a store module",
  },
  'outside the layer table': { layers: [], packages: [], builtins: [], says: 'every file under src belongs to a layer of docs/ARCHITECTURE.md' },
};

export interface Violation {
  /** `from -> to`. */
  pair: string;
  /** Which rule it breaks, for the failure message. */
  reason: string;
}

function describe(m: ModuleLayer): string {
  return m.feature ? `${m.layer} ${m.feature}` : m.layer;
}

function isStoreModule(path: string): boolean {
  return /^src\/server\/store\//.test(path) || /^src\/server\/[^/]+\/(store|migrations)\.ts$/.test(path) || /-store\.ts$/.test(path);
}

/** What an import of one local module by another does against the table, or undefined when it is allowed. */
function checkLocal(edge: ImportEdge, from: ModuleLayer, to: ModuleLayer): string | undefined {
  const rule = RULES[from.layer];
  if (from.layer === 'outside the layer table') return 'is outside the layer table';
  if (to.layer === 'outside the layer table') return 'imports a module outside the layer table';

  // Within one layer: features stay apart, and only a composition root reaches into features.
  if (from.layer === to.layer && from.layer !== 'server feature' && from.layer !== 'agent feature') return undefined;
  if (to.layer === 'server feature') {
    if (from.layer === 'server feature' && from.feature === to.feature) return undefined;
    if (from.layer === 'server core' && SERVER_COMPOSITION_ROOTS.includes(edge.from)) return undefined;
    return `imports ${describe(to)}`;
  }
  if (to.layer === 'agent feature') {
    if (from.layer === 'agent feature' && from.feature === to.feature) return undefined;
    if (from.layer === 'agent core' && AGENT_COMPOSITION_ROOTS.includes(edge.from)) return undefined;
    if (from.layer === 'cli' && /^src\/agent\/[^/]+\/index\.ts$/.test(edge.to)) return undefined;
    return `imports ${describe(to)}${from.layer === 'cli' ? ' beyond its entry point index.ts' : ''}`;
  }
  // Features do not import the composition root that imports them.
  if (from.layer === 'server feature' && SERVER_COMPOSITION_ROOTS.includes(edge.to)) return 'imports the composition root';
  if (from.layer === 'agent feature' && AGENT_COMPOSITION_ROOTS.includes(edge.to)) return 'imports the composition root';

  if (from.layer === 'cli') {
    if (to.layer === 'server core') {
      if (isStoreModule(edge.to)) return 'imports a store module';
      if (!CLI_SERVER_ENTRY.test(edge.to)) return 'imports server core beyond start, features, config and operator/';
      return undefined;
    }
    if (to.layer === 'protocol' && CLI_PROTOCOL_ENTRY.includes(edge.to)) return undefined;
  }
  if (from.layer === 'contract' && edge.to === 'src/protocol/registry.ts' && edge.typeOnly) return undefined;
  // The one zod-error text helper is pure (zod only): the protocol words its payload errors with it too.
  if ((from.layer === 'protocol' || from.layer === 'contract') && edge.to === 'src/util/zod-error.ts') return undefined;
  if (rule.layers.includes(to.layer)) return undefined;
  return `imports ${describe(to)}`;
}

/** What a package or built-in import does against the table, or undefined when it is allowed. */
function checkPackage(edge: ImportEdge, from: ModuleLayer): string | undefined {
  const rule = RULES[from.layer];
  const name = edge.to;
  if (name.startsWith('node:')) {
    return rule.builtins === 'any' || rule.builtins.includes(name) ? undefined : `imports ${name}`;
  }
  const owned = PACKAGE_OWNERS.find((p) => p.name === name);
  if (owned && !owned.owner.test(edge.from)) return `imports ${name}, which only ${owned.where} may use`;
  return rule.packages === 'any' || rule.packages.includes(name) ? undefined : `imports ${name}`;
}

/** Every import in `edges` that breaks the table, one per distinct `from -> to` pair, sorted. */
export function findViolations(edges: readonly ImportEdge[], features: FeatureSets): Violation[] {
  const found = new Map<string, string>();
  for (const edge of edges) {
    // Bare node built-ins (`fs`) are named as `node:fs`, so the built-in rules see one spelling.
    const target = !edge.to.startsWith('src/') && !edge.to.startsWith('node:') && isBuiltin(edge.to) ? { ...edge, to: `node:${edge.to}` } : edge;
    const from = layerOf(target.from, features);
    const what = target.unresolved
      ? `imports '${target.unresolved}', which names no file`
      : target.to.startsWith('src/')
        ? checkLocal(target, from, layerOf(target.to, features))
        : checkPackage(target, from);
    const pair = `${target.from} -> ${target.to}`;
    if (what && !found.has(pair)) found.set(pair, `${describe(from)} ${what}; rule: ${RULES[from.layer].says}`);
  }
  return [...found.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([pair, reason]) => ({ pair, reason }));
}
