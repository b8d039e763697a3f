import { Session, type SessionOptions } from '../../src/protocol/session.js';
import type { Timers } from '../../src/protocol/timers.js';
import type { ServerConfig } from '../../src/server/config.js';
import type { EnrollmentService } from '../../src/server/enroll.js';
import { Presence } from '../../src/server/presence.js';
import { SessionHost, type ConnectedAgent } from '../../src/server/session-host.js';
import type { Store } from '../../src/server/store/store.js';
import { createLogger } from '../../src/util/logger.js';

const silent = createLogger({ name: 'test', level: 'silent' });

/** An agent session served by the host over an in-memory link whose server-to-agent direction can be shut. */
export interface HostedAgent {
  /** The agent's end. */
  agent: Session;
  /** The handle features see. */
  handle: ConnectedAgent;
  /** The server's end (tests only: features never hold it). */
  server: Session;
  /** Stops delivering what the server sends: its sends stop completing, as behind a stalled socket. */
  shut(): void;
  /** Delivers what was held and carries on. */
  open(): void;
}

export interface TestHost {
  host: SessionHost;
  /** Connects an agent of `nodeId` (a live node of the store) and waits for its session to open. */
  connect(nodeId: string, server?: Partial<Pick<SessionOptions, 'priorityHighWater' | 'timers'>>): Promise<HostedAgent>;
  close(): Promise<void>;
}

/**
 * The real SessionHost (the AgentSessions facade) serving agents over in-memory links: delivery is
 * asynchronous (setImmediate) and a send completes when it is delivered, so the server's queues fill
 * up while a link is shut. The server ends get `transportHighWater: 1`, so they stop handing messages
 * to a shut link at once and the control queue shows the backlog.
 */
export function testHost(store: Store): TestHost {
  const presence = new Presence(store, silent);
  const config = { heartbeatIntervalMs: 15_000, offlineAfterMs: 3_600_000 } as ServerConfig;
  const host = new SessionHost({ config, store, enrollment: {} as EnrollmentService, logger: silent, presence });
  const agents: HostedAgent[] = [];
  return {
    host,
    async connect(nodeId, serverExtra = {}) {
      let shut = false;
      const held: Array<() => void> = [];
      let server!: Session;
      const deliver = (to: () => Session, message: Uint8Array, done: (err?: Error | null) => void) => () =>
        setImmediate(() => {
          to().receive(message);
          done();
        });
      const agent = new Session({
        role: 'agent',
        transport: { send: (m, done) => deliver(() => server, Uint8Array.from(m), done)(), close: (code, reason) => setImmediate(() => server.transportClosed(code, reason)) },
      });
      const opened = new Promise<ConnectedAgent>((resolve) => {
        const onOpen = (a: ConnectedAgent): void => {
          if (a.session !== server) return;
          host.off('agent-open', onOpen);
          resolve(a);
        };
        host.on('agent-open', onOpen);
      });
      host.serveSession({ nodeId, hostname: nodeId, certSerial: '01', certNotAfter: Date.now() + 86_400_000, remoteAddress: '127.0.0.1' }, (binding) => {
        server = new Session({
          ...binding,
          transportHighWater: 1,
          ...serverExtra,
          transport: {
            send: (m, done) => {
              const go = deliver(() => agent, Uint8Array.from(m), done);
              if (shut) held.push(go);
              else go();
            },
            close: (code, reason) => setImmediate(() => agent.transportClosed(code, reason)),
          },
        });
        return server;
      });
      await agent.handshake({ agentVersion: 'test' });
      const handle = await opened;
      const hosted: HostedAgent = {
        agent,
        handle,
        server,
        shut: () => void (shut = true),
        open: () => {
          shut = false;
          for (const go of held.splice(0)) go();
        },
      };
      agents.push(hosted);
      return hosted;
    },
    async close() {
      for (const a of agents) {
        a.open();
        a.agent.close();
      }
      host.close();
      await presence.close();
    },
  };
}

/** Timers whose timeouts fire only when the test says so (`fire`); `now` and `defer` are real. */
export function manualTimers(): Timers & { fire(): number } {
  const pending = new Set<{ fn: () => void }>();
  return {
    now: () => Date.now(),
    setTimeout: (fn) => {
      const t = { fn };
      pending.add(t);
      return t;
    },
    clearTimeout: (handle) => void pending.delete(handle as { fn: () => void }),
    defer: (fn) => void setImmediate(fn),
    /** Fires every timeout pending now (not those they set); returns how many. */
    fire() {
      const due = [...pending];
      pending.clear();
      for (const t of due) t.fn();
      return due.length;
    },
  };
}
