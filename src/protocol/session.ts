import { zodErrorText } from '../util/zod-error.js';
import { MeshlinkError, type ErrorCode, isProtocolError } from '../errors.js';
import { EventEmitter } from 'node:events';
import { FrameDecoder, decodeMessage } from './decoder.js';
import {
  PING_CODE,
  PONG_CODE,
  STREAM_DATA_CODE,
  STREAM_WINDOW_CODE,
  decodeBin,
  decodeFrame,
  encodeMessage,
  encodeNonceFrame,
  readNonce,
  readWindowCredit,
  type DecodedMessage,
} from './codec.js';
import { DEFAULT_MAX_FRAME_SIZE, Flags, type Frame } from './frame.js';
import { AGENT_DECODE_BUDGET, DECODE_YIELD_BYTES, DEFAULT_DECODE_BUDGET, DecodeBudget, type DecodeBudgetOptions } from './decode-budget.js';
import {
  MESSAGE_KINDS,
  isResponseKind,
  kindByName,
  maySend,
  type InputOf,
  type KindName,
  type MessageKind,
  type PayloadOf,
  type RequestKindName,
  type ResponseKindOf,
  type Role,
  type TypedMessage,
} from './registry.js';
import { HandlerRegistry } from './handler-registry.js';
import { SUPPORTED_VERSIONS, negotiateVersion } from './handshake.js';
import { SendScheduler, releaseMessageBuffer } from './scheduler.js';
import { INITIAL_WINDOW, MuxStream, type StreamHost } from './stream.js';
import { systemTimers, type Timers } from './timers.js';

/**
 * The session: a multiplexer over one message-oriented transport (a WebSocket in production, an
 * in-memory pair in unit tests). It owns the handshake, the stream table, credit flow control, the
 * request/response helper and the send scheduler. It performs no I/O: the transport is injected as
 * `transport.send` (with a completion callback that drives backpressure) and `transport.close`, and
 * the owner feeds received messages to `receive()`.
 */

export interface Transport {
  /**
   * Sends one binary message; `done` runs once the transport has written it out. Contract: after
   * `done()` without an error the transport holds no reference to `message` (the session reuses the
   * buffer); a transport that keeps it longer must copy it.
   */
  send(message: Uint8Array, done: (err?: Error | null) => void): void;
  /** Closes the transport with a WebSocket close code. Called at most once. */
  close(code: number, reason: string): void;
}

export interface SessionOptions {
  role: Role;
  transport: Transport;
  timers?: Timers;
  /** Largest frame payload accepted (default 1 MiB). */
  maxFrameSize?: number;
  /** Target size of a coalesced WebSocket message (default 64 KiB). */
  maxMessageBytes?: number;
  /** Largest stream.data payload a sender emits (default 64 KiB). */
  maxDataFrame?: number;
  /** Per-stream receive window; ≥ 256 KiB. Extra credit is granted when a stream opens. */
  receiveWindow?: number;
  /** Largest per-stream window that auto-tuning may reach (default 4 MiB). */
  maxReceiveWindow?: number;
  /** Total window growth all streams of the session may hold (default 32 MiB). */
  windowGrowthBudget?: number;
  /** Bytes handed to the transport and not yet written, above which the session stops sending (default 1 MiB; measured: 0.88 of raw ws throughput against 0.79 at 256 KiB, see BENCHMARKS.md). */
  transportHighWater?: number;
  /**
   * Bound on the bytes committed to the transport ahead of the next frame (PROTOCOL.md §7): stream
   * data is handed over only while the bytes the peer has not yet confirmed processing stay below
   * `pipeGain` × the measured bandwidth-delay product, and at least `pipeFloor` bytes (`pipeGain`
   * default 2; `pipeFloor` default 128 KiB, see DEFAULT_PIPE_FLOOR; 0 turns the bound off). Control
   * frames and interactive streams' frames (scheduler.ts, rule 5) are not held by it.
   */
  pipeFloor?: number;
  pipeGain?: number;
  /** Queued priority bytes above which send() returns false (default 1 MiB); 16× that is fatal. */
  priorityHighWater?: number;
  /** Concurrent streams the peer may open (default 1024). */
  maxStreams?: number;
  requestTimeoutMs?: number;
  handshakeTimeoutMs?: number;
  versions?: readonly number[];
  /** Decode work a peer may cause, per message and per second (decode-budget.ts). */
  decodeBudget?: DecodeBudgetOptions;
  /** Server role: turns the agent's hello into the welcome fields, or throws a MeshlinkError to refuse. */
  onHello?: (hello: PayloadOf<'hello'>) => Promise<Omit<InputOf<'welcome'>, 'version'>> | Omit<InputOf<'welcome'>, 'version'>;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** Why the session ended, if it was an error (local or announced by the peer). */
  error?: MeshlinkError;
  /** True when the close started on this side. */
  local: boolean;
}

export type SessionState = 'handshaking' | 'open' | 'closed';

/** The payload that answers request kind N. */
type ResponseOf<N extends RequestKindName> = PayloadOf<ResponseKindOf<N>>;
/** What a request handler returns: its response's payload without `rid`, which the session adds. */
type ResponseInput<N extends RequestKindName> = Omit<InputOf<ResponseKindOf<N>>, 'rid'>;
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- each handler takes its own kind's payload
type RequestHandler = (payload: any) => Promise<Record<string, unknown>> | Record<string, unknown>;

interface PendingRequest {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- resolves the awaited kind's response type
  resolve: (value: any) => void;
  reject: (err: Error) => void;
  timer: unknown;
  response: string;
}

/**
 * A control message delivered to the application: a union discriminated by `name`, so that
 * `if (msg.name === 'heartbeat')` gives `msg.payload` the type PayloadOf<'heartbeat'>.
 */
export type ControlMessage<N extends KindName = KindName> = TypedMessage<N>;

/**
 * An error the peer reported: `remoteCode` is the peer's code; `code` says what failed here
 * (ML_ERR_REMOTE for a request or handshake, ML_ERR_STREAM_REJECTED for a refused stream.open).
 */
export class RemoteError extends MeshlinkError {
  readonly remoteCode: string;
  constructor(remoteCode: string, message: string, code: 'ML_ERR_REMOTE' | 'ML_ERR_STREAM_REJECTED' = 'ML_ERR_REMOTE') {
    super(code, `${remoteCode}: ${message}`);
    this.remoteCode = remoteCode;
  }
}

export interface SessionEvents {
  open: [info: { version: number; hello?: PayloadOf<'hello'>; welcome?: PayloadOf<'welcome'> }];
  message: [msg: ControlMessage];
  stream: [stream: MuxStream];
  goaway: [payload: PayloadOf<'goaway'>];
  close: [info: CloseInfo];
  /** Every received frame has been handled: an owner that stopped reading (receive() returned false) reads again. */
  receiveDrain: [];
}

export class Session extends EventEmitter<SessionEvents> implements StreamHost {
  readonly role: Role;
  readonly maxDataFrame: number;
  readonly receiveWindow: number;
  readonly maxReceiveWindow: number;
  readonly maxFrameSize: number;
  state: SessionState = 'handshaking';
  /** The negotiated protocol version, once open. */
  version = 0;
  /** Time the last message arrived (timers.now()), for liveness checks by the owner. */
  lastReceivedAt: number;

  readonly #transport: Transport;
  readonly #timers: Timers;
  readonly #decoder: FrameDecoder;
  readonly #scheduler = new SendScheduler();
  readonly #streams = new Map<number, MuxStream>();
  readonly #pending = new Map<number, PendingRequest>();
  // One handler a request kind: exactly one party answers a request.
  readonly #handlers = new HandlerRegistry<Record<string, [payload: unknown]>>({ exclusive: true });
  readonly #pings = new Map<number, { resolve: (rtt: number) => void; reject: (e: Error) => void; sentAt: number; preciseAt: number; clean: boolean; timer: unknown }>();
  /** The session's own pings (pipe markers and RTT probes), in the order sent; see #flush. */
  readonly #probes = new Map<number, { offset: number; ackedAtSend: number; sentAt: number; clean: boolean }>();
  #nextProbe = 0;
  #lastProbeAt = -Infinity;
  /** Bytes of messages handed to the transport, ever; and how many of them the peer confirmed processing. */
  #sentBytes = 0;
  #ackedBytes = 0;
  /** #sentBytes when the last marker left. */
  #markedBytes = 0;
  /**
   * Round trips (ms, fractional) measured with an empty pipe: pongs of pings sent while at most
   * CLEAN_SLACK bytes were unconfirmed. The estimate is the smallest of the last RTT_SAMPLES: a
   * windowed minimum, so that it follows the path and the two event loops as they are now (on a busy
   * machine each includes scheduling delays; the minimum gave 4.4–5.5 ms loaded round trips against
   * 6.1–7.0 for the median, BENCHMARKS.md). Any other pong counts only until a clean one exists;
   * none carries a queue, so the limit computed from it cannot feed on its own queue.
   */
  readonly #cleanRtts: number[] = [];
  #anyRtt = Infinity;
  /** Their minimum, kept up to date by #noteRtt. */
  #cleanRtt = Infinity;
  /** Stream data waits until every marker is answered, so that the next one measures an empty pipe. */
  #draining = false;
  #lastDrainAt = 0;
  /** The peer has answered a marker: until it has, nothing is held back (a peer that does not answer pings is not held to the bound). */
  #pipeConfirmed = false;
  /** Recent delivery-rate samples (bytes/ms), newest last; the estimate is their maximum. */
  readonly #rates: number[] = [];
  /** Current bound on unacknowledged bytes (0: off). */
  #pipeLimit: number;
  readonly #pipeFloor: number;
  readonly #pipeGain: number;
  #staleTimer: unknown = null;
  readonly #opts: Required<Pick<SessionOptions, 'maxMessageBytes' | 'transportHighWater' | 'priorityHighWater' | 'maxStreams' | 'requestTimeoutMs' | 'handshakeTimeoutMs'>>;
  readonly #versions: readonly number[];
  readonly #onHello: SessionOptions['onHello'];
  #nextStreamId: number;
  /** Highest stream id the peer has opened (ids must increase). */
  #peerLastStreamId = 0;
  #refusedOpens = 0;
  #nextRid = 1;
  #nextNonce = 1;
  #inflightBytes = 0;
  #flowControlStalls = 0;
  #flushQueued = false;
  #flushing = false;
  #goingAway = false;
  #peerGoingAway = false;
  #handshakeTimer: unknown = null;
  #handshakeWaiter: { resolve: (w: PayloadOf<'welcome'>) => void; reject: (e: Error) => void } | null = null;
  #closeInfo: CloseInfo | null = null;
  /** Window growth still available to auto-tuning across all streams. */
  #growthBudget: number;

  constructor(options: SessionOptions) {
    super();
    this.role = options.role;
    this.#transport = options.transport;
    this.#timers = options.timers ?? systemTimers;
    this.maxFrameSize = options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE;
    this.maxDataFrame = options.maxDataFrame ?? 64 * 1024;
    this.receiveWindow = options.receiveWindow ?? INITIAL_WINDOW;
    if (this.receiveWindow < INITIAL_WINDOW) throw new RangeError(`receiveWindow must be at least ${INITIAL_WINDOW}`);
    this.maxReceiveWindow = Math.max(this.receiveWindow, options.maxReceiveWindow ?? 4 * 1024 * 1024);
    this.#growthBudget = options.windowGrowthBudget ?? 32 * 1024 * 1024;
    if (this.maxDataFrame > this.maxFrameSize - 16) throw new RangeError('maxDataFrame must fit in maxFrameSize');
    this.#opts = {
      maxMessageBytes: options.maxMessageBytes ?? 64 * 1024,
      transportHighWater: options.transportHighWater ?? 1024 * 1024,
      priorityHighWater: options.priorityHighWater ?? 1024 * 1024,
      maxStreams: options.maxStreams ?? 1024,
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 10_000,
    };
    this.#pipeFloor = options.pipeFloor ?? DEFAULT_PIPE_FLOOR;
    this.#pipeGain = options.pipeGain ?? 2;
    this.#pipeLimit = this.#pipeFloor;
    this.#versions = options.versions ?? SUPPORTED_VERSIONS;
    this.#onHello = options.onHello;
    this.#decoder = new FrameDecoder({ maxFrameSize: this.maxFrameSize });
    this.#decodeBudget = new DecodeBudget(options.decodeBudget ?? (this.role === 'server' ? DEFAULT_DECODE_BUDGET : AGENT_DECODE_BUDGET), this.#timers.now());
    // Stream ids: agent-opened odd, server-opened even, 0 is the control channel.
    this.#nextStreamId = this.role === 'agent' ? 1 : 2;
    this.lastReceivedAt = this.#timers.now();
    this.#handshakeTimer = this.#timers.setTimeout(() => {
      if (this.state === 'handshaking') this.#fail(new MeshlinkError('ML_ERR_HANDSHAKE', 'handshake timed out'));
    }, this.#opts.handshakeTimeoutMs);
    if (this.role === 'server' && !this.#onHello) throw new TypeError('a server session needs onHello');
  }

  get streamCount(): number {
    return this.#streams.size;
  }

  /**
   * Times one of this session's streams had data to send and no credit: it waited for the peer's
   * stream.window (a slow reader, or a window too small for the link). Counted once per wait.
   */
  get flowControlStalls(): number {
    return this.#flowControlStalls;
  }

  /** Bytes handed to the transport and not yet written. */
  get inflightBytes(): number {
    return this.#inflightBytes;
  }

  /** Bytes handed to the transport that the peer has not yet confirmed processing (PROTOCOL.md §7). */
  get unackedBytes(): number {
    return this.#sentBytes - this.#ackedBytes;
  }

  /** The current bound on unackedBytes for stream data (0 when the bound is off). */
  get pipeLimit(): number {
    return this.#pipeLimit;
  }

  /** The session's round-trip estimate in ms (fractional; see #cleanRtts), or null before the first pong. */
  get rttMs(): number | null {
    const rtt = this.#rtt();
    return rtt === Infinity ? null : rtt;
  }

  #rtt(): number {
    return this.#cleanRtts.length === 0 ? this.#anyRtt : this.#cleanRtt;
  }

  get closeInfo(): CloseInfo | null {
    return this.#closeInfo;
  }

  // ===================== handshake =====================

  /** Agent role: sends hello and resolves with the server's welcome. */
  handshake(hello: Omit<InputOf<'hello'>, 'versions'>): Promise<PayloadOf<'welcome'>> {
    if (this.role !== 'agent') throw new TypeError('only the agent sends hello');
    if (this.#handshakeWaiter || this.state !== 'handshaking') throw new TypeError('handshake already started');
    return new Promise((resolve, reject) => {
      this.#handshakeWaiter = { resolve, reject };
      this.#enqueuePriority(encodeMessage('hello', 0, { ...hello, versions: [...this.#versions] }));
    });
  }

  // ===================== sending =====================

  /**
   * Sends a control message on stream 0. Returns false when the priority queue is above its
   * high-water mark (wait for the transport to catch up, e.g. via ping()), like Writable.write().
   */
  send<N extends KindName>(name: N, payload: InputOf<N>): boolean {
    this.#assertOpen();
    const kind = this.#checkOutgoing(name, 'control');
    this.#enqueuePriority(encodeMessage(kind.name as N, 0, payload));
    return this.#scheduler.priorityBytes < this.#opts.priorityHighWater;
  }

  /** Sends a request and resolves with its response payload; rejects with RemoteError or a timeout. */
  request<N extends RequestKindName>(name: N, payload: Omit<InputOf<N>, 'rid'>, options: { timeoutMs?: number } = {}): Promise<ResponseOf<N>> {
    this.#assertOpen();
    if (this.#goingAway || this.#peerGoingAway) {
      return Promise.reject(new MeshlinkError('ML_ERR_GOAWAY', 'session is going away'));
    }
    const kind = this.#checkOutgoing(name, 'control');
    const rid = this.#allocRid();
    const frame = encodeMessage(name, 0, { ...payload, rid } as InputOf<N>);
    return new Promise((resolve, reject) => {
      const timeoutMs = options.timeoutMs ?? this.#opts.requestTimeoutMs;
      const timer = this.#timers.setTimeout(() => {
        this.#pending.delete(rid);
        reject(new MeshlinkError('ML_ERR_REQUEST_TIMEOUT', `${name} got no response within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(rid, { resolve, reject, timer, response: kind.response! });
      this.#enqueuePriority(frame);
    });
  }

  /**
   * Registers the handler for a request kind; its return value (minus rid) is the response payload.
   * A kind has one handler: a second registration throws. Returns the handler's removal.
   */
  handle<N extends RequestKindName>(name: N, handler: (payload: PayloadOf<N>) => Promise<ResponseInput<N>> | ResponseInput<N>): () => void {
    return this.#handlers.on(name, handler as RequestHandler);
  }

  /** Measures the round trip with ping/pong. */
  ping(timeoutMs = 10_000): Promise<number> {
    this.#assertOpen();
    // Below PROBE_NONCE: the session's own pings use the nonces from there on.
    const nonce = this.#nextNonce;
    this.#nextNonce = (this.#nextNonce % (PROBE_NONCE - 1)) + 1;
    return new Promise((resolve, reject) => {
      const timer = this.#timers.setTimeout(() => {
        this.#pings.delete(nonce);
        reject(new MeshlinkError('ML_ERR_REQUEST_TIMEOUT', `no pong within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pings.set(nonce, { resolve, reject, sentAt: this.#timers.now(), preciseAt: this.preciseNow(), clean: this.#pipeEmpty(), timer });
      this.#enqueuePriority(encodeNonceFrame('ping', nonce));
    });
  }

  /** Opens a stream whose first message is `kind` with `meta`; resolves once the peer accepts. */
  openStream<N extends KindName>(name: N, meta: InputOf<N>): Promise<MuxStream> {
    this.#assertOpen();
    if (this.#goingAway || this.#peerGoingAway) {
      return Promise.reject(new MeshlinkError('ML_ERR_GOAWAY', 'session is going away; no new streams'));
    }
    const kind = this.#checkOutgoing(name, 'stream');
    const checked = kind.schema.safeParse(meta);
    if (!checked.success) throw new TypeError(`invalid ${name} metadata: ${zodErrorText(checked.error)}`);
    const id = this.#nextStreamId;
    if (id > 0xffff_fffd) return Promise.reject(new MeshlinkError('ML_ERR_STREAM_ID', 'stream ids exhausted; reconnect'));
    this.#nextStreamId += 2;
    const stream = new MuxStream(this, { id, kind: name, meta: checked.data, local: true });
    this.#streams.set(id, stream);
    return new Promise((resolve, reject) => {
      // The peer may put stream.accept and a frame that ends or breaks the stream (stream.reset,
      // data beyond the window, data after END_STREAM) into one WebSocket message (§1 allows any
      // coalescing). Those later frames are handled in the same receive() call, before the opener's
      // continuation runs, and the stream's 'error' is emitted before the opener has listeners: it
      // would wait forever. So the answer is settled only once the rest of the message has been
      // handled (a microtask runs after the synchronous receive loop): a stream already destroyed
      // by then rejects with its error instead of being handed over.
      const onOpen = (): void => {
        queueMicrotask(() => {
          stream.off('error', onError);
          if (stream.destroyed) reject(stream.errored ?? new MeshlinkError('ML_ERR_STREAM_CLOSED', `stream ${id} ended before it was handed over`));
          else resolve(stream);
        });
      };
      const onError = (err: Error): void => {
        stream.off('meshlink:open', onOpen);
        reject(err);
      };
      stream.once('meshlink:open', onOpen);
      stream.once('error', onError);
      this.#enqueuePriority(encodeMessage('stream.open', id, { kind: name, meta }));
    });
  }

  /** Accepts a stream the peer opened (from the 'stream' event). */
  accept(stream: MuxStream): void {
    if (stream.state !== 'opening' || stream.local) return;
    this.#enqueuePriority(encodeMessage('stream.accept', stream.id, {}));
    stream._opened();
  }

  /** Refuses a stream the peer opened. */
  reject(stream: MuxStream, code: string, message: string): void {
    if (stream.state !== 'opening' || stream.local) return;
    this.#enqueuePriority(encodeMessage('stream.reject', stream.id, { code, message: message.slice(0, 1024) }));
    this.#forgetStream(stream.id);
    stream._abort(new MeshlinkError('ML_ERR_STREAM_REJECTED', message));
  }

  /** Announces that this side will open nothing new; existing streams may finish. */
  goaway(reason: string, code?: string): void {
    if (this.state === 'closed' || this.#goingAway) return;
    this.#goingAway = true;
    this.#enqueuePriority(encodeMessage('goaway', 0, code ? { reason, code } : { reason }));
  }

  /**
   * Closes the session: fails pending work, then closes the transport once queued priority frames
   * (e.g. a goaway or error) have been handed over.
   */
  close(code = 1000, reason = ''): void {
    this.#shutdown({ code, reason, local: true });
  }

  /** Ends the session because of `error`: tells the peer (error frame), then closes with its close code. */
  abort(error: MeshlinkError): void {
    this.#fail(error);
  }

  // ===================== receiving =====================

  /**
   * Feeds one received WebSocket message. Nothing the peer sends makes it throw: protocol errors
   * close the session, and so does an exception from an application listener that runs inside this
   * call ('stream', 'message', or a stream's 'data' when the chunk is emitted at once), as
   * ML_ERR_INTERNAL (1011). Listeners that Node streams call later (a 'data' event of buffered data)
   * throw where Node calls them, as with any stream. The one exception that reaches this caller is
   * one thrown by the application's own 'close' listener: it runs last, once the session has fully
   * closed, and is the application's bug to see rather than something to swallow.
   *
   * Returns false when frames of this message still wait (the receiver yielded, §3.4): stop feeding
   * until 'receiveDrain', like a Writable's write() and 'drain'.
   */
  receive(message: Uint8Array): boolean {
    if (this.state === 'closed') return true;
    this.lastReceivedAt = this.#timers.now();
    try {
      this.#backlog.push({ frames: decodeMessage(message, this.#decoder), index: 0, work: 0 });
    } catch (err) {
      this.#fail(err);
      return true;
    }
    if (!this.#drainScheduled) this.#drainBacklog();
    if (this.#backlog.length === 0) return true;
    this.#receiveBlocked = true;
    return false;
  }

  #receiveBlocked = false;

  /**
   * Frames received and not yet handled, one entry a WebSocket message. Handling yields to the event
   * loop after DECODE_YIELD_BYTES of decode work (decode-budget.ts), so one message of many costly
   * frames cannot hold the process; while frames wait, receive() returns false (the owner stops
   * reading its socket) and 'receiveDrain' says when to read again.
   */
  readonly #backlog: Array<{ frames: Frame[]; index: number; work: number }> = [];
  #drainScheduled = false;
  readonly #decodeBudget: DecodeBudget;

  #drainBacklog(): void {
    let slice = 0;
    try {
      while (this.#backlog.length > 0) {
        const entry = this.#backlog[0]!;
        while (entry.index < entry.frames.length) {
          if ((this.state as SessionState) === 'closed') return;
          if (slice >= DECODE_YIELD_BYTES) {
            this.#drainScheduled = true;
            this.defer(() => {
              this.#drainScheduled = false;
              this.#drainBacklog();
            });
            return;
          }
          const frame = entry.frames[entry.index++]!;
          // Fast path for the bulk of traffic: uncompressed stream.data skips the generic codec
          // (no schema, no intermediate objects); the checks are the same as in #dispatch.
          if (frame.type === STREAM_DATA_CODE && (frame.flags & Flags.COMPRESSED) === 0 && this.state === 'open' && frame.stream !== 0) {
            this.#receiveStreamData(frame.stream, frame.flags, decodeBin(frame.payload));
            continue;
          }
          // The same for stream.window in the form every meshlink sender writes; other encodings
          // (readWindowCredit returns null) take the generic path below.
          if (frame.type === STREAM_WINDOW_CODE && frame.flags === 0 && this.state === 'open' && frame.stream !== 0) {
            const credit = readWindowCredit(frame.payload);
            if (credit !== null) {
              this.#receiveWindow(frame.stream, credit);
              continue;
            }
          }
          // And for ping/pong in the form meshlink writes (pipe markers come every few dozen KiB).
          if ((frame.type === PING_CODE || frame.type === PONG_CODE) && frame.flags === 0 && this.state === 'open' && frame.stream === 0) {
            const nonce = readNonce(frame.payload);
            if (nonce !== null) {
              if (frame.type === PING_CODE) this.#answerPing(nonce);
              else this.#receivePong(nonce);
              continue;
            }
          }
          const msg = decodeFrame(frame, this.maxFrameSize);
          entry.work += msg.size;
          slice += msg.size;
          this.#decodeBudget.charge(msg.size, entry.work, this.#timers.now());
          this.#dispatch(msg);
        }
        this.#backlog.shift();
      }
    } catch (err) {
      this.#backlog.length = 0;
      this.#fail(err);
      return;
    }
    if (this.#receiveBlocked) {
      this.#receiveBlocked = false;
      this.emit('receiveDrain');
    }
  }

  /** The transport closed underneath the session (peer closed, network failed). */
  transportClosed(code: number, reason: string): void {
    if (this.state === 'closed') return;
    this.#shutdown({ code, reason, local: false, error: this.#errorForRemoteClose(code, reason) }, false);
  }

  #dispatch(msg: DecodedMessage): void {
    const { kind, stream: streamId, flags } = msg;
    const peerRole: Role = this.role === 'agent' ? 'server' : 'agent';
    if (!maySend(kind, peerRole)) {
      throw new MeshlinkError('ML_ERR_WRONG_DIRECTION', `${kind.name} may not be sent by the ${peerRole}`);
    }
    if ((kind.scope === 'control' && streamId !== 0) || (kind.scope === 'stream' && streamId === 0)) {
      throw new MeshlinkError('ML_ERR_WRONG_STREAM', `${kind.name} is not allowed on stream ${streamId}`);
    }
    if ((flags & Flags.END_STREAM) !== 0 && !kind.endStream) {
      throw new MeshlinkError('ML_ERR_BAD_PAYLOAD', `END_STREAM is only valid on ${END_STREAM_KINDS}`);
    }
    if (this.state === 'handshaking') {
      this.#dispatchHandshake(msg);
      return;
    }
    if (streamId !== 0) {
      this.#dispatchStream(msg);
      return;
    }
    // The session's own kinds; every other control kind is a request, a response or the application's.
    switch (msg.name) {
      case 'hello':
      case 'welcome':
        throw new MeshlinkError('ML_ERR_HANDSHAKE', `unexpected ${kind.name} after the handshake`);
      case 'ping':
        this.#answerPing(msg.payload.nonce);
        return;
      case 'pong':
        this.#receivePong(msg.payload.nonce);
        return;
      case 'goaway':
        this.#peerGoingAway = true;
        this.emit('goaway', msg.payload);
        return;
      case 'error': {
        const e = msg.payload;
        if (e.rid !== undefined) {
          const p = this.#pending.get(e.rid);
          if (p) {
            this.#pending.delete(e.rid);
            this.#timers.clearTimeout(p.timer);
            p.reject(new RemoteError(e.code, e.message));
          }
          return;
        }
        // An error without rid announces the peer's close; remember it for the close info.
        this.#peerError = new RemoteError(e.code, e.message);
        return;
      }
    }
    // Requests and responses are told apart by the registry's `response` declarations alone. (`in` is
    // safe: every control kind's payload is a map; the bytes kinds are stream kinds, handled above.)
    const rid = 'rid' in msg.payload ? msg.payload.rid : undefined;
    if (kind.response !== undefined && rid !== undefined) {
      this.#serveRequest(kind, rid, msg.payload);
      return;
    }
    if (rid !== undefined) {
      const p = this.#pending.get(rid);
      if (p && p.response === kind.name) {
        this.#pending.delete(rid);
        this.#timers.clearTimeout(p.timer);
        p.resolve(msg.payload);
        return;
      }
      if (isResponseKind(kind)) return; // late response after a timeout: drop
    }
    // A new object rather than the decoded message, which carries the frame's fields too; the cast
    // only restates the pairing of name and payload that decodeFrame established.
    this.emit('message', { name: msg.name, payload: msg.payload } as ControlMessage);
  }

  #peerError: RemoteError | null = null;

  /**
   * An application's ping is answered at once, ahead of all queued stream data. A peer's pipe marker
   * (nonce from PROBE_NONCE) may wait until the end of this turn: its pong then leaves in one message
   * with the stream.window updates the same data freed (PROTOCOL.md §8).
   */
  #answerPing(nonce: number): void {
    this.#enqueuePriority(encodeNonceFrame('pong', nonce), nonce >= PROBE_NONCE);
  }

  #receivePong(nonce: number): void {
    if (nonce >= PROBE_NONCE) {
      this.#probeAnswered(nonce);
      return;
    }
    const p = this.#pings.get(nonce);
    if (p) {
      this.#pings.delete(nonce);
      this.#timers.clearTimeout(p.timer);
      this.#noteRtt(this.preciseNow() - p.preciseAt, p.clean);
      p.resolve(this.#timers.now() - p.sentAt);
    }
  }

  #dispatchHandshake(msg: DecodedMessage): void {
    if (this.role === 'server' && msg.name === 'hello') {
      this.#acceptHello(msg.payload);
      return;
    }
    if (this.role === 'agent' && msg.name === 'welcome') {
      const welcome = msg.payload;
      if (!this.#versions.includes(welcome.version)) {
        throw new MeshlinkError('ML_ERR_NO_COMMON_VERSION', `server chose version ${welcome.version}, which this agent does not speak`);
      }
      this.#becomeOpen(welcome.version);
      this.#handshakeWaiter?.resolve(welcome);
      this.#handshakeWaiter = null;
      this.emit('open', { version: welcome.version, welcome });
      return;
    }
    if (msg.name === 'error') {
      const e = msg.payload;
      this.#peerError = new RemoteError(e.code, e.message);
      return;
    }
    throw new MeshlinkError('ML_ERR_HANDSHAKE', `${msg.name} before the handshake completed`);
  }

  #acceptHello(hello: PayloadOf<'hello'>): void {
    if (this.#helloSeen) throw new MeshlinkError('ML_ERR_HANDSHAKE', 'duplicate hello');
    this.#helloSeen = true;
    const version = negotiateVersion(hello.versions, this.#versions);
    if (version === null) {
      throw new MeshlinkError('ML_ERR_NO_COMMON_VERSION', `agent speaks [${hello.versions.join(', ')}], server speaks [${this.#versions.join(', ')}]`);
    }
    Promise.resolve()
      .then(() => this.#onHello!(hello))
      .then(
        (fields) => {
          if (this.state !== 'handshaking') return;
          this.#enqueuePriority(encodeMessage('welcome', 0, { ...fields, version }));
          this.#becomeOpen(version);
          this.emit('open', { version, hello });
        },
        (err: unknown) => this.#fail(err),
      );
  }

  #helloSeen = false;

  #becomeOpen(version: number): void {
    this.state = 'open';
    this.version = version;
    this.#timers.clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = null;
  }

  #serveRequest(kind: MessageKind, rid: number, payload: unknown): void {
    const handler = this.#handlers.handlersOf(kind.name)[0] as RequestHandler | undefined;
    const respond = (frame: Uint8Array): void => {
      if (this.state === 'open') this.#enqueuePriority(frame);
    };
    if (!handler) {
      respond(encodeMessage('error', 0, { rid, code: 'ML_ERR_UNSUPPORTED', message: `${kind.name} is not supported here` }));
      return;
    }
    Promise.resolve()
      .then(() => handler(payload))
      .then(
        (result) => respond(encodeMessage(kind.response as KindName, 0, { ...result, rid } as never)),
        (err: unknown) => {
          const code = err instanceof MeshlinkError ? err.code : 'ML_ERR_INTERNAL';
          const message = err instanceof MeshlinkError ? err.message : 'internal error';
          respond(encodeMessage('error', 0, { rid, code, message: message.slice(0, 1024) }));
        },
      );
  }

  #dispatchStream(msg: DecodedMessage): void {
    const { stream: id, flags } = msg;
    if (msg.name === 'stream.open') {
      this.#acceptOpen(id, msg.payload);
      return;
    }
    const stream = this.#streamFor(id, msg.name);
    if (!stream) return;
    // The multiplexer's own frames; every other kind is a typed message of the stream's conversation.
    switch (msg.name) {
      case 'stream.accept':
      case 'stream.reject':
        if (!stream.local || stream.state !== 'opening') {
          throw new MeshlinkError('ML_ERR_STREAM_ID', `${msg.name} for stream ${id}, which is not awaiting an answer`);
        }
        if (msg.name === 'stream.accept') {
          stream._opened();
          stream.emit('meshlink:open');
        } else {
          const r = msg.payload;
          this.#forgetStream(id);
          stream._abort(new RemoteError(r.code, r.message, 'ML_ERR_STREAM_REJECTED'));
        }
        return;
      case 'stream.data':
        this.#receiveStreamData(id, flags, msg.payload);
        return;
      case 'stream.window':
        stream._addCredit(msg.payload.credit);
        return;
      case 'stream.close':
        stream._receiveEnd();
        return;
      case 'stream.reset': {
        const r = msg.payload;
        this.#forgetStream(id);
        stream._receiveReset(r.code, r.message);
        return;
      }
      default:
        // A typed message within the stream's conversation (exec.resize, action.result, ...).
        if (stream.state !== 'open') throw new MeshlinkError('ML_ERR_STREAM_ID', `${msg.name} on stream ${id} before it was accepted`);
        stream._receiveMessage({ name: msg.name, payload: msg.payload }, msg.size);
    }
  }

  #receiveStreamData(id: number, flags: number, data: Uint8Array): void {
    const stream = this.#streamFor(id, 'stream.data');
    if (!stream) return;
    if (stream.state !== 'open') throw new MeshlinkError('ML_ERR_STREAM_ID', `data on stream ${id} before it was accepted`);
    stream._receiveData(data, (flags & Flags.END_STREAM) !== 0);
  }

  #receiveWindow(id: number, credit: number): void {
    this.#streamFor(id, 'stream.window')?._addCredit(credit);
  }

  /**
   * The stream a frame of kind `name` addresses, or null for one already forgotten: frames can race
   * with a local reset or release, so ids we have seen are stale, not errors. An id never opened is.
   */
  #streamFor(id: number, name: string): MuxStream | null {
    const stream = this.#streams.get(id);
    if (stream) return stream;
    if (this.#isKnownId(id)) return null;
    throw new MeshlinkError('ML_ERR_STREAM_ID', `${name} for stream ${id}, which was never opened`);
  }

  #isKnownId(id: number): boolean {
    const peerParity = this.role === 'agent' ? 0 : 1;
    if (id % 2 === peerParity) return id <= this.#peerLastStreamId;
    return id < this.#nextStreamId;
  }

  #acceptOpen(id: number, open: PayloadOf<'stream.open'>): void {
    const peerParity = this.role === 'agent' ? 0 : 1;
    if (id % 2 !== peerParity || id <= this.#peerLastStreamId) {
      throw new MeshlinkError('ML_ERR_STREAM_ID', `stream.open with id ${id}: wrong parity or not increasing`);
    }
    this.#peerLastStreamId = id;
    const refuse = (code: ErrorCode | string, message: string): void => {
      this.#enqueuePriority(encodeMessage('stream.reject', id, { code, message }));
    };
    if (this.#goingAway) {
      refuse('ML_ERR_GOAWAY', 'session is going away');
      return;
    }
    // The cap is on streams the peer opened; our own streams do not count against it.
    let peerOpened = 0;
    for (const st of this.#streams.values()) if (!st.local) peerOpened++;
    if (peerOpened >= this.#opts.maxStreams) {
      // A peer that keeps opening after being refused a whole cap's worth of times is flooding.
      if (++this.#refusedOpens > this.#opts.maxStreams) {
        throw new MeshlinkError('ML_ERR_TOO_MANY_STREAMS', `peer kept opening streams beyond the cap of ${this.#opts.maxStreams}`);
      }
      refuse('ML_ERR_TOO_MANY_STREAMS', `at most ${this.#opts.maxStreams} concurrent streams`);
      return;
    }
    const kind = kindByName(open.kind);
    const peerRole: Role = this.role === 'agent' ? 'server' : 'agent';
    // Any stream-scoped kind the peer may send opens a conversation (§6.2), except the multiplexer's own.
    if (!kind || kind.scope !== 'stream' || !maySend(kind, peerRole) || kind.onStream === 'mux') {
      refuse('ML_ERR_UNKNOWN_TYPE', `cannot open a stream of kind ${open.kind}`);
      return;
    }
    const meta = kind.schema.safeParse(open.meta);
    if (!meta.success) {
      refuse('ML_ERR_BAD_PAYLOAD', `${open.kind}: ${zodErrorText(meta.error)}`.slice(0, 1024));
      return;
    }
    const stream = new MuxStream(this, { id, kind: kind.name, meta: meta.data, local: false });
    this.#streams.set(id, stream);
    if (this.listenerCount('stream') === 0) {
      this.reject(stream, 'ML_ERR_UNSUPPORTED', `no handler for ${kind.name}`);
      return;
    }
    this.emit('stream', stream);
  }

  // ===================== StreamHost =====================

  markReady(stream: MuxStream): void {
    if (this.state === 'closed') return;
    this.#scheduler.markReady(stream);
    this.#queueFlush();
  }

  sendPriority(frame: Uint8Array): void {
    if (this.state === 'closed') return;
    this.#enqueuePriority(frame);
  }

  /**
   * Credit updates leave at the end of the event loop's turn rather than at the end of the current
   * callback: a busy receiver handles many WebSocket messages per turn, and the credit they free then
   * leaves as one message instead of one each. Every message is a socket write here and a read at
   * the peer; with 100 busy streams this cut the receiver's messages from 8 to 2 per MiB received
   * and its CPU by about a tenth (BENCHMARKS.md). The delay costs the sender nothing: credit is
   * granted at half a window, so it still holds the other half. An update that finds a flush
   * already on its way simply joins it.
   */
  sendWindowUpdate(frame: Uint8Array): void {
    if (this.state === 'closed') return;
    this.#enqueuePriority(frame, true);
  }

  reserveWindow(bytes: number): boolean {
    if (bytes > this.#growthBudget) return false;
    this.#growthBudget -= bytes;
    return true;
  }

  releaseWindow(bytes: number): void {
    this.#growthBudget += bytes;
  }

  noteStall(): void {
    this.#flowControlStalls++;
  }

  now(): number {
    return this.#timers.now();
  }

  /** StreamHost: a clock in fractional ms for round trips (Timers.preciseNow, else now()). */
  preciseNow(): number {
    return this.#timers.preciseNow ? this.#timers.preciseNow() : this.#timers.now();
  }

  /**
   * StreamHost: asks for a fresh round-trip sample (a probe ping), at most one every
   * PROBE_INTERVAL_MS and one at a time; the receive-window rule needs the minimum RTT.
   */
  probeRtt(): void {
    if (this.state !== 'open') return;
    const now = this.preciseNow();
    if (now - this.#lastProbeAt < PROBE_INTERVAL_MS) return;
    for (const p of this.#probes.values()) if (p.offset < 0) return;
    this.#lastProbeAt = now;
    const nonce = this.#allocProbe();
    this.#probes.set(nonce, { offset: -1, ackedAtSend: 0, sentAt: now, clean: this.#pipeEmpty() });
    this.#enqueuePriority(encodeNonceFrame('ping', nonce));
  }

  /** StreamHost: from version 2 on, typed stream messages consume window credit (PROTOCOL.md §6.5). */
  get messagesUseCredit(): boolean {
    return this.version >= 2;
  }

  /** Drops a stream from the table; a stream ending is what entitles a refused peer to open again. */
  #forgetStream(id: number): void {
    if (this.#streams.delete(id)) this.#refusedOpens = 0;
  }

  release(stream: MuxStream): void {
    this.#scheduler.forget(stream);
    if (this.#streams.get(stream.id) === stream) {
      this.#streams.delete(stream.id);
      this.#refusedOpens = 0;
    }
  }

  // ===================== scheduling =====================

  #enqueuePriority(frame: Uint8Array, endOfTurn = false): void {
    if (this.state === 'closed') return;
    this.#scheduler.pushPriority(frame);
    if (this.#scheduler.priorityBytes > this.#opts.priorityHighWater * 16) {
      // The application ignored send()'s false return for far too long.
      this.#fail(new MeshlinkError('ML_ERR_QUEUE_OVERFLOW', 'control queue overflow'));
      return;
    }
    if (!endOfTurn) {
      this.#queueFlush();
    } else if (!this.#flushQueued && !this.#turnFlushQueued) {
      this.#turnFlushQueued = true;
      this.defer(() => {
        this.#turnFlushQueued = false;
        this.#flush();
      });
    }
  }

  /**
   * StreamHost: the end of the event loop's turn; with injected timers that lack defer(), a zero
   * timeout (not a microtask: an async-iterating reader would then see a message before its data).
   */
  defer(fn: () => void): void {
    if (this.#timers.defer) this.#timers.defer(fn);
    else this.#timers.setTimeout(fn, 0);
  }

  #turnFlushQueued = false;

  /** Flushes in a microtask, so frames queued in the same tick share one WebSocket message. */
  #queueFlush(): void {
    if (this.#flushQueued) return;
    this.#flushQueued = true;
    queueMicrotask(() => {
      this.#flushQueued = false;
      this.#flush();
    });
  }

  /**
   * Hands messages to the transport. Two bounds (PROTOCOL.md §7):
   * - transportHighWater on bytes handed over and not yet written (the transport's own queue);
   *   messages of control frames alone may exceed it by a quarter, so that pings, pongs and credit
   *   never wait for the transport to drain bulk data;
   * - the pipe limit on stream data: bytes handed over that the peer has not yet confirmed
   *   processing. Node cannot bound what the kernel holds (no TCP_NOTSENT_LOWAT), and on loopback
   *   a receiver slower than its sender let up to a whole window (4 MiB) queue in the socket
   *   buffers ahead of every interactive frame (BENCHMARKS.md). So every pipe-limit/4 bytes a
   *   data message ends with a marker: a ping whose pong says the peer has handled everything up to
   *   it (every limit/4 bytes, at most MARKER_MAX_SPACING apart). Data waits in the scheduler,
   *   where control frames and other streams can pass it, while the unconfirmed bytes reach the
   *   limit, which follows the measured bandwidth-delay product.
   */
  #flush(): void {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      const highWater = this.#opts.transportHighWater;
      while (this.#inflightBytes < highWater + Math.floor(highWater / 4) && this.#transportUsable()) {
        if (this.#draining && !this.#markerOutstanding() && !this.#pipeEmpty() && this.state === 'open') {
          // The drain needs every byte confirmed: a marker on its own covers what the last one did not.
          const nonce = this.#allocProbe();
          const tail = encodeNonceFrame('ping', nonce);
          this.#inflightBytes += tail.byteLength;
          this.#sentBytes += tail.byteLength;
          this.#markedBytes = this.#sentBytes;
          this.#probes.set(nonce, { offset: this.#sentBytes, ackedAtSend: this.#ackedBytes, sentAt: this.preciseNow(), clean: false });
          this.#transport.send(tail, () => {
            this.#inflightBytes -= tail.byteLength;
          });
          continue;
        }
        const dataAllowed = this.#inflightBytes < highWater && this.#pipeOpen();
        let marker: Uint8Array | null = null;
        let nonce = 0;
        if (dataAllowed && this.#pipeLimit > 0 && this.state === 'open' && this.#scheduler.hasStreamWork && (this.#draining || this.#sentBytes - this.#markedBytes >= Math.min(this.#pipeLimit / 4, MARKER_MAX_SPACING))) {
          nonce = this.#peekProbe();
          marker = encodeNonceFrame('ping', nonce);
        }
        const clean = this.#pipeEmpty();
        const next = this.#scheduler.next(this.#opts.maxMessageBytes, this.maxDataFrame, dataAllowed, marker, this.preciseNow());
        if (!next) break;
        const size = next.message.byteLength;
        this.#inflightBytes += size;
        this.#sentBytes += size;
        if (next.trailer) {
          this.#allocProbe();
          if (this.#draining) {
            this.#draining = false;
            this.#lastDrainAt = this.preciseNow();
          }
          this.#markedBytes = this.#sentBytes;
          this.#probes.set(nonce, { offset: this.#sentBytes, ackedAtSend: this.#ackedBytes, sentAt: this.preciseNow(), clean });
        }
        const pooled = next.pooled;
        this.#transport.send(next.message, (err) => {
          this.#inflightBytes -= size;
          if (pooled && !err) releaseMessageBuffer(pooled);
          if (this.#scheduler.hasWork) this.#queueFlush();
        });
        for (const cb of next.sent) cb();
      }
      if (this.#scheduler.hasWork && !this.#pipeOpen()) this.#armStaleTimer();
    } finally {
      this.#flushing = false;
    }
  }

  /**
   * Stream data may go: the bound is off, the peer has not answered a marker yet, no marker is
   * outstanding (the next data message carries one), the oldest has had no answer for
   * MARKER_STALE_MS (a peer that stops answering pings is not held to the bound), or the
   * unconfirmed bytes are below the limit and no drain is under way.
   *
   * While data flows, the pipe is drained once every DRAIN_INTERVAL_MS or DRAIN_INTERVAL_RTTS round
   * trips, whichever is longer: data waits until every byte sent is confirmed (a marker on its own
   * covers the tail), and the next marker then measures the round trip of an empty pipe. Without it,
   * every marker of a busy connection would wait behind the limit's worth of queue, the RTT would
   * include that queue, and the limit computed from it would grow without end (BBR's ProbeRTT drains
   * for the same reason). The cost is about one round trip of idle link per interval: hence the
   * interval in round trips, which keeps it near 2 % on any path (at a fixed 250 ms, a 40 ms path
   * lost a sixth of its throughput to drains; bench:wan, BENCHMARKS.md).
   */
  #pipeOpen(): boolean {
    if (this.#pipeLimit === 0 || !this.#pipeConfirmed) return true;
    let oldest: { sentAt: number } | undefined;
    for (const p of this.#probes.values()) {
      if (p.offset >= 0) {
        oldest = p;
        break;
      }
    }
    const now = this.preciseNow();
    if (oldest && now - oldest.sentAt > MARKER_STALE_MS) return true;
    if (this.#draining) return !oldest && this.#pipeEmpty();
    if (!oldest) return true;
    if (now - this.#lastDrainAt >= Math.max(DRAIN_INTERVAL_MS, DRAIN_INTERVAL_RTTS * this.#rtt())) {
      this.#draining = true;
      return false;
    }
    return this.#sentBytes - this.#ackedBytes < this.#pipeLimit;
  }

  #armStaleTimer(): void {
    if (this.#staleTimer !== null || this.state === 'closed') return;
    this.#staleTimer = this.#timers.setTimeout(() => {
      this.#staleTimer = null;
      this.#queueFlush();
    }, MARKER_STALE_MS + 1);
  }

  /**
   * A pong for one of the session's own pings. Pongs come in the order of their pings, so every
   * earlier one still listed is lost and is dropped. A marker's pong confirms everything sent up to
   * it: the unconfirmed bytes shrink, and it gives a delivery-rate sample (bytes confirmed during
   * its flight over the flight's time), from which the limit follows: gain × max rate × RTT.
   */
  #probeAnswered(nonce: number): void {
    const p = this.#probes.get(nonce);
    if (!p) return;
    for (const key of this.#probes.keys()) {
      this.#probes.delete(key);
      if (key === nonce) break;
    }
    const now = this.preciseNow();
    const rtt = now - p.sentAt;
    this.#noteRtt(rtt, p.clean);
    if (p.offset >= 0) {
      this.#pipeConfirmed = true;
      if (p.offset > this.#ackedBytes) this.#ackedBytes = p.offset;
      if (rtt > 0) {
        this.#rates.push((p.offset - p.ackedAtSend) / rtt);
        if (this.#rates.length > RATE_SAMPLES) this.#rates.shift();
      }
      const rttEstimate = this.#rtt();
      if (this.#pipeFloor > 0 && this.#rates.length > 0 && Number.isFinite(rttEstimate)) {
        // At most doubled or halved per answer, so that one odd sample cannot throw it far.
        const target = this.#pipeGain * Math.max(...this.#rates) * rttEstimate;
        const bounded = Math.min(2 * this.#pipeLimit, Math.max(this.#pipeLimit / 2, target));
        this.#pipeLimit = Math.min(PIPE_CEILING, Math.max(this.#pipeFloor, Math.ceil(bounded)));
      }
    }
    if (this.#scheduler.hasWork) this.#queueFlush();
  }

  #noteRtt(rtt: number, clean: boolean): void {
    if (!(rtt >= 0)) return;
    if (rtt < this.#anyRtt) this.#anyRtt = rtt;
    if (!clean) return;
    this.#cleanRtts.push(rtt);
    if (this.#cleanRtts.length > RTT_SAMPLES) this.#cleanRtts.shift();
    this.#cleanRtt = Math.min(...this.#cleanRtts);
  }

  /** Everything sent has been confirmed, but for at most CLEAN_SLACK bytes (control frames sent since). */
  #pipeEmpty(): boolean {
    return this.#sentBytes - this.#ackedBytes <= CLEAN_SLACK;
  }

  #markerOutstanding(): boolean {
    for (const p of this.#probes.values()) if (p.offset >= 0) return true;
    return false;
  }

  /** The next probe nonce, without taking it. */
  #peekProbe(): number {
    return PROBE_NONCE + this.#nextProbe;
  }

  #allocProbe(): number {
    const nonce = PROBE_NONCE + this.#nextProbe;
    this.#nextProbe = (this.#nextProbe + 1) % PROBE_NONCE;
    return nonce;
  }

  #transportUsable(): boolean {
    return this.state !== 'closed' || this.#closing;
  }

  #closing = false;

  // ===================== errors and shutdown =====================

  #fail(err: unknown): void {
    if (this.state === 'closed') return;
    const error = err instanceof MeshlinkError ? err : new MeshlinkError('ML_ERR_INTERNAL', 'internal error', { cause: err });
    const code = isProtocolError(error) && error.closeCode !== null ? error.closeCode : 1011;
    // Tell the peer why before closing (best effort). Pushed past the overflow check on purpose: this
    // may be the overflow itself, and #shutdown flushes the queue next.
    this.#scheduler.pushPriority(encodeMessage('error', 0, { code: error.code, message: error.message.slice(0, 1024) }));
    this.#shutdown({ code, reason: error.code, local: true, error });
  }

  #shutdown(info: CloseInfo, closeTransport = true): void {
    if (this.state === 'closed') return;
    if (!info.error && this.#peerError) info.error = this.#peerError;
    this.state = 'closed';
    this.#closeInfo = info;
    this.#timers.clearTimeout(this.#handshakeTimer);
    const reason = info.error ?? new MeshlinkError('ML_ERR_SESSION_CLOSED', `session closed (${info.code}${info.reason ? ` ${info.reason}` : ''})`);
    this.#handshakeWaiter?.reject(reason);
    this.#handshakeWaiter = null;
    for (const p of this.#pending.values()) {
      this.#timers.clearTimeout(p.timer);
      p.reject(reason);
    }
    this.#pending.clear();
    for (const p of this.#pings.values()) {
      this.#timers.clearTimeout(p.timer);
      p.reject(reason);
    }
    this.#pings.clear();
    this.#probes.clear();
    if (this.#staleTimer !== null) this.#timers.clearTimeout(this.#staleTimer);
    this.#staleTimer = null;
    for (const stream of [...this.#streams.values()]) stream._abort(reason);
    this.#streams.clear();
    if (closeTransport) {
      // Flush what is queued at priority (goaway, error) and then close.
      this.#closing = true;
      this.#flush();
      this.#closing = false;
      this.#transport.close(info.code, info.reason.slice(0, 120));
    }
    this.emit('close', info);
  }

  #errorForRemoteClose(code: number, reason: string): MeshlinkError | undefined {
    if (this.#peerError) return this.#peerError;
    if (code === 1000 || code === 1001) return undefined;
    return new MeshlinkError('ML_ERR_SESSION_CLOSED', `connection closed with ${code}${reason ? ` (${reason})` : ''}`);
  }

  #assertOpen(): void {
    if (this.state !== 'open') {
      throw new MeshlinkError('ML_ERR_SESSION_CLOSED', this.state === 'closed' ? 'session is closed' : 'handshake not complete');
    }
  }

  #checkOutgoing(name: KindName, scope: 'control' | 'stream'): MessageKind {
    const kind = kindByName(name);
    if (!kind) throw new TypeError(`unknown message kind ${name}`);
    if (!maySend(kind, this.role)) throw new TypeError(`the ${this.role} may not send ${name}`);
    if (kind.scope !== scope && kind.scope !== 'any') throw new TypeError(`${name} is a ${kind.scope} kind`);
    return kind;
  }

  #allocRid(): number {
    for (;;) {
      const rid = this.#nextRid;
      this.#nextRid = (this.#nextRid % 0xffff_fffe) + 1;
      if (!this.#pending.has(rid)) return rid;
    }
  }
}

/** Nonces from here on (bit 31 set) are the session's own pings: pipe markers and RTT probes. */
const PROBE_NONCE = 0x8000_0000;
/**
 * Default floor of the pipe limit: 128 KiB, on. Measured 2026-12-04 (BENCHMARKS.md, bench:wan) on an
 * emulated 40 ms / 100 Mbit/s link: a 64 B round trip behind a bulk stream cost 39.5 ms more than
 * idle with it and 110.6 ms without (node:http2: 185.8 ms), at 88.9 against 91.4 Mbit/s of bulk. On
 * loopback, where the receiver's CPU is the bound and the limit grows to about 1 MB, it changes the
 * loaded round trip little and costs up to a tenth of bulk throughput. Agents talk over networks.
 */
const DEFAULT_PIPE_FLOOR = 128 * 1024;
/** The pipe limit never exceeds this, whatever the estimate (the windows bound the data anyway). */
const PIPE_CEILING = 64 * 1024 * 1024;
/** Delivery-rate samples kept for the maximum. */
const RATE_SAMPLES = 8;
/** A marker unanswered this long no longer holds data back. */
const MARKER_STALE_MS = 5_000;
/** RTT probes for the receive-window rule: at most one this often. */
const PROBE_INTERVAL_MS = 1_000;
/** Markers are at most this far apart, whatever the limit, so that samples keep coming. */
const MARKER_MAX_SPACING = 256 * 1024;
/** A ping sent with at most this many unconfirmed bytes ahead of it measures an empty pipe. */
const CLEAN_SLACK = 16 * 1024;
/** Clean round trips kept for the median. */
const RTT_SAMPLES = 5;
/** While the pipe limit holds data back, the pipe is drained for a clean RTT sample at most this often… */
const DRAIN_INTERVAL_MS = 250;
/** …and at most once every this many round trips (the drain's cost is about one). */
const DRAIN_INTERVAL_RTTS = 50;

/** The kinds that may carry END_STREAM, for the error that names them (PROTOCOL.md §2.1). */
const END_STREAM_KINDS = (MESSAGE_KINDS as readonly MessageKind[]).filter((k) => k.endStream).map((k) => k.name).join(' and ');
