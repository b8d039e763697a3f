import { connect, type Socket } from 'node:net';
import { PassThrough, Readable, Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { carryConnection } from '../../src/admin-api/tcp-tunnel-client.js';
import { AuditLog } from '../../src/server/audit-log.js';
import { MeshlinkError } from '../../src/errors.js';
import { waitUntil } from '../ops/helpers.js';
import { localForward, roundTrip, startTunnelPair, tcpServer, type TunnelPair } from './helpers.js';

/** Tunnels through a real server and an in-process agent: half-close, refusals, resets, audit, backpressure. */
describe('tunnels (in process)', () => {
  let pair: TunnelPair;
  let echo: Awaited<ReturnType<typeof tcpServer>>;
  let closedPort: number;
  const audit = (): AuditLog => AuditLog.of(pair.ts.server.store);
  const tunnelRecords = async () => (await audit().list(1000)).filter((a) => a.operation === 'tunnel');

  beforeAll(async () => {
    // Echoes, and after the client's FIN sends one more line and its own FIN (half-close both ways).
    echo = await tcpServer((s) => {
      s.on('data', (d: Buffer) => s.write(d));
      s.on('end', () => s.end('bye\n'));
      s.on('error', () => {});
    });
    const spare = await tcpServer(() => {});
    closedPort = spare.port;
    await spare.close();
    pair = await startTunnelPair([`127.0.0.1:${echo.port}`, `127.0.0.1:${closedPort}`, 'localhost:1']);
  }, 60_000);

  afterAll(async () => {
    await pair?.stop();
    await echo?.close();
  });

  it('carries bytes both ways; the client half-closes and still reads the reply; audited with bytes each way', async () => {
    const fwd = await localForward(pair, { port: echo.port });
    const reply = await roundTrip(fwd.port, 'hello\n');
    expect(reply.toString()).toBe('hello\nbye\n');
    const closed = await fwd.results[0];
    expect(closed).toMatchObject({ type: 'closed', toTarget: 6, fromTarget: 10 });
    await waitUntil('audit finished', async () => (await tunnelRecords()).some((a) => a.result === 'ok'));
    const rec = (await tunnelRecords()).find((a) => a.result === 'ok')!;
    expect(rec).toMatchObject({ actor: 'tester', nodeId: pair.nodeId, target: `127.0.0.1:${echo.port}` });
    expect(rec.details).toMatchObject({ host: '127.0.0.1', port: echo.port, toTarget: 6, fromTarget: 10 });
    expect(typeof rec.details!.durationMs).toBe('number');
    expect(rec.finishedAt).not.toBeNull();
    await fwd.close();
  });

  it('refuses a target outside the allowlist with ML_ERR_TUNNEL_NOT_ALLOWED, and audits the refusal', async () => {
    const ends = { input: new PassThrough(), output: new PassThrough() };
    const err = await carryConnection(pair.socket, { node: pair.nodeId, actor: 'tester', host: '127.0.0.1', port: 9 }, ends).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MeshlinkError);
    expect((err as MeshlinkError).code).toBe('ML_ERR_TUNNEL_NOT_ALLOWED');
    expect((err as MeshlinkError).message).toContain('--allow-tunnel 127.0.0.1:9');
    expect((err as MeshlinkError).exit).toBe('refused');
    expect((await tunnelRecords()).some((a) => a.target === '127.0.0.1:9' && a.result === 'error:ML_ERR_TUNNEL_NOT_ALLOWED')).toBe(true);
    // The host is compared as written: localhost:1 is allowed, 127.0.0.1:1 is not.
    const other = await carryConnection(pair.socket, { node: pair.nodeId, actor: 'tester', host: '127.0.0.1', port: 1 }, ends).catch((e: MeshlinkError) => e.code);
    expect(other).toBe('ML_ERR_TUNNEL_NOT_ALLOWED');
  });

  it('a target that refuses the connection is ML_ERR_TUNNEL_CONNECT', async () => {
    const err = await carryConnection(pair.socket, { node: pair.nodeId, actor: 'tester', host: '127.0.0.1', port: closedPort }, { input: new PassThrough(), output: new PassThrough() }).catch((e: MeshlinkError) => e);
    expect(err).toBeInstanceOf(MeshlinkError);
    expect((err as MeshlinkError).code).toBe('ML_ERR_TUNNEL_CONNECT');
    expect((err as MeshlinkError).message).toContain('ECONNREFUSED');
  });

  it('an unknown node fails before any stream opens', async () => {
    const code = await carryConnection(pair.socket, { node: 'no-such-node', actor: 'tester', host: '127.0.0.1', port: echo.port }, { input: new PassThrough(), output: new PassThrough() }).catch((e: MeshlinkError) => e.code);
    expect(code).toMatch(/^ML_ERR_NODE/);
  });

  it('a target that resets resets the local connection (ML_ERR_TUNNEL_RESET)', async () => {
    const resetter = await tcpServer((s) => {
      s.once('data', () => s.resetAndDestroy());
      s.on('error', () => {});
    });
    const pair2 = await startTunnelPair([`127.0.0.1:${resetter.port}`]);
    try {
      const fwd = await localForward(pair2, { port: resetter.port });
      const local = connect({ host: '127.0.0.1', port: fwd.port });
      const ended = new Promise<string>((r) => {
        local.once('error', (e: NodeJS.ErrnoException) => r(e.code ?? 'error'));
        local.once('end', () => r('end'));
      });
      local.write('x');
      expect(await ended).toBe('ECONNRESET');
      await expect(fwd.results[0]).rejects.toMatchObject({ code: 'ML_ERR_TUNNEL_RESET' });
      await fwd.close();
    } finally {
      await pair2.stop();
      await resetter.close();
    }
  });

  it('a local connection that resets resets the target connection', async () => {
    let targetSaw: Promise<string> | null = null;
    const target = await tcpServer((s) => {
      targetSaw = new Promise((r) => {
        s.once('error', (e: NodeJS.ErrnoException) => r(e.code ?? 'error'));
        s.once('end', () => r('end'));
      });
      s.write('ready');
    });
    const pair2 = await startTunnelPair([`127.0.0.1:${target.port}`]);
    try {
      const fwd = await localForward(pair2, { port: target.port });
      const local = connect({ host: '127.0.0.1', port: fwd.port });
      await new Promise((r) => local.once('data', r));
      local.resetAndDestroy();
      await waitUntil('target connection seen', () => targetSaw !== null);
      expect(await targetSaw!).toBe('ECONNRESET');
      expect(await fwd.results[0]).toBeNull();
      await waitUntil('audited as cancelled', async () =>
        (await AuditLog.of(pair2.ts.server.store).list(10)).some((a) => a.operation === 'tunnel' && a.result === 'cancelled'),
      );
      await fwd.close();
    } finally {
      await pair2.stop();
      await target.close();
    }
  });

  it('a local reader that reads nothing stops the target after a bounded amount (the windows), not the whole stream', async () => {
    const total = 256 * 1024 * 1024;
    let written = 0;
    let targetSocket: Socket | null = null;
    const block = Buffer.alloc(64 * 1024, 7);
    const target = await tcpServer((s) => {
      targetSocket = s;
      s.on('error', () => {});
      // Writes while the socket takes more: without backpressure end to end this would hand the
      // kernel (and the tunnel) all 256 MiB.
      const pump = (): void => {
        while (written < total) {
          written += block.length;
          if (!s.write(block)) {
            s.once('drain', pump);
            return;
          }
        }
      };
      pump();
    });
    const pair2 = await startTunnelPair([`127.0.0.1:${target.port}`]);
    try {
      let received = 0;
      // A local "reader" that never completes a write: the tunnel must stop at its high-water mark.
      const stuck = new Writable({ highWaterMark: 64 * 1024, write: (chunk: Buffer) => void (received += chunk.length) });
        const input = new PassThrough();
      const done = carryConnection(pair2.socket, { node: pair2.nodeId, actor: 'tester', host: '127.0.0.1', port: target.port }, { input, output: stuck }).catch((e: unknown) => e);
      await waitUntil('target connected', () => targetSocket !== null);
      // Wait until the target makes no progress for a while (quiescence), however long that takes.
      let last = -1;
      let still = 0;
      await waitUntil(
        'target stalled',
        () => {
          const now = (targetSocket as Socket | null)?.bytesWritten ?? 0;
          still = now === last ? still + 1 : 0;
          last = now;
          return still >= 10;
        },
        60_000,
        50,
      );
      const held = last - received;
      // Windows on the way (agent stream window ≤ 4 MiB, the server's WebSocket high-water mark 1 MiB,
      // stream write buffers) plus the kernel's loopback buffers (about 7 MiB measured here): under
      // 32 MiB, far from the 256 MiB the target tried to send.
      expect(last).toBeLessThan(32 * 1024 * 1024);
      expect(held).toBeGreaterThan(0);
      input.destroy();
      await done;
    } finally {
      await pair2.stop();
      await target.close();
    }
  }, 120_000);

  it('a target that reads nothing stops the local sender after a bounded amount; a client leaving then is still seen', async () => {
    let targetSocket: Socket | null = null;
    const target = await tcpServer((s) => {
      targetSocket = s;
      s.pause(); // never reads: only the kernel's receive buffer takes anything
      s.on('error', () => {});
    });
    const pair2 = await startTunnelPair([`127.0.0.1:${target.port}`]);
    try {
      let produced = 0;
      const block = Buffer.alloc(64 * 1024, 3);
      // A source that makes bytes only when asked: what it produced is what the tunnel took.
      const input = new Readable({
        highWaterMark: 64 * 1024,
        read() {
          produced += block.length;
          this.push(block);
        },
      });
      const done = carryConnection(pair2.socket, { node: pair2.nodeId, actor: 'tester', host: '127.0.0.1', port: target.port }, { input, output: new PassThrough() }).catch((e: unknown) => e);
      await waitUntil('target connected', () => targetSocket !== null);
      let last = -1;
      let still = 0;
      await waitUntil(
        'sender stalled',
        () => {
          still = produced === last ? still + 1 : 0;
          last = produced;
          return still >= 10;
        },
        60_000,
        50,
      );
      expect(produced).toBeGreaterThan(0);
      expect(produced).toBeLessThan(32 * 1024 * 1024);
      // The client leaving while the target still reads nothing: the server sees it and the agent
      // drops its connection to the target.
      input.destroy();
      expect(await done).toBeNull();
      await waitUntil('the agent closed the target connection', () => pair2.tunnels.service.active === 0);
    } finally {
      await pair2.stop();
      await target.close();
    }
  }, 120_000);

  it('many connections at once, each byte-exact', async () => {
    const fwd = await localForward(pair, { port: echo.port });
    const payloads = Array.from({ length: 50 }, (_, i) => Buffer.alloc(64 * 1024 + i, i));
    const replies = await Promise.all(payloads.map((p) => roundTrip(fwd.port, p)));
    replies.forEach((r, i) => expect(r.equals(Buffer.concat([payloads[i]!, Buffer.from('bye\n')]))).toBe(true));
    expect((await Promise.all(fwd.results)).every((c) => c?.type === 'closed')).toBe(true);
    await waitUntil('no tunnel left open on the agent', () => pair.tunnels.service.active === 0);
    await fwd.close();
  }, 60_000);
});
