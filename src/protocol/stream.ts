import { MeshlinkError } from '../errors.js';
import { Duplex } from 'node:stream';
import { dataPrefixSize, encodeMessage, encodeMessageSized, encodeWindowFrame } from './codec.js';
import type { InputOf, KindName, OpeningKindName, PayloadOf, StreamMessage } from './registry.js';

/**
 * One multiplexed stream: a Node Duplex whose writes become stream.data frames and whose readable
 * side yields the peer's stream.data bytes.
 *
 * Flow control (docs/PROTOCOL.md §6): each direction has a credit window. The sender may send at most
 * `credit` bytes of stream.data; the receiver grants more with stream.window once the application has
 * consumed data. Receive memory per stream is therefore bounded by the window, and a sender whose
 * peer stops reading stops too: `write()` returns false and 'drain' comes once credit returns.
 */

/** The window every stream starts with in each direction (protocol constant, 256 KiB). */
export const INITIAL_WINDOW = 256 * 1024;

/**
 * The writable side's high-water mark: write() returns false once this much is written and not yet
 * taken into a message. One window's worth: with 64 KiB, a stream writing small chunks had little
 * queued each time its turn came, so 100 such streams filled each message with several small frames,
 * each one a push and a copy at the receiver (1 KiB writes over 100 streams: 1.7 instead of 3.1 frames
 * per message and 5–12 % more throughput, BENCHMARKS.md).
 */
export const WRITE_HIGH_WATER = 256 * 1024;

/** What the session provides to its streams (the stream never touches the transport). */
export interface StreamHost {
  /** The stream has frames ready to send (data with credit, or ordered messages). */
  markReady(stream: MuxStream): void;
  /** Sends a frame ahead of queued data (stream.reset, accept, reject). */
  sendPriority(frame: Uint8Array): void;
  /** Sends a stream.window ahead of queued data, by the end of the event loop's turn. */
  sendWindowUpdate(frame: Uint8Array): void;
  /** The stream is finished in both directions or reset; forget it. */
  release(stream: MuxStream): void;
  readonly maxDataFrame: number;
  /** The window each stream grants its peer at open (≥ INITIAL_WINDOW). */
  readonly receiveWindow: number;
  /** The largest window auto-tuning may grow a stream's receive window to. */
  readonly maxReceiveWindow: number;
  /** Reserves `bytes` of window growth from the session's budget; false when exhausted. */
  reserveWindow(bytes: number): boolean;
  releaseWindow(bytes: number): void;
  /** The stream has data to send and no credit left: it waits for the peer's stream.window. */
  noteStall(): void;
  now(): number;
  /** A clock in fractional ms (round trips on loopback are a fraction of one). */
  preciseNow(): number;
  /** The session's round-trip estimate in ms, or null before it has one. */
  readonly rttMs: number | null;
  /** Asks the session for a fresh round-trip sample (it sends a probe ping, at most one a second). */
  probeRtt(): void;
  /** Runs `fn` once the event loop's current turn has run its callbacks. */
  defer(fn: () => void): void;
  /**
   * True when typed stream messages consume window credit like stream.data (protocol version 2,
   * PROTOCOL.md §6.5); in version 1 they do not, and held ones are capped in bytes instead.
   */
  readonly messagesUseCredit: boolean;
}

/**
 * Version 1 only: bytes of typed messages a stream holds for its application (not yet delivered)
 * before it is reset with ML_ERR_QUEUE_OVERFLOW. In version 2 the window bounds them.
 */
export const MAX_HELD_MESSAGE_BYTES = 1024 * 1024;

/** Largest payload of one typed stream message a sender may queue: it must fit the initial window. */
export const MAX_STREAM_MESSAGE_BYTES = 64 * 1024;

/**
 * Receive-window auto-tuning grows a window only where it limits throughput: when the application
 * consumed a whole window within WINDOW_GROWTH_RTTS round trips (the session's estimate) and has
 * nothing left buffered, the sender was waiting for credit, so the window doubles (up to
 * maxReceiveWindow, within the session budget). A window consumed more slowly is not the
 * bottleneck, and growing it would only lengthen the queue in the socket buffers ahead of every
 * other frame: the old rule (consumed within a fixed 20 ms) grew every loopback window to 4 MiB,
 * and an interactive frame then waited 15–30 ms behind it (BENCHMARKS.md, issue 12). Slow readers
 * never trigger growth. Without an RTT estimate yet there is no growth (the session probes).
 */
export const WINDOW_GROWTH_RTTS = 2;

/** The auto-tuning rule: true when a window consumed in `elapsedMs` limits throughput at `rttMs`. */
export function windowLimitsThroughput(elapsedMs: number, rttMs: number | null): boolean {
  return rttMs !== null && elapsedMs < WINDOW_GROWTH_RTTS * rttMs;
}

/** One unit of outgoing work, in stream order. */
type Outgoing =
  /** Consecutive writes (one _write, or a whole _writev batch): `bufs[index]` from `offset` is next. */
  | { type: 'data'; bufs: Uint8Array[]; index: number; offset: number; cb: ((err?: Error | null) => void) | null }
  | { type: 'frame'; bytes: Uint8Array; end: boolean; cb?: () => void; credit: number };

/**
 * A frame handed to the scheduler: either encoded `bytes`, or stream `data` whose frame header the
 * scheduler writes straight into the outgoing message; `size` is the frame's size on the wire.
 */
export interface OutgoingFrame {
  readonly bytes: Uint8Array | null;
  /** The data of one stream.data frame, gathered from one or more writes. */
  readonly data: Uint8Array[] | null;
  readonly dataLength: number;
  readonly stream: number;
  readonly size: number;
  readonly sent: (() => void) | null;
}

export class StreamResetError extends MeshlinkError {
  /** The code the peer (or local code) gave for the reset, e.g. ML_ERR_CANCELLED. */
  readonly resetCode: string;
  constructor(resetCode: string, message: string, readonly remote: boolean) {
    super('ML_ERR_STREAM_RESET', `stream reset${remote ? ' by peer' : ''} (${resetCode}): ${message}`);
    this.resetCode = resetCode;
  }
}

export type StreamState = 'opening' | 'open' | 'closed';

/**
 * The typed 'message' event, declared over the Duplex's untyped one: a StreamMessage is discriminated
 * by `name`, so a listener that tests it reads the payload without a cast.
 */
/* eslint-disable @typescript-eslint/no-unsafe-declaration-merging, @typescript-eslint/no-explicit-any -- the typed 'message' overloads merge into the class; the catch-all overloads repeat Duplex's own */
export interface MuxStream {
  on(event: 'message', listener: (msg: StreamMessage) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
  once(event: 'message', listener: (msg: StreamMessage) => void): this;
  once(event: string | symbol, listener: (...args: any[]) => void): this;
  addListener(event: 'message', listener: (msg: StreamMessage) => void): this;
  addListener(event: string | symbol, listener: (...args: any[]) => void): this;
  prependListener(event: 'message', listener: (msg: StreamMessage) => void): this;
  prependListener(event: string | symbol, listener: (...args: any[]) => void): this;
}

export class MuxStream extends Duplex {
  /* eslint-enable @typescript-eslint/no-unsafe-declaration-merging, @typescript-eslint/no-explicit-any */
  readonly id: number;
  /** The registry kind named in stream.open, e.g. 'exec.open'. */
  readonly kind: string;
  /** stream.open's metadata, validated against `kind`'s schema. */
  readonly meta: unknown;
  /** True when this side opened the stream. */
  readonly local: boolean;
  state: StreamState;

  readonly #host: StreamHost;
  #queue: Outgoing[] = [];
  #sendCredit = 0;
  /** Data waits for credit; counted once per wait (a flow-control stall), cleared by new credit. */
  #stalled = false;
  /** Bytes the peer may still send before it must wait for a stream.window. */
  #receiveAllowance: number;
  #received = 0;
  /** Bytes of received data already returned to the peer as credit, plus the window. */
  #credited: number;
  /** Current receive window (grows by auto-tuning). */
  #window: number;
  /** Window growth reserved from the session budget, returned on release. */
  #grown = 0;
  /** Auto-tuning epoch: when it started and how much had been consumed then. */
  #epochAt = 0;
  #epochConsumed = 0;
  #endQueued = false;
  #endSent = false;
  #remoteEnded = false;
  #released = false;
  /** Bytes written into the ordered queue that are not yet sent (for diagnostics and bounds). */
  #queuedBytes = 0;
  /** Bytes the application passed to write(), and bytes that have reached #queue (ordering of messages). */
  #writtenBytes = 0;
  #handedBytes = 0;
  /** Outgoing typed messages waiting for earlier writes to reach #queue. */
  #deferred: Array<{ mark: number; bytes: Uint8Array; credit: number }> = [];
  /** Incoming typed messages waiting for earlier data to be consumed. */
  #inbound: Array<{ mark: number; msg: HeldMessage }> = [];
  /** Bytes of received typed messages handed to the application (they count as consumed credit). */
  #messagesDelivered = 0;
  /** Bytes of received typed messages not yet handed to the application (#inbound and #early). */
  #heldMessageBytes = 0;
  /** Set by pause(), cleared by resume(): a paused stream delivers neither data nor messages. */
  #messagesPaused = false;

  constructor(host: StreamHost, init: { id: number; kind: string; meta: unknown; local: boolean }) {
    super({
      allowHalfOpen: true,
      // The readable buffer never exceeds the window: the peer cannot send more than we granted.
      readableHighWaterMark: host.receiveWindow,
      writableHighWaterMark: WRITE_HIGH_WATER,
    });
    this.#host = host;
    this.id = init.id;
    this.kind = init.kind;
    this.meta = init.meta;
    this.local = init.local;
    this.state = 'opening';
    // A stream error (peer reset, session loss) must never crash a long-running process just because
    // the application has not attached its own 'error' listener yet: it can still observe the error
    // through its listeners, `errored`, 'close', and failing reads and writes.
    this.on('error', () => {});
    // Typed messages that arrive before the application listens are held, not lost: the opener can
    // only attach its listener once openStream has resolved, and the peer may send a message in the
    // same WebSocket message as its stream.accept (e.g. action.ack). Delivered in order on the first listener.
    this.on('newListener', (event: string | symbol) => {
      if (event === 'message' && this.#early.length > 0) queueMicrotask(() => this.#flushEarly());
    });
    // Messages that followed the last data are due before 'end', whatever way the data was read. A
    // listener that throws here must not keep 'end' from the application's own listeners: its
    // exception is rethrown on its own, as an uncaught exception.
    this.prependListener('end', () => {
      try {
        // 'end' can come while the application has paused the stream: what preceded the end is due
        // now all the same, or it would arrive after it.
        this.#messagesPaused = false;
        this.#deliverMessages();
        this.#flushEarly();
      } catch (err) {
        throwUncaught(err);
      }
    });
    this.#receiveAllowance = INITIAL_WINDOW;
    this.#credited = INITIAL_WINDOW;
    this.#window = host.receiveWindow;
  }

  /** See the constructor: messages received before any 'message' listener, or while paused (bounded). */
  #early: HeldMessage[] = [];

  /**
   * Delivers held messages one at a time, while someone listens: a once() listener takes one and
   * leaves the rest held, and a message arriving meanwhile (a listener that reads) queues behind
   * them. A listener that throws leaves the rest for another try, not stranded.
   */
  #flushEarly(): void {
    try {
      while (this.#canDeliver()) this.#deliver(this.#early.shift()!);
    } finally {
      if (this.#canDeliver()) queueMicrotask(() => this.#flushEarly());
    }
  }

  #canDeliver(): boolean {
    return this.#early.length > 0 && !this.#messagesPaused && this.listenerCount('message') > 0 && !this.destroyed;
  }

  /** Hands one message to the application; its bytes now count as consumed (credit may go back). */
  #deliver(held: HeldMessage): void {
    this.#heldMessageBytes -= held.size;
    this.#messagesDelivered += held.size;
    this.emit('message', held.msg);
    if (this.#host.messagesUseCredit) this.#returnCredit();
  }

  /**
   * pause() holds typed messages too, not only data: a consumer that pauses the stream (pipe() into
   * a full destination, a relay whose socket is backed up) must not keep receiving messages it
   * cannot pass on, and the credit they would return would let the peer send on without limit.
   */
  override pause(): this {
    this.#messagesPaused = true;
    return super.pause();
  }

  override resume(): this {
    this.#messagesPaused = false;
    // Held messages preceded all data still buffered: they go out now, before resume() lets that
    // data flow (on the next tick), so that order is kept.
    this.#flushEarly();
    return super.resume();
  }

  /**
   * Delivers a typed message, or holds it while nobody listens (and while earlier held messages wait
   * for their delivery, so that order is kept). A method rather than an emit() override: every
   * 'data' event would pay for the override.
   */
  #emitMessage(held: HeldMessage): void {
    if (this.#early.length === 0 && !this.#messagesPaused && this.listenerCount('message') > 0) {
      this.#deliver(held);
      return;
    }
    // Bounded like every buffer: an application that never listens gets the stream reset, not
    // silent loss or growth.
    if (this.#early.length >= 1024) {
      this.destroy(new MeshlinkError('ML_ERR_QUEUE_OVERFLOW', `stream ${this.id}: 1024 messages arrived with no listener`));
      return;
    }
    this.#early.push(held);
  }

  /**
   * stream.open's metadata as the payload of conversation kind `name`, which must be this stream's
   * kind: the typed form of `meta` for a handler registered for that kind. Throws a TypeError (a
   * local bug) when the stream is of another kind.
   */
  metaOf<N extends OpeningKindName>(name: N): PayloadOf<N> {
    if (this.kind !== name) throw new TypeError(`stream ${this.id} is a ${this.kind} stream, not ${name}`);
    // `meta` passed the schema of this.kind when the stream was opened, and this.kind is `name`.
    return this.meta as PayloadOf<N>;
  }

  /** Bytes the peer still lets us send. */
  get sendCredit(): number {
    return this.#sendCredit;
  }

  /** The current receive window (INITIAL_WINDOW or more after auto-tuning). */
  get receiveWindowSize(): number {
    return this.#window;
  }

  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  /** Data bytes the application wrote to this stream so far (an operation's figures). */
  get bytesWritten(): number {
    return this.#writtenBytes;
  }

  /** Data bytes received from the peer so far. */
  get bytesReceived(): number {
    return this.#received;
  }

  /**
   * Sends a typed message on this stream, in order with its data (e.g. exec.exit after stdout).
   * Messages do not consume window credit; keep them small.
   */
  sendMessage<N extends KindName>(name: N, payload: InputOf<N>): void {
    if (this.#endQueued || this.state === 'closed') {
      throw new MeshlinkError('ML_ERR_STREAM_CLOSED', `stream ${this.id} is closed for writing`);
    }
    const { frame: bytes, payloadBytes } = encodeMessageSized(name, this.id, payload);
    // A message larger than the initial window could never be sent once credit counts it.
    if (payloadBytes > MAX_STREAM_MESSAGE_BYTES) throw new RangeError(`${name}: a stream message carries at most ${MAX_STREAM_MESSAGE_BYTES} bytes`);
    // Credit is fixed when the message is sent: the stream opened (and its version is known) by then.
    const credit = payloadBytes;
    if (this.#handedBytes >= this.#writtenBytes) {
      this.#queueFrame(bytes, credit);
      if (this.state === 'open') this.#host.markReady(this);
    } else {
      // Bytes written before this message still sit in the Writable's buffer: the message waits
      // until they have reached the stream's queue, so it cannot overtake them (PROTOCOL.md §6.3).
      this.#deferred.push({ mark: this.#writtenBytes, bytes, credit });
    }
  }

  /** Counts written bytes, so that typed messages keep their place behind earlier writes. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- Writable.write's own signature, all overloads in one
  override write(chunk: any, encoding?: any, cb?: any): boolean {
    if (typeof chunk === 'string') this.#writtenBytes += Buffer.byteLength(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
    else if (chunk && typeof (chunk as Uint8Array).byteLength === 'number') this.#writtenBytes += (chunk as Uint8Array).byteLength;
    return super.write(chunk, encoding, cb);
  }

  #queueFrame(bytes: Uint8Array, credit: number): void {
    this.#queue.push({ type: 'frame', bytes, end: false, credit });
    this.#queuedBytes += bytes.byteLength;
  }

  /** Queues the deferred messages whose preceding bytes have all been handed over. */
  #releaseDeferred(all = false): void {
    while (this.#deferred.length > 0 && (all || this.#deferred[0]!.mark <= this.#handedBytes)) {
      const next = this.#deferred.shift()!;
      this.#queueFrame(next.bytes, next.credit);
    }
  }

  /**
   * A typed message from the peer. It is delivered once the data the peer sent before it has been
   * consumed, so that, say, exec.exit never arrives ahead of the command's last output.
   */
  _receiveMessage(received: { name: string; payload: unknown }, size = 0): void {
    if (this.#remoteEnded) {
      throw new MeshlinkError('ML_ERR_STREAM_ID', `stream ${this.id}: ${received.name} after END_STREAM`);
    }
    if (this.#host.messagesUseCredit) {
      // Version 2: a typed message is stream bytes like any other (PROTOCOL.md §6.5).
      if (size > this.#receiveAllowance) {
        throw new MeshlinkError('ML_ERR_FLOW_CONTROL', `stream ${this.id}: ${received.name} of ${size} bytes sent with ${this.#receiveAllowance} credit`);
      }
      this.#receiveAllowance -= size;
    } else if (this.#heldMessageBytes + size > MAX_HELD_MESSAGE_BYTES) {
      this.destroy(new MeshlinkError('ML_ERR_QUEUE_OVERFLOW', `stream ${this.id}: more than ${MAX_HELD_MESSAGE_BYTES} bytes of messages waiting for the application`));
      return;
    }
    if (this.destroyed) return;
    // The session passes a decoded message whose payload passed the schema of its kind `name`.
    const held: HeldMessage = { msg: received as StreamMessage, size };
    this.#heldMessageBytes += size;
    if (this.#inbound.length === 0 && this.readableLength === 0) {
      this.#emitMessage(held);
      return;
    }
    if (this.#inbound.length >= 1024) {
      this.destroy(new MeshlinkError('ML_ERR_QUEUE_OVERFLOW', `stream ${this.id}: 1024 messages waiting behind unread data`));
      return;
    }
    this.#inbound.push({ mark: this.#received, msg: held });
  }

  #deliverMessages(): void {
    if (this.#inbound.length === 0) return;
    const consumed = this.#received - this.readableLength;
    while (this.#inbound.length > 0 && this.#inbound[0]!.mark <= consumed) this.#emitMessage(this.#inbound.shift()!.msg);
  }

  // ---------- called by the session ----------

  /** The stream became open (accepted by either side): start with the initial send window. */
  _opened(): void {
    if (this.state !== 'opening') return;
    this.state = 'open';
    this.#sendCredit = INITIAL_WINDOW;
    // A receiver configured for a larger window grants the difference at once.
    const extra = this.#host.receiveWindow - INITIAL_WINDOW;
    if (extra > 0) this.#grant(extra);
    this.#epochAt = this.#host.preciseNow();
    if (this.#queue.length > 0) this.#host.markReady(this);
  }

  _addCredit(credit: number): void {
    this.#sendCredit += credit;
    this.#stalled = false;
    if (this.#sendCredit > 0x7fff_ffff) {
      throw new MeshlinkError('ML_ERR_FLOW_CONTROL', `stream ${this.id}: window grew past 2^31-1`);
    }
    if (this.#queue.length > 0) this.#host.markReady(this);
  }

  /** Incoming stream.data. Throws ML_ERR_FLOW_CONTROL when the peer exceeded its credit. */
  _receiveData(data: Uint8Array, end: boolean): void {
    if (this.#remoteEnded) {
      throw new MeshlinkError('ML_ERR_STREAM_ID', `stream ${this.id}: data after END_STREAM`);
    }
    if (data.byteLength > this.#receiveAllowance) {
      throw new MeshlinkError('ML_ERR_FLOW_CONTROL', `stream ${this.id}: ${data.byteLength} bytes sent with ${this.#receiveAllowance} credit`);
    }
    this.#receiveAllowance -= data.byteLength;
    this.#received += data.byteLength;
    if (data.byteLength > 0 && !this.destroyed) {
      // Zero-copy when the data is most of the buffer it lives in; otherwise copy, so that a small
      // chunk, retained by the application or waiting in a slow consumer's queue, cannot pin a large
      // coalesced message: a peer could otherwise make each of its bytes cost a whole message.
      const view = data.byteLength * 2 >= data.buffer.byteLength;
      this.push(view ? Buffer.from(data.buffer, data.byteOffset, data.byteLength) : copyOf(data));
    }
    if (end) this._receiveEnd();
  }

  _receiveEnd(): void {
    if (this.#remoteEnded) return;
    this.#remoteEnded = true;
    this.push(null);
    this.#maybeRelease();
  }

  _receiveReset(code: string, message: string): void {
    this.#released = true; // the peer has already forgotten the stream: send no reset back
    this.state = 'closed';
    this.destroy(new StreamResetError(code, message, true));
  }

  /** The session is gone: fail everything. */
  _abort(err: Error): void {
    this.#released = true;
    this.state = 'closed';
    this.destroy(err);
  }

  /** True if the scheduler can take a frame now. */
  _hasWork(): boolean {
    if (this.state !== 'open') return false;
    const head = this.#queue[0];
    if (!head) return false;
    if (head.type === 'frame') {
      if (head.credit === 0 || !this.#host.messagesUseCredit || head.credit <= this.#sendCredit) return true;
      this.#noteStall();
      return false;
    }
    return this.#sendCredit > 0;
  }

  /** Takes the next frame to send (at most `maxData` data bytes), or null. */
  _takeFrame(maxData: number): OutgoingFrame | null {
    const head = this.#queue[0];
    if (!head || this.state !== 'open') return null;
    if (head.type === 'frame') {
      if (head.credit > 0 && this.#host.messagesUseCredit) {
        if (head.credit > this.#sendCredit) return null;
        this.#sendCredit -= head.credit;
      }
      this.#queue.shift();
      this.#queuedBytes -= head.bytes.byteLength;
      if (head.end) {
        this.#endSent = true;
        const finalCb = head.cb;
        return {
          bytes: head.bytes,
          data: null,
          dataLength: 0,
          stream: this.id,
          size: head.bytes.byteLength,
          sent: () => {
            finalCb?.();
            this.#maybeRelease();
          },
        };
      }
      return { bytes: head.bytes, data: null, dataLength: 0, stream: this.id, size: head.bytes.byteLength, sent: null };
    }
    // One data frame gathers consecutive queued writes (up to the frame limit and the credit), so
    // that many small writes cost one frame header, one receive-side push and one copy, not one each.
    const limit = Math.min(this.#sendCredit, maxData, this.#host.maxDataFrame);
    if (limit <= 0) return null;
    const parts: Uint8Array[] = [];
    let callbacks: Array<(err?: Error | null) => void> | null = null;
    let n = 0;
    while (n < limit) {
      const item = this.#queue[0];
      if (!item || item.type !== 'data') break;
      const buf = item.bufs[item.index]!;
      const take = Math.min(buf.byteLength - item.offset, limit - n);
      parts.push(item.offset === 0 && take === buf.byteLength ? buf : buf.subarray(item.offset, item.offset + take));
      item.offset += take;
      n += take;
      if (item.offset === buf.byteLength) {
        item.offset = 0;
        if (++item.index === item.bufs.length) {
          this.#queue.shift();
          if (item.cb) (callbacks ??= []).push(item.cb);
        }
      }
    }
    this.#sendCredit -= n;
    this.#queuedBytes -= n;
    if (this.#sendCredit === 0 && this.#queue[0]?.type === 'data') this.#noteStall();
    const done = callbacks;
    const sent = done === null ? null : done.length === 1 ? (done[0] as () => void) : () => {
      for (const cb of done) cb();
    };
    return { bytes: null, data: parts, dataLength: n, stream: this.id, size: dataPrefixSize(n) + n, sent };
  }

  #noteStall(): void {
    if (this.#stalled) return;
    this.#stalled = true;
    this.#host.noteStall();
  }

  // ---------- Duplex implementation ----------

  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#enqueueData([chunk], cb);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    this.#enqueueData(chunks.map((c) => c.chunk), cb);
  }

  #enqueueData(chunks: Uint8Array[], cb: (err?: Error | null) => void): void {
    if (this.state === 'closed') {
      cb(new MeshlinkError('ML_ERR_STREAM_CLOSED', `stream ${this.id} is closed`));
      return;
    }
    let last: Extract<Outgoing, { type: 'data' }> | null = null;
    if (this.#deferred.length === 0) {
      // The usual case: the whole batch is one queue entry (a _writev hands over dozens of small
      // writes at once; an entry per write made the queue the sender's largest cost at 1 KiB).
      let bytes = 0;
      const bufs: Uint8Array[] = [];
      for (const buf of chunks) {
        if (buf.byteLength === 0) continue;
        bufs.push(buf);
        bytes += buf.byteLength;
      }
      if (bufs.length > 0) {
        last = { type: 'data', bufs, index: 0, offset: 0, cb: null };
        this.#queue.push(last);
        this.#queuedBytes += bytes;
        this.#handedBytes += bytes;
      }
    } else {
      // Typed messages wait behind earlier writes: an entry per write, so that each message is
      // queued exactly after the write that reaches its mark.
      for (const buf of chunks) {
        if (buf.byteLength === 0) continue;
        last = { type: 'data', bufs: [buf], index: 0, offset: 0, cb: null };
        this.#queue.push(last);
        this.#queuedBytes += buf.byteLength;
        this.#handedBytes += buf.byteLength;
        this.#releaseDeferred();
      }
    }
    if (!last) {
      cb();
      return;
    }
    // The write completes when its last byte has been handed to the transport: this is what bounds
    // the memory a writer can pin (Writable's high-water mark plus one write).
    last.cb = cb;
    if (this.state !== 'open') return;
    if (this.#sendCredit <= 0) this.#noteStall();
    this.#host.markReady(this); // typed messages queued ahead of the data need no credit
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (this.state === 'closed') {
      cb();
      return;
    }
    this.#endQueued = true;
    this.#releaseDeferred(true);
    const bytes = encodeMessage('stream.close', this.id, {}, { endStream: true });
    // 'finish' (and with it autoDestroy) waits until END_STREAM is actually on its way.
    this.#queue.push({ type: 'frame', bytes, end: true, cb: () => cb(), credit: 0 });
    this.#queuedBytes += bytes.byteLength;
    if (this.state === 'open') this.#host.markReady(this);
  }

  override _read(): void {
    // Called inside read() before its chunk leaves the buffer: delivers only messages sent ahead of it.
    this.#returnCredit();
    this.#deliverMessages();
  }

  /**
   * Every path by which the application consumes buffered data goes through read() (flowing mode,
   * async iteration, explicit reads), so this is where consumed bytes are returned as credit, and
   * where typed messages that followed the consumed data become due. read() has already emitted
   * 'data' for its chunk, so a 'data' listener has seen it; a caller that takes the returned chunk
   * (paused mode, async iteration) has not yet, so messages that followed it wait until the end of
   * the turn, or the next read(), or 'end', whichever comes first.
   */
  override read(size?: number): unknown {
    const out = super.read(size);
    this.#returnCredit();
    if (this.#inbound.length > 0) {
      if (out === null || this.listenerCount('data') > 0) this.#deliverMessages();
      else this.#deliverAfterThisTurn();
    }
    return out;
  }

  #deliveryDeferred = false;

  #deliverAfterThisTurn(): void {
    if (this.#deliveryDeferred) return;
    this.#deliveryDeferred = true;
    this.#host.defer(() => {
      this.#deliveryDeferred = false;
      if (!this.destroyed) this.#deliverMessages();
    });
  }

  #returnCredit(): void {
    if (this.#remoteEnded || this.state !== 'open') return;
    // Consumed: data the application has read, and (version 2) typed messages handed to it.
    const consumed = this.#received - this.readableLength + this.#messagesDelivered;
    let outstanding = consumed + this.#window - this.#credited;
    // Batch updates: one stream.window per half window consumed, not one per read (as yamux and
    // nghttp2 do). Each update is a WebSocket message of its own both ways; at a quarter window, 100
    // busy streams cost the receiver 15 messages per MiB received.
    if (outstanding < this.#window / 2) return;
    if (consumed - this.#epochConsumed >= this.#window) {
      const now = this.#host.preciseNow();
      const fast = windowLimitsThroughput(now - this.#epochAt, this.#host.rttMs) && this.readableLength === 0;
      // Keeps the estimate current while the stream is busy (the session sends at most one a second).
      this.#host.probeRtt();
      if (fast && this.#window < this.#host.maxReceiveWindow) {
        const growth = Math.min(this.#window, this.#host.maxReceiveWindow - this.#window);
        if (this.#host.reserveWindow(growth)) {
          this.#window += growth;
          this.#grown += growth;
          outstanding += growth;
        }
      }
      this.#epochAt = now;
      this.#epochConsumed = consumed;
    }
    this.#grant(outstanding);
  }

  #grant(credit: number): void {
    this.#credited += credit;
    this.#receiveAllowance += credit;
    this.#host.sendWindowUpdate(encodeWindowFrame(this.id, credit));
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const pending = this.#queue;
    this.#queue = [];
    this.#queuedBytes = 0;
    // The session's bookkeeping first: a write callback below may throw.
    if (!this.#released) {
      this.#released = true;
      const fullyClosed = this.#endSent && this.#remoteEnded;
      const code = err instanceof MeshlinkError ? err.code : 'ML_ERR_CANCELLED';
      const message = err ? err.message.slice(0, 512) : 'stream destroyed';
      if (!fullyClosed && this.state !== 'opening') {
        this.#host.sendPriority(encodeMessage('stream.reset', this.id, { code, message }));
      } else if (this.state === 'opening' && !this.local) {
        // Destroyed before the application answered the open: the peer still waits for one.
        this.#host.sendPriority(encodeMessage('stream.reject', this.id, { code, message }));
      }
      this.state = 'closed';
      this.#host.release(this);
    }
    this.state = 'closed';
    this.#returnGrowth();
    // Typed messages not yet delivered never will be: nothing is emitted after 'close'.
    this.#inbound = [];
    this.#early = [];
    this.#heldMessageBytes = 0;
    // Then every pending write learns its fate. The callbacks are the application's: one that throws
    // must not cut the others off, and its exception is not swallowed either: it is rethrown on its
    // own, an uncaught exception as it would be from any Node stream's write callback.
    const closed = err ?? new MeshlinkError('ML_ERR_STREAM_CLOSED', `stream ${this.id} destroyed`);
    for (const item of pending) {
      try {
        if (item.type === 'data' && item.cb) item.cb(closed);
        if (item.type === 'frame' && item.cb) item.cb();
      } catch (thrown) {
        throwUncaught(thrown);
      }
    }
    cb(err);
  }

  #maybeRelease(): void {
    if (this.#endSent && this.#remoteEnded && !this.#released) {
      this.#released = true;
      this.state = 'closed';
      this.#host.release(this);
    }
    this.#returnGrowth();
  }

  #returnGrowth(): void {
    if (this.state === 'closed' && this.#grown > 0) {
      this.#host.releaseWindow(this.#grown);
      this.#grown = 0;
    }
  }
}

/** A received typed message with its payload size (after inflation), until it is delivered. */
interface HeldMessage {
  readonly msg: StreamMessage;
  readonly size: number;
}

/** A copy in a new Buffer: allocUnsafe + set, the plain copy (Buffer.from takes the array-like path). */
function copyOf(data: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(data.byteLength);
  out.set(data);
  return out;
}

/**
 * An exception from the application's own callback or listener, caught so that the stream's
 * bookkeeping can finish, is rethrown on its own: uncaught, as from any Node stream's callback.
 */
function throwUncaught(err: unknown): void {
  queueMicrotask(() => {
    throw err;
  });
}
