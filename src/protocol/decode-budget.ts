import { MeshlinkError } from '../errors.js';

/**
 * What a peer may make this side decode (docs/PROTOCOL.md §3.4). Decode work is the payload length,
 * after inflation, of every frame the generic codec decodes: everything except uncompressed
 * stream.data and the fast-path stream.window, whose cost is a view and whose volume flow control
 * bounds. Without a budget, a 720 KB message of 200 compressed frames, each inflating to a valid
 * 0.9 MiB logs.batch, held the server's event loop for 3 s; the cost grows with the message.
 *
 * - Per WebSocket message: at most `perMessage` bytes of decode work.
 * - Per session: a bucket of `burst` bytes refilled at `perSecond`.
 * Either exceeded is ML_ERR_DECODE_BUDGET (close 4024). The receiver also yields to the event loop
 * after every `yieldAfter` bytes of decode work (session.ts), so other connections are served
 * while one large message is worked through.
 */
export interface DecodeBudgetOptions {
  perMessage: number;
  perSecond: number;
  burst: number;
}

/**
 * The server's budget. The rate is far above what one node legitimately makes it decode, but it must
 * not bite a legitimate stream: typed stream messages (exec.stderr, action.output) count as decode
 * work and, flow-controlled, run at line speed (a 16 MiB/s rate closed an `exec` writing 150 MiB of
 * stderr on loopback: test/ops/slow-operator.e2e.test.ts). What protects the event loop is the
 * per-message cap and the yielding; the rate bounds one node's share of the CPU over time.
 */
export const DEFAULT_DECODE_BUDGET: DecodeBudgetOptions = Object.freeze({
  perMessage: 8 * 1024 * 1024,
  perSecond: 256 * 1024 * 1024,
  burst: 512 * 1024 * 1024,
});

/**
 * The agent's budget: the per-message limit and the yielding, but no rate. The rate protects a
 * server from any one of its nodes; an agent's only peer is its pinned server, whose legitimate
 * bursts (an event replay after a long disconnect) must not cost it its connection.
 */
export const AGENT_DECODE_BUDGET: DecodeBudgetOptions = Object.freeze({
  perMessage: 8 * 1024 * 1024,
  perSecond: Number.POSITIVE_INFINITY,
  burst: Number.POSITIVE_INFINITY,
});

/** Decode work after which the receiver lets the event loop run before the next frame. */
export const DECODE_YIELD_BYTES = 1024 * 1024;

export class DecodeBudget {
  readonly #opts: DecodeBudgetOptions;
  #tokens: number;
  #at: number;

  constructor(options: DecodeBudgetOptions, now: number) {
    this.#opts = options;
    this.#tokens = options.burst;
    this.#at = now;
  }

  /** Charges `bytes` of work; `messageWork` is the message's total so far. Throws past either limit. */
  charge(bytes: number, messageWork: number, now: number): void {
    if (messageWork > this.#opts.perMessage) {
      throw new MeshlinkError('ML_ERR_DECODE_BUDGET', `one WebSocket message needed more than ${this.#opts.perMessage} bytes of decoding`);
    }
    if (this.#opts.perSecond === Number.POSITIVE_INFINITY) return;
    this.#tokens = Math.min(this.#opts.burst, this.#tokens + ((now - this.#at) * this.#opts.perSecond) / 1000);
    this.#at = now;
    this.#tokens -= bytes;
    if (this.#tokens < 0) {
      throw new MeshlinkError('ML_ERR_DECODE_BUDGET', `the peer needed more than ${this.#opts.perSecond} bytes of decoding per second`);
    }
  }
}
