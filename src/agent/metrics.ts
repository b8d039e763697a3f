import { decode } from '@msgpack/msgpack';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { WireCounters } from '../net/wire-counters.js';
import { addWireObserver } from '../net/ws-session.js';
import type { AgentRunner } from './connection.js';
import type { Session } from '../protocol/session.js';

/**
 * The agent's own Prometheus metrics: connection state, reconnects, heartbeat round trip, frames and
 * bytes by kind, certificate expiry, mesh event lag. Served on a local port only when asked
 * (`agent run --metrics-listen 127.0.0.1:9465`, see src/agent/observability) and sampled into
 * metrics.batch uploads. The wire counting is shared with the server (WireCounters, src/net/wire-counters.ts).
 */

const STATES = ['connecting', 'connected', 'backoff', 'stopped'] as const;

export class AgentMetrics {
  readonly registry = new Registry();
  readonly #wire = new WireCounters();
  readonly #removeObserver: () => void;
  readonly #connects: Counter;
  readonly #rtt: Histogram;
  readonly #lag: Histogram;
  #lastRttMs: number | null = null;

  constructor(runner: AgentRunner, options: { defaultMetrics?: boolean } = {}) {
    const registry = this.registry;
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
    new Gauge({
      name: 'meshlink_agent_connection_state',
      help: '1 for the current connection state of the agent, 0 for the others.',
      labelNames: ['state'] as const,
      registers: [registry],
      collect() {
        for (const s of STATES) this.labels(s).set(runner.state === s ? 1 : 0);
      },
    });
    this.#connects = new Counter({ name: 'meshlink_agent_connects_total', help: 'Sessions established (first connect, reconnects, renewal switches).', registers: [registry] });
    this.#rtt = new Histogram({
      name: 'meshlink_agent_heartbeat_rtt_seconds',
      help: 'heartbeat → heartbeat.ack round trip.',
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    });
    this.#lag = new Histogram({
      name: 'meshlink_agent_event_lag_seconds',
      help: 'Mesh event creation (server clock) to receipt (agent clock).',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [registry],
    });
    new Gauge({
      name: 'meshlink_agent_cert_expiry_seconds',
      help: 'Seconds until the NotAfter of the agent certificate.',
      registers: [registry],
      collect() {
        const id = runner.identity;
        if (id) this.set((id.cert.notAfter.getTime() - Date.now()) / 1000);
      },
    });
    const wire = this.#wire;
    const frames = new Counter({ name: 'meshlink_agent_frames_total', help: 'Protocol frames by direction and message kind.', labelNames: ['direction', 'kind'] as const, registers: [registry] });
    const bytes = new Counter({ name: 'meshlink_agent_frame_bytes_total', help: 'Protocol frame bytes by direction and message kind.', labelNames: ['direction', 'kind'] as const, registers: [registry] });
    new Counter({
      name: 'meshlink_agent_ws_bytes_total',
      help: 'WebSocket message bytes by direction.',
      labelNames: ['direction'] as const,
      registers: [registry],
      collect() {
        wire.exportTo(frames, bytes);
        this.reset();
        if (wire.messageBytesIn) this.labels('in').inc(wire.messageBytesIn);
        if (wire.messageBytesOut) this.labels('out').inc(wire.messageBytesOut);
      },
    });
    // Stalls of sessions already replaced are kept; the current session's are read at scrape time.
    let stallsOfEndedSessions = 0;
    let tracked: Session | null = runner.session; // attached after the first connect too
    runner.on('connected', (session: Session) => {
      if (tracked && tracked !== session) stallsOfEndedSessions += tracked.flowControlStalls;
      tracked = session;
    });
    new Counter({
      name: 'meshlink_agent_flow_control_stalls_total',
      help: 'Times a stream to the server had data to send and no credit left, waiting for a stream.window (a slow server-side reader or a window too small for the link). Counted once per wait.',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(stallsOfEndedSessions + (tracked?.flowControlStalls ?? 0));
      },
    });
    this.#removeObserver = addWireObserver('agent', wire.observe);
    runner.on('connected', () => this.#connects.inc());
    runner.on('heartbeat', (ms: number) => {
      this.#lastRttMs = ms;
      this.#rtt.observe(ms / 1000);
    });
    runner.onMessage('event', (payload) => {
      const ts = eventTs(payload.envelope);
      if (ts !== null) this.#lag.observe(Math.max(0, Date.now() - ts) / 1000);
    });
  }

  get lastHeartbeatRttMs(): number | null {
    return this.#lastRttMs;
  }

  /** Flat samples of every metric (for metrics.batch); histograms contribute _sum and _count. */
  async samples(now = Date.now()): Promise<Array<{ name: string; value: number; labels?: Record<string, string>; ts: number }>> {
    const out: Array<{ name: string; value: number; labels?: Record<string, string>; ts: number }> = [];
    for (const metric of await this.registry.getMetricsAsJSON()) {
      for (const v of metric.values as Array<{ value: number; labels: Record<string, string | number>; metricName?: string }>) {
        const name = v.metricName ?? metric.name;
        if (name.endsWith('_bucket')) continue;
        if (!Number.isFinite(v.value)) continue;
        const labels = Object.fromEntries(Object.entries(v.labels).map(([k, x]) => [k, String(x)]));
        out.push({ name, value: v.value, ts: now, ...(Object.keys(labels).length > 0 ? { labels } : {}) });
      }
    }
    return out;
  }

  close(): void {
    this.#removeObserver();
  }
}

/** The `ts` of a mesh event envelope (MessagePack {seq, type, ts, payload}), or null. */
function eventTs(envelope: Uint8Array): number | null {
  try {
    const e = decode(envelope) as { ts?: unknown };
    return typeof e.ts === 'number' ? e.ts : null;
  } catch {
    return null;
  }
}
