/**
 * One load-generator process of the fleet benchmark (forked by main.ts): enrolls its share of
 * simulated agents (EC P-256 keys, real POST /v1/enroll), then keeps each one connected like the real
 * agent does: its own mTLS WebSocket, the real protocol Session (attachSession), hello/welcome,
 * heartbeats every welcome.heartbeatIntervalMs with a random phase, and reconnects with the real
 * Backoff (1 s base, ±25 % jitter, doubling to 60 s). Mesh events as the real agent takes them: hello
 * carries the last seq it applied, the first state.request asks for the replay of what it missed,
 * each event is acknowledged (signature verification is left out: it costs the load generator, not
 * the server). Records heartbeat round trips, event receipt (seq, latency) and connect attempts per
 * second, and answers the parent's IPC queries.
 */
import { decode } from '@msgpack/msgpack';
import { request } from 'node:https';
import WebSocket from 'ws';
import { Backoff } from '../../src/agent/backoff.js';
import { zeroMaskingKey } from '../../src/net/ws-mask.js';
import { attachSession } from '../../src/net/ws-session.js';
import type { Session } from '../../src/protocol/session.js';
import { makeEcCsr } from './ec-csr.js';

interface Sim {
  hostname: string;
  certPem: string;
  keyPem: string;
  session: Session | null;
  ws: WebSocket | null;
  online: boolean;
  connectedAt: number;
  backoff: Backoff;
  hb: NodeJS.Timeout | null;
  received: Set<number>;
  /** Highest seq received with every seq below it received too (what hello reports). */
  lastEventSeq: number;
}

const agents: Sim[] = [];
let url = '';
let ca = '';
let recordingRtt = false;
let rtts: number[] = [];
/** Delivery latency (receipt − the event's ts) by event seq. */
const latencies = new Map<number, number[]>();
const attemptsPerSec = new Map<number, number>();
let stopped = false;

function send(msg: unknown): void {
  process.send!(msg);
}

function post(path: string, body: unknown): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const req = request(`${url}${path}`, { method: 'POST', ca, agent: false, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } }, (r) => {
      let b = '';
      r.on('data', (c: Buffer) => (b += c.toString()));
      r.on('end', () => resolve({ status: r.statusCode ?? 0, body: b }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

async function pool<T>(items: T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

async function enrollAll(tokens: string[], prefix: string, concurrency: number): Promise<number> {
  let failures = 0;
  const jobs = tokens.map((token, i) => ({ token, hostname: `${prefix}-${i}` }));
  await pool(jobs, concurrency, async ({ token, hostname }) => {
    const { csrPem, keyPem } = makeEcCsr(hostname);
    const r = await post('/v1/enroll', { token, csr: csrPem });
    if (r.status !== 200) {
      failures++;
      return;
    }
    const issued = JSON.parse(r.body) as { certificate: string };
    agents.push({ hostname, certPem: issued.certificate, keyPem, session: null, ws: null, online: false, connectedAt: 0, backoff: new Backoff(), hb: null, received: new Set(), lastEventSeq: 0 });
  });
  return failures;
}

/** One dial + handshake; resolves true when the session is open. */
function dial(a: Sim): Promise<boolean> {
  const sec = Math.floor(Date.now() / 1000);
  attemptsPerSec.set(sec, (attemptsPerSec.get(sec) ?? 0) + 1);
  return new Promise((resolve) => {
    let settled = false;
    const done = (ok: boolean): void => {
      if (settled) return;
      settled = true;
      resolve(ok);
    };
    const ws = new WebSocket(`${url.replace('https:', 'wss:')}/v1/connect`, { ca, cert: a.certPem, key: a.keyPem, perMessageDeflate: false, handshakeTimeout: 30_000, generateMask: zeroMaskingKey });
    a.ws = ws;
    ws.once('unexpected-response', () => {
      ws.terminate();
      done(false);
    });
    ws.once('error', () => done(false));
    ws.once('close', () => done(false));
    ws.once('open', () => {
      const session = attachSession(ws, { role: 'agent', handshakeTimeoutMs: 30_000 });
      a.session = session;
      session.on('message', (msg) => {
        if (msg.name === 'heartbeat.ack') {
          if (recordingRtt) rtts.push(Date.now() - (msg.payload as { ts: number }).ts);
        } else if (msg.name === 'event') {
          const e = decode((msg.payload as { envelope: Uint8Array }).envelope) as { seq: number; ts: number };
          a.received.add(e.seq);
          while (a.received.has(a.lastEventSeq + 1)) a.lastEventSeq++;
          let l = latencies.get(e.seq);
          if (!l) latencies.set(e.seq, (l = []));
          l.push(Date.now() - e.ts);
          if (session.state === 'open') session.send('event.ack', { seq: e.seq });
        }
      });
      session.once('close', () => {
        a.online = false;
        if (a.hb) clearInterval(a.hb);
        a.hb = null;
        a.session = null;
        if (!stopped) scheduleReconnect(a);
      });
      session
        .handshake({ agentVersion: 'fleet-bench', hostname: a.hostname, lastEventSeq: a.lastEventSeq })
        .then((welcome) => {
          a.online = true;
          // The first state.request starts the replay of missed events and live delivery.
          session.request('state.request', {}, { timeoutMs: 60_000 }).catch(() => {});
          a.connectedAt = Date.now();
          let seq = 0;
          const beat = (): void => {
            if (session.state === 'open') session.send('heartbeat', { seq: ++seq, ts: Date.now() });
          };
          // A random phase, as real agents started at different times would have.
          const phase = setTimeout(() => {
            beat();
            a.hb = setInterval(beat, welcome.heartbeatIntervalMs);
          }, Math.random() * welcome.heartbeatIntervalMs);
          a.hb = phase as unknown as NodeJS.Timeout;
          done(true);
        })
        .catch(() => done(false));
    });
  });
}

function scheduleReconnect(a: Sim): void {
  a.backoff.connectionEnded(Date.now() - a.connectedAt);
  const again = (): void => {
    if (stopped) return;
    setTimeout(() => {
      void dial(a).then((ok) => {
        if (!ok && !a.online) again();
      });
    }, a.backoff.next());
  };
  again();
}

async function connectAll(concurrency: number): Promise<number> {
  let failures = 0;
  await pool(agents, concurrency, async (a) => {
    if (!(await dial(a))) {
      failures++;
      scheduleReconnect(a);
    }
  });
  return failures;
}

process.on('message', (m: { cmd: string; [k: string]: unknown }) => {
  void (async () => {
    switch (m.cmd) {
      case 'enroll': {
        url = m.url as string;
        ca = m.ca as string;
        const t0 = performance.now();
        const failures = await enrollAll(m.tokens as string[], m.prefix as string, m.concurrency as number);
        send({ type: 'enrolled', count: agents.length, failures, ms: performance.now() - t0 });
        return;
      }
      case 'connect': {
        const t0 = performance.now();
        const failures = await connectAll(m.concurrency as number);
        send({ type: 'connected', failures, ms: performance.now() - t0 });
        return;
      }
      case 'status':
        send({ type: 'status', online: agents.filter((a) => a.online).length, attempts: [...attemptsPerSec.entries()] });
        return;
      case 'rtt-start':
        rtts = [];
        recordingRtt = true;
        send({ type: 'ok' });
        return;
      case 'rtt-stop':
        recordingRtt = false;
        send({ type: 'rtts', rtts });
        return;
      case 'events': {
        // Every agent must hold every seq from 1 (its first snapshot) to `through`.
        const through = m.through as number;
        let lost = 0;
        for (const a of agents) for (let s = 1; s <= through; s++) if (!a.received.has(s)) lost++;
        const wanted = (m.latencyOf as number[]).flatMap((s) => latencies.get(s) ?? []);
        send({ type: 'events', lost, latencies: wanted });
        return;
      }
      case 'exit':
        stopped = true;
        for (const a of agents) a.ws?.terminate();
        send({ type: 'bye' });
        setTimeout(() => process.exit(0), 100);
        return;
    }
  })().catch((err: unknown) => send({ type: 'error', message: String(err) }));
});
send({ type: 'ready' });
