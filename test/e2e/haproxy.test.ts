import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpsRequest } from '../server/helpers.js';
import { cli, createToken, freePort, listNodes, spawnCli, startServerProc, tempDir, waitFor, type Proc, type ServerProc } from './harness.js';
import { HAPROXY_MISSING, startHaproxy, type Haproxy } from './haproxy.js';

/**
 * A real haproxy in TCP mode with `send-proxy-v2` in front of a real server process started with
 * `--proxy-protocol --proxy-protocol-from <haproxy's source>`; a real agent enrolls and connects
 * through it. haproxy's connections to the server leave from 127.0.0.9, the agent's from 127.0.0.1:
 * the server must see the agent's address (from the header) in `nodes show`, the audit log and its
 * log, and refuse a connection that comes straight from the agent's address (no header, not a listed
 * balancer).
 */
const HAPROXY_SOURCE = '127.0.0.9';

if (HAPROXY_MISSING !== null && process.env.CI) {
  it('haproxy is installed (CI installs it in .ci/run)', () => {
    throw new Error(HAPROXY_MISSING ?? '');
  });
}

describe.skipIf(HAPROXY_MISSING !== null)(`the server behind haproxy with the PROXY protocol v2${HAPROXY_MISSING ? ` (skipped: ${HAPROXY_MISSING})` : ''}`, () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let haproxy: Haproxy;
  let agent: Proc | undefined;
  let serverPort = 0;

  beforeAll(async () => {
    dir = await tempDir('ml-haproxy-');
    serverPort = await freePort();
    // haproxy's port is known only once it runs; the server's public URL names it (agents are told it).
    haproxy = await startHaproxy(dir.path, { backend: `127.0.0.1:${serverPort}`, source: HAPROXY_SOURCE });
    // The PROXY protocol from the config file (its keys are the flags' names); the flags are checked below.
    const config = join(dir.path, 'server.json');
    await writeFile(config, JSON.stringify({ proxyProtocol: true, proxyProtocolFrom: `${HAPROXY_SOURCE},10.99.0.0/16` }));
    server = await startServerProc(join(dir.path, 'server'), serverPort, [
      '--config',
      config,
      '--public-url',
      `https://127.0.0.1:${haproxy.port}`,
      '--log-level',
      'debug',
    ]);
    // haproxy ran before the server and its health checks may have marked the backend down: wait until
    // a TLS handshake gets through it (the state, not a time). Unverified: this only probes the path.
    await waitFor(
      'haproxy forwarding to the server',
      () =>
        new Promise<boolean>((resolve) => {
          const s = tlsConnect({ host: '127.0.0.1', port: haproxy.port, rejectUnauthorized: false }, () => {
            s.destroy();
            resolve(true);
          });
          s.once('error', () => resolve(false));
        }),
      60_000,
      250,
    );
  }, 120_000);

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    await haproxy?.stop();
    await dir?.cleanup();
  });

  it('an agent enrolls and connects through haproxy; nodes show, the audit log and the log name its own address', async () => {
    const url = `https://127.0.0.1:${haproxy.port}`;
    const t = await createToken(server.dataDir);
    const stateDir = join(dir.path, 'agent');
    const enrolled = await cli(['agent', 'enroll', '--server', url, '--token', t.token, '--ca-pin', server.caPin, '--state-dir', stateDir, '--hostname', 'behind-haproxy', '--json']);
    expect(enrolled.code, enrolled.stderr).toBe(0);
    const { nodeId } = JSON.parse(enrolled.stdout) as { nodeId: string };

    agent = spawnCli(['agent', 'run', '--state-dir', stateDir]);
    await agent.waitForLog('connected', 60_000);
    await waitFor('the node online', async () => (await listNodes(server.dataDir)).find((n) => n.id === nodeId && n.online), 30_000);

    // nodes show: the observed address is the agent's, not haproxy's.
    const shown = await waitFor('the observed address', async () => {
      const r = await cli(['server', 'nodes', 'show', nodeId, '--data-dir', server.dataDir, '--json']);
      if (r.code !== 0) return null;
      const node = JSON.parse(r.stdout) as { mesh?: { observedAddress?: string | null } };
      return node.mesh?.observedAddress ? node : null;
    });
    expect(shown.mesh!.observedAddress).toBe('127.0.0.1');

    // The audit log: the enrollment, with the address it came from.
    const audit = await cli(['server', 'audit', '--data-dir', server.dataDir, '--json']);
    expect(audit.code, audit.stderr).toBe(0);
    const record = (JSON.parse(audit.stdout) as Array<{ operation: string; nodeId: string | null; details: Record<string, unknown> | null }>).find((a) => a.operation === 'enroll' && a.nodeId === nodeId);
    expect(record?.details).toMatchObject({ remoteAddress: '127.0.0.1', tokenId: expect.any(String) });

    // The server's log: the agent's connection from its address, through haproxy's.
    const connected = await server.waitForLog('agent connected');
    expect(connected).toMatchObject({ nodeId, remoteAddress: '127.0.0.1', via: HAPROXY_SOURCE });
    const enrolledLog = await server.waitForLog('node enrolled');
    expect(enrolledLog).toMatchObject({ nodeId, remoteAddress: '127.0.0.1' });
    expect(server.output()).not.toContain(`"remoteAddress":"${HAPROXY_SOURCE}"`);
    // haproxy's health checks (LOCAL headers, every second) were never refused.
    expect(server.output()).not.toMatch(/PROXY v1|no valid PROXY v2 header|no complete PROXY header|accepted only from/);
  }, 120_000);

  it('a connection straight to the server (from an address not listed, without a header) is closed and logged', async () => {
    await expect(httpsRequest(`https://127.0.0.1:${serverPort}/healthz`, { ca: '', timeoutMs: 10_000 })).rejects.toThrow();
    const log = await server.waitForLog(/a PROXY header is accepted only from --proxy-protocol-from/);
    expect(log).toMatchObject({ peer: '127.0.0.1' });
  }, 60_000);

  it('the flags: --proxy-protocol-from needs --proxy-protocol, and takes only addresses or networks', async () => {
    const data = join(dir.path, 'refused');
    const alone = await cli(['server', 'start', '--data-dir', data, '--listen', '127.0.0.1:0', '--proxy-protocol-from', '10.0.0.5']);
    expect(alone.code).toBe(2);
    expect(alone.stderr).toContain('--proxy-protocol-from (proxyProtocolFrom) needs --proxy-protocol');
    const bad = await cli(['server', 'start', '--data-dir', data, '--listen', '127.0.0.1:0', '--proxy-protocol', '--proxy-protocol-from', '10.0.0.5,10.0.0.0/33']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('ML_ERR_CONFIG');
    expect(bad.stderr).toContain('an IPv4 or IPv6 address or network');
  }, 60_000);
});
