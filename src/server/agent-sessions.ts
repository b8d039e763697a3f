import type { MeshlinkError } from '../errors.js';
import type { CloseInfo } from '../protocol/session.js';
import type { InputOf, KindName, PayloadOf, RequestKindName as RequestKind, ResponseKindOf as ResponseName } from '../protocol/registry.js';
import type { MuxStream } from '../protocol/stream.js';
import type { AgentConnectionInfo } from './hooks.js';

/**
 * What a server feature sees of the agent sessions: the facade the session host implements. Features
 * never hold a protocol `Session`; they address one session through its handle, send through a call
 * that reports backpressure, and read a snapshot. Handles are per session: a node that reconnects
 * (or renews make-before-break) gets a new handle, so "is this still the session I replayed to?" is
 * an identity check.
 */

export interface AgentHandle {
  readonly nodeId: string;
  readonly info: AgentConnectionInfo;
  readonly hello: PayloadOf<'hello'>;
  readonly connectedAt: number;
  /** False once the session left the open state (closing or closed). */
  readonly open: boolean;
  /** Live counters of the session, read at call time (metrics). */
  readonly streamCount: number;
  readonly flowControlStalls: number;
  readonly inflightBytes: number;
}

/**
 * The outcome of a send: `sent`; `backpressure` (queued, but the session's control queue is above its
 * high-water mark: stop sending to it until `drained()` resolves, or the session fails with
 * ML_ERR_QUEUE_OVERFLOW at 16× the mark); `closed` (the session is not open; nothing was queued).
 */
export type SendResult = 'sent' | 'backpressure' | 'closed';

export type AgentMessageHandler<N extends KindName = KindName> = (agent: AgentHandle, payload: PayloadOf<N>) => void;
/** Handles a stream an agent opened. The handler must accept or reject it. */
export type AgentStreamHandler = (agent: AgentHandle, stream: MuxStream) => void;
/** Answers a request an agent sent; the return value (minus rid) is the response payload. */
export type AgentRequestHandler<N extends RequestKind> = (
  agent: AgentHandle,
  payload: PayloadOf<N>,
) => Omit<InputOf<ResponseName<N>>, 'rid'> | Promise<Omit<InputOf<ResponseName<N>>, 'rid'>>;
/** Contributes fields to the welcome of a new session (e.g. an upgrade offer). */
export type WelcomeContributor = (hello: PayloadOf<'hello'>, info: AgentConnectionInfo) => Partial<InputOf<'welcome'>>;
/**
 * Checks a new session's hello before it is welcomed; a MeshlinkError it throws refuses the session
 * (an `error` frame with its code, then its close code), before any `agent-open`.
 */
export type HelloCheck = (hello: PayloadOf<'hello'>, info: AgentConnectionInfo) => void;

export interface AgentSessions {
  on(event: 'agent-open', listener: (agent: AgentHandle) => void): void;
  on(event: 'agent-close', listener: (agent: AgentHandle, info: CloseInfo) => void): void;
  /** A control message kind from agents; several handlers run in registration order. */
  onMessage<N extends KindName>(kind: N, handler: AgentMessageHandler<N>): void;
  /** Agent-opened streams of `kind` (one handler per kind). */
  onStream(kind: KindName, handler: AgentStreamHandler): void;
  /** A request kind from agents (one handler per kind), on every session. */
  onRequest<N extends RequestKind>(kind: N, handler: AgentRequestHandler<N>): void;
  addWelcomeFields(contributor: WelcomeContributor): void;
  addHelloCheck(check: HelloCheck): void;
  /**
   * Ends one session because a message it sent was refused: an `error` frame with the code, then the
   * code's close code (ML_ERR_BAD_PAYLOAD: 4004). Features validate what the registry's schema cannot
   * know (a value another feature's contract defines) and refuse with this.
   */
  refuse(agent: AgentHandle, error: MeshlinkError): void;
  /** The node's newest open session (the one to open streams on), if it is online. */
  current(nodeId: string): AgentHandle | undefined;
  /** True while the node has an open session (the one definition of online). */
  isOnline(nodeId: string): boolean;
  /** Every open session at this moment (a copy). */
  snapshot(): readonly AgentHandle[];
  send<N extends KindName>(agent: AgentHandle, kind: N, payload: InputOf<N>): SendResult;
  openStream<N extends KindName>(agent: AgentHandle, kind: N, meta: InputOf<N>): Promise<MuxStream>;
  /**
   * Resolves when what was queued on the session before this call has reached the agent (a ping round
   * trip, however long the agent takes to read); rejects once the session closes.
   */
  drained(agent: AgentHandle): Promise<void>;
}
