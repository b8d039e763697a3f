import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { WireCounters } from '../net/wire-counters.js';
import { addWireObserver } from '../net/ws-session.js';
import { parseListenAddress, type ListenAddress } from '../util/listen-address.js';
import { serveMetrics } from '../util/metrics-listener.js';
import { VERSION } from '../version.js';
import type { MeshRelayStats, ServerFeature } from './feature.js';
import { CLIENT_HELLO_TIMEOUT, type GatewayLoad } from './gateway.js';
import type { FleetTotals } from './store/store.js';

/**
 * Prometheus metrics of the server (docs/OPERATIONS-METRICS.md), served as `GET /metrics` on a
 * separate local listener (`--metrics-listen 127.0.0.1:9464`, or MESHLINK_METRICS_LISTEN), never on
 * the agent-facing port: the exposition names nodes' activity and needs no client certificate, so
 * it must not be reachable from where agents connect. Without a listen address nothing is served and
 * nothing is counted.
 *
 * Cost on the hot path: frames are counted per WebSocket message by WireCounters
 * (src/net/wire-counters.ts, shared with the agent); prom-client labels are only touched at scrape
 * time. Totals that live in the store (enrollments, renewals, revocations)
 * are read from it at scrape time, so they survive restarts.
 */

export type { ListenAddress };

/** Parses `HOST:PORT` / `[v6]:PORT` for --metrics-listen. */
export function parseMetricsListen(text: string): ListenAddress {
  return parseListenAddress(text, 'metrics listen address', 'ML_ERR_CONFIG');
}

export interface ServerMetricsHandle {
  readonly registry: Registry;
  /** The bound address of the /metrics listener. */
  readonly address: ListenAddress;
}

export interface MetricsFeatureOptions {
  /** Where to serve /metrics; null/absent: the config's (`--metrics-listen`), then MESHLINK_METRICS_LISTEN, else off. */
  listen?: ListenAddress | null;
  onStarted?: (handle: ServerMetricsHandle) => void;
}

export function createMetricsFeature(options: MetricsFeatureOptions = {}): ServerFeature {
  return async (ctx) => {
    const env = process.env.MESHLINK_METRICS_LISTEN;
    const listen = options.listen ?? ctx.config.metricsListen ?? (env ? parseMetricsListen(env) : null);
    if (!listen) return;
    const log = ctx.logger.child({ component: 'metrics' });
    const registry = new Registry();
    collectDefaultMetrics({ register: registry });
    const sessions = ctx.sessions;

    new Gauge({
      name: 'meshlink_connected_agents',
      help: 'Open agent sessions (a node may briefly have two during a make-before-break reconnect).',
      registers: [registry],
      collect() {
        this.set(sessions.snapshot().length);
      },
    });
    // The build this server runs, as the usual Prometheus `_build_info` series (value 1; the labels carry the facts).
    // Asked at scrape time: the mesh feature may start after this one, or not run (then no samples).
    new Gauge({
      name: 'meshlink_mesh_pairs',
      help: 'Permitted mesh pairs of nodes with a WireGuard key, by the path the server chose (direct, relay).',
      labelNames: ['path'] as const,
      registers: [registry],
      collect() {
        const pairs = ctx.questions.ask('meshPairsByPath')?.();
        this.reset();
        if (pairs === undefined) return;
        this.set({ path: 'direct' }, pairs.direct);
        this.set({ path: 'relay' }, pairs.relay);
      },
    });
    // Read at scrape time from the gateway: what waits before the session layer (a reconnect storm or a
    // slowloris shows here first, src/server/admission.ts and client-hello.ts).
    const gatewayGauge = (name: string, help: string, read: (l: GatewayLoad) => number): void => {
      new Gauge({ name, help, registers: [registry], collect() { this.set(read(ctx.connections.load())); } });
    };
    gatewayGauge('meshlink_gateway_awaiting_first_byte', 'TCP connections accepted and waiting for the first byte of their ClientHello (within --client-hello-timeout).', (l) => l.awaitingFirstByte);
    gatewayGauge('meshlink_gateway_connections_queued', 'Connections whose ClientHello arrived, waiting for a TLS handshake slot.', (l) => l.queued);
    gatewayGauge('meshlink_gateway_handshakes_in_flight', 'TLS handshakes in progress (capped by the gateway).', (l) => l.handshakesInFlight);
    registerRelayMetrics(registry, () => ctx.questions.ask('meshRelayStats')?.() ?? null);
    new Gauge({ name: 'meshlink_build_info', help: 'The meshlink version and Node.js version of this server (value 1).', labelNames: ['version', 'node'] as const, registers: [registry] })
      .labels({ version: VERSION, node: process.version })
      .set(1);
    new Gauge({
      name: 'meshlink_connected_nodes',
      help: 'Nodes with at least one open session.',
      registers: [registry],
      collect() {
        this.set(ctx.presence.onlineCount);
      },
    });
    const handshakes = new Counter({
      name: 'meshlink_handshakes_total',
      help: 'Agent connections: accepted (protocol handshake completed) or refused before the upgrade, by reason.',
      labelNames: ['result', 'reason'] as const,
      registers: [registry],
    });
    const closes = new Counter({
      name: 'meshlink_sessions_closed_total',
      help: 'Agent sessions that ended, by WebSocket close code.',
      labelNames: ['code'] as const,
      registers: [registry],
    });
    sessions.on('agent-open', () => handshakes.labels('accepted', 'ok').inc());
    sessions.on('agent-close', (_a, info) => closes.labels(String(info.code)).inc());
    const helloTimeouts = new Counter({
      name: 'meshlink_gateway_client_hello_timeouts_total',
      help: 'TCP connections closed because they sent no TLS ClientHello within --client-hello-timeout (before taking a handshake slot).',
      registers: [registry],
    });
    const onRefused = (reason: string): void => {
      handshakes.labels('refused', reason).inc();
      if (reason === CLIENT_HELLO_TIMEOUT) helloTimeouts.inc();
    };
    const stopObservingRefusals = ctx.connections.onRefused(onRefused);

    // Store totals (monotonic across restarts: tokens and certificates are never deleted).
    let snapshot: Promise<FleetTotals> | null = null;
    let snapshotAt = 0;
    const fresh = (): Promise<FleetTotals> => {
      // One query per scrape, shared by the counters (prom-client awaits each collect).
      if (snapshot === null || Date.now() - snapshotAt > 500) {
        snapshot = ctx.store.fleetTotals();
        snapshotAt = Date.now();
      }
      return snapshot;
    };
    const storeCounter = (name: string, help: string, value: (t: FleetTotals) => number): void => {
      new Counter({
        name,
        help,
        registers: [registry],
        async collect() {
          const v = value(await fresh());
          this.reset();
          if (v > 0) this.inc(v);
        },
      });
    };
    new Gauge({
      name: 'meshlink_enrolled_nodes',
      help: 'Enrolled nodes that are not removed.',
      registers: [registry],
      async collect() {
        this.set((await fresh()).enrolled);
      },
    });
    storeCounter('meshlink_enrollments_total', 'Enrollments (consumed one-time tokens), from the store.', (t) => t.enrollments);
    storeCounter('meshlink_renewals_total', 'Certificate renewals (in-band and /v1/renew), from the store.', (t) => Math.max(0, t.certs - t.enrollments));
    storeCounter('meshlink_revoked_certificates_total', 'Revoked client certificates, from the store.', (t) => t.revoked);
    storeCounter('meshlink_node_removals_total', 'Nodes removed (their certificates revoked), from the store.', (t) => t.removed);

    const wire = new WireCounters();
    const removeObserver = addWireObserver('server', wire.observe);
    const frames = new Counter({ name: 'meshlink_frames_total', help: 'Protocol frames by direction and message kind.', labelNames: ['direction', 'kind'] as const, registers: [registry] });
    const frameBytes = new Counter({ name: 'meshlink_frame_bytes_total', help: 'Protocol frame bytes (header + payload) by direction and message kind.', labelNames: ['direction', 'kind'] as const, registers: [registry] });
    new Counter({
      name: 'meshlink_ws_messages_total',
      help: 'WebSocket messages (each carries one or more coalesced frames) by direction.',
      labelNames: ['direction'] as const,
      registers: [registry],
      collect() {
        wire.exportTo(frames, frameBytes);
        this.reset();
        if (wire.messagesIn) this.labels('in').inc(wire.messagesIn);
        if (wire.messagesOut) this.labels('out').inc(wire.messagesOut);
      },
    });
    new Counter({
      name: 'meshlink_ws_bytes_total',
      help: 'WebSocket message bytes by direction.',
      labelNames: ['direction'] as const,
      registers: [registry],
      collect() {
        this.reset();
        if (wire.messageBytesIn) this.labels('in').inc(wire.messageBytesIn);
        if (wire.messageBytesOut) this.labels('out').inc(wire.messageBytesOut);
      },
    });

    new Gauge({
      name: 'meshlink_open_streams',
      help: 'Open multiplexed streams over all agent sessions.',
      registers: [registry],
      collect() {
        let n = 0;
        for (const a of sessions.snapshot()) n += a.streamCount;
        this.set(n);
      },
    });
    // Stalls of sessions that ended are kept here; live sessions are summed at scrape time.
    let stallsOfClosedSessions = 0;
    sessions.on('agent-close', (a) => (stallsOfClosedSessions += a.flowControlStalls));
    new Counter({
      name: 'meshlink_flow_control_stalls_total',
      help: 'Times a stream to an agent had data to send and no credit left, waiting for the agent’s stream.window (a slow reader, or a window too small for the link). Counted once per wait.',
      registers: [registry],
      collect() {
        let n = stallsOfClosedSessions;
        for (const a of sessions.snapshot()) n += a.flowControlStalls;
        this.reset();
        this.inc(n);
      },
    });
    new Gauge({
      name: 'meshlink_transport_inflight_bytes',
      help: 'Bytes handed to agent sockets and not yet written (transport backpressure), summed over sessions.',
      registers: [registry],
      collect() {
        let n = 0;
        for (const a of sessions.snapshot()) n += a.inflightBytes;
        this.set(n);
      },
    });
    new Gauge({
      name: 'meshlink_sessions_backpressured',
      help: 'Agent sessions whose unwritten transport bytes exceed 64 KiB (a slow or stalled peer; flow control holds their streams).',
      registers: [registry],
      collect() {
        let n = 0;
        for (const a of sessions.snapshot()) if (a.inflightBytes > 64 * 1024) n++;
        this.set(n);
      },
    });

    const expiry = new Gauge({
      name: 'meshlink_connected_cert_expiry_seconds',
      help: 'Seconds until NotAfter of the connected certificate that expires first (min) and the median.',
      labelNames: ['stat'] as const,
      registers: [registry],
      collect() {
        const left: number[] = [];
        const now = Date.now();
        for (const a of sessions.snapshot()) left.push((a.info.certNotAfter - now) / 1000);
        this.reset();
        if (left.length === 0) return;
        left.sort((x, y) => x - y);
        expiry.labels('min').set(left[0]!);
        expiry.labels('median').set(left[Math.floor(left.length / 2)]!);
      },
    });
    new Gauge({
      name: 'meshlink_connected_certs_expiring',
      help: 'Connected certificates whose NotAfter is within the window.',
      labelNames: ['within'] as const,
      registers: [registry],
      collect() {
        const now = Date.now();
        let day = 0;
        let week = 0;
        for (const a of sessions.snapshot()) {
          const left = a.info.certNotAfter - now;
          if (left < 86_400_000) day++;
          if (left < 7 * 86_400_000) week++;
        }
        this.labels('1d').set(day);
        this.labels('7d').set(week);
      },
    });

    // Event delivery lag: an event.ack names the highest applied seq; its lag is now minus the event's
    // creation time, which the mesh feature answers (no answer when the mesh does not run).
    const lag = new Histogram({
      name: 'meshlink_event_delivery_lag_seconds',
      help: 'Time from a mesh event being created to the agent acknowledging it (event.ack).',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [registry],
    });
    const lastAck = new Map<string, number>();
    sessions.onMessage('event.ack', (agent, ack) => {
      const createdAt = ctx.questions.ask('meshEventCreatedAt');
      if (!createdAt || (lastAck.get(agent.nodeId) ?? 0) >= ack.seq) return;
      lastAck.set(agent.nodeId, ack.seq);
      const receivedAt = Date.now();
      createdAt(agent.nodeId, ack.seq).then(
        (ts) => {
          if (ts !== undefined) lag.observe(Math.max(0, receivedAt - ts) / 1000);
        },
        () => {}, // a store that does not answer costs one sample, not the session
      );
    });
    sessions.on('agent-close', (a) => {
      if (!sessions.isOnline(a.nodeId)) lastAck.delete(a.nodeId);
    });

    const server = await serveMetrics(registry, listen, { healthy: () => ctx.store.healthy() });
    const address = server.address() as AddressInfo;
    const bound = { host: address.address, port: address.port };
    log.info({ address: `${bound.host}:${bound.port}` }, 'metrics listening');
    options.onStarted?.({ registry, address: bound });
    return {
      close: () =>
        new Promise<void>((resolve) => {
          removeObserver();
          stopObservingRefusals();
          server.close(() => resolve());
          server.closeAllConnections();
        }),
    };
  };
}

export const metricsFeature: ServerFeature = createMetricsFeature();

/**
 * The mesh relay's metrics (docs/MESH.md, "Relay"), read from its plain counters at scrape time: the
 * packet path never touches a label. No samples while the relay is off (or the mesh feature does not run).
 */
function registerRelayMetrics(registry: Registry, stats: () => MeshRelayStats | null): void {
  new Gauge({
    name: 'meshlink_relay_allocations',
    help: 'Relay allocations open (two UDP ports each).',
    registers: [registry],
    collect() {
      const s = stats();
      this.reset();
      if (s) this.set(s.allocations);
    },
  });
  const exported = { a_to_b: 0, b_to_a: 0, packets: 0, relatched: 0, dropped: new Map<string, number>() };
  /** Adds what grew since the last scrape (prom-client counters only go up). */
  const grow = (counter: Counter, value: number, last: number, labels?: Record<string, string>): number => {
    if (value > last) {
      if (labels) counter.inc(labels, value - last);
      else counter.inc(value - last);
    }
    return Math.max(value, last);
  };
  new Counter({
    name: 'meshlink_relay_bytes_total',
    help: "Bytes the relay forwarded (WireGuard ciphertext, UDP payload), by direction: from the pair's first member (node ids in order) to the second (a_to_b), and back.",
    labelNames: ['direction'] as const,
    registers: [registry],
    collect() {
      const s = stats();
      if (!s) return;
      exported.a_to_b = grow(this, s.bytesAtoB, exported.a_to_b, { direction: 'a_to_b' });
      exported.b_to_a = grow(this, s.bytesBtoA, exported.b_to_a, { direction: 'b_to_a' });
    },
  });
  new Counter({
    name: 'meshlink_relay_packets_total',
    help: 'Packets the relay forwarded.',
    registers: [registry],
    collect() {
      const s = stats();
      if (s) exported.packets = grow(this, s.packets, exported.packets);
    },
  });
  new Counter({
    name: 'meshlink_relay_relatched_total',
    help: 'Relay ports whose latch moved to a new source (a NAT rebinding, confirmed by the peer\'s handshake).',
    registers: [registry],
    collect() {
      const s = stats();
      if (s) exported.relatched = grow(this, s.relatched, exported.relatched);
    },
  });
  new Counter({
    name: 'meshlink_relay_dropped_packets_total',
    help: 'Packets the relay dropped, by reason.',
    labelNames: ['reason'] as const,
    registers: [registry],
    collect() {
      const s = stats();
      if (!s) return;
      for (const [reason, n] of Object.entries(s.dropped)) exported.dropped.set(reason, grow(this, n, exported.dropped.get(reason) ?? 0, { reason }));
    },
  });
  const switched = { relay: 0, direct: 0 };
  new Counter({
    name: 'meshlink_mesh_path_switches_total',
    help: 'Pairs the server moved between paths on their members\' reports (docs/MESH.md, "Switching"): to the relay when a direct path was reported down, to direct when a back-off ended.',
    labelNames: ['to'] as const,
    registers: [registry],
    collect() {
      const s = stats();
      if (!s) return;
      switched.relay = grow(this, s.switchedToRelay, switched.relay, { to: 'relay' });
      switched.direct = grow(this, s.directRetries, switched.direct, { to: 'direct' });
    },
  });
  new Gauge({
    name: 'meshlink_mesh_pairs_held_on_relay',
    help: 'Pairs whose NAT classes allow a direct path but which are on the relay because it was reported down (until their back-off ends).',
    registers: [registry],
    collect() {
      const s = stats();
      this.reset();
      if (s) this.set(s.heldOnRelay);
    },
  });
}
