import type { MeshNodeDetails, NodeListing } from '../admin-api/routes.js';
import type { Logger } from '../util/logger.js';
import type { AdminRoutes } from './admin-routes.js';
import type { AgentSessions } from './agent-sessions.js';
import type { AuditLog } from './audit-log.js';
import type { SealingSecret } from './ca-key-crypto.js';
import type { ServerConfig } from './config.js';
import type { PresenceView } from './presence.js';
import type { PublicRoutes } from './public-routes.js';
import type { EnrollmentCommit, Store } from './store/store.js';
import type { Queryable } from './store/database.js';
import type { GatewayLoad } from './gateway.js';

/**
 * A server feature (mesh coordination, operations, observability) plugs into the running server
 * through this context and nothing else: its own tables through the store's database handle (each
 * feature has its store module), agent sessions through the AgentSessions facade, its admin routes,
 * its public routes on the gateway, the core's audit log, the connection events it may observe, and
 * the enrollment commit it may write into (its own rows for the new node, in the same transaction).
 * Features never import each other: a question one feature answers for another goes through a
 * function the composition root passes in (see features.ts). Features are started by startServer
 * before the gateway accepts agents, and closed in reverse order.
 */
export interface ServerFeatureContext {
  readonly config: ServerConfig;
  readonly store: Store;
  readonly sessions: AgentSessions;
  /** Online and last_seen (its owner is the core). */
  readonly presence: PresenceView;
  readonly admin: AdminRoutes;
  readonly publicRoutes: PublicRoutes;
  readonly audit: AuditLog;
  readonly connections: ConnectionEvents;
  readonly enrollment: EnrollmentEvents;
  /** Questions features answer for each other (the only way one feature learns another's state). */
  readonly questions: FeatureQuestions;
  readonly logger: Logger;
  /** What seals the store's secrets (the server key file and MESHLINK_CA_PASSPHRASE, key-file.ts), for sealing feature secrets. */
  readonly sealing: SealingSecret;
}

/** The gateway's connections as a feature may observe them; each on… returns its unsubscribe. */
export interface ConnectionEvents {
  /** Connections between accept and upgrade now, by stage (the metrics' gateway gauges). */
  load(): GatewayLoad;
  /** An agent connection refused before its upgrade, with the reason (an error code or TLS_HANDSHAKE). */
  onRefused(observer: (reason: string) => void): () => void;
  /**
   * A node's sockets are about to be closed with 4401 (revocation); runs before the close. A returned
   * promise (what the observer sends the node first) delays the close until it settles, 500 ms at most.
   */
  onRevoking(observer: (nodeId: string, reason: string) => void | Promise<unknown>): () => void;
}

/** Enrollment events a feature may take part in; each returns its unsubscribe. */
export interface EnrollmentEvents {
  /**
   * Runs inside the enrollment's commit transaction, after the token is consumed and the node and its
   * certificate are written (`commit.node.existing`: a re-enrollment). What the hook writes commits or
   * rolls back with the enrollment; a throw rolls the enrollment back and fails it. Its writes go
   * through `tx`, the transaction's handle (on SQLite a query on the store's own handle inside the
   * hook would wait for the transaction that runs it).
   */
  onCommit(hook: (commit: EnrollmentCommit, tx: Queryable) => Promise<void>): () => void;
  /** Adds fields to every enrollment response (the mesh: its event-signing keys, the agent's first trust). */
  addResponseFields(contributor: () => Record<string, unknown>): void;
}

/**
 * The questions a feature may answer for the others, declared here so that neither side imports the
 * other. A feature answers at start; an asker asks when it needs the answer (the answering feature may
 * start later, or not run at all: then the question has no answer).
 */
export interface FeatureAnswers {
  /** The columns a feature adds to the node list (`server nodes list`): a lookup by node id, made once per listing. */
  nodeListingFields(): Promise<(nodeId: string) => Partial<NodeListing>>;
  /** The columns a feature adds to the token list (`server token list`): a lookup by the token's SHA-256, made once per listing. */
  tokenListingFields(): Promise<(tokenHash: string) => { tags?: string[] }>;
  /** When mesh event `seq` of the node was created (ms since the epoch), while the event log keeps it. */
  meshEventCreatedAt(nodeId: string, seq: number): Promise<number | undefined>;
  /** A node's mesh part of `server nodes show`: its NAT report and each peer's path as the node was told (null: not in the mesh). */
  meshNodeDetails(nodeId: string): Promise<MeshNodeDetails | null>;
  /** Permitted pairs of keyed nodes by path, for the `meshlink_mesh_pairs` gauge. */
  meshPairsByPath(): { direct: number; relay: number };
  /** The mesh relay's counters for the `meshlink_relay_*` metrics (null: the relay is off). */
  meshRelayStats(): MeshRelayStats | null;
}

/** What the relay counted since the server started (server/mesh/relay.ts, RelayCounters). */
export interface MeshRelayStats {
  allocations: number;
  /** Bytes forwarded from the pair's first member (node ids in order) to the second, and back. */
  bytesAtoB: number;
  bytesBtoA: number;
  packets: number;
  relatched: number;
  dropped: Readonly<Record<string, number>>;
  /** Switching (path-health.ts): direct pairs moved to the relay, trials of direct after a back-off, pairs held on the relay now. */
  switchedToRelay: number;
  directRetries: number;
  heldOnRelay: number;
}

export interface FeatureQuestions {
  answer<K extends keyof FeatureAnswers>(question: K, answer: FeatureAnswers[K]): void;
  ask<K extends keyof FeatureAnswers>(question: K): FeatureAnswers[K] | undefined;
}

/** The composition root's implementation: one answer per question. */
export function createFeatureQuestions(): FeatureQuestions {
  const answers = new Map<keyof FeatureAnswers, unknown>();
  return {
    answer(question, answer) {
      if (answers.has(question)) throw new Error(`question ${question} is already answered`);
      answers.set(question, answer);
    },
    ask: <K extends keyof FeatureAnswers>(question: K) => answers.get(question) as FeatureAnswers[K] | undefined,
  };
}

export interface ServerFeatureHandle {
  close?(): void | Promise<void>;
  /** Fields the feature adds to the `server ready` log line (e.g. the mesh relay's address). */
  readyFields?(): Record<string, unknown>;
}

export type ServerFeature = (ctx: ServerFeatureContext) => ServerFeatureHandle | void | Promise<ServerFeatureHandle | void>;

/**
 * What a feature gets when the operator runs a command with no server running (the CLI's offline
 * path, server/operator/offline.ts): the store, the operator routes to serve on it, and the questions.
 * No agents, no gateway: a change is stored, and the next start tells the agents.
 */
export interface OfflineFeatureContext {
  readonly store: Store;
  readonly admin: AdminRoutes;
  readonly questions: FeatureQuestions;
  readonly logger: Logger;
}

export type OfflineFeature = (ctx: OfflineFeatureContext) => void;
