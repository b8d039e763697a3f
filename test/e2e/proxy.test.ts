import { generateKeyPairSync } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AgentRunner } from '../../src/agent/connection.js';
import { AGENT_EXIT_CODES } from '../../src/agent/config.js';
import { createCsrPem, generateAgentKeyPair } from '../../src/agent/csr.js';
import { enroll } from '../../src/agent/enroll.js';
import { loadIdentity, saveRenewedCertificate } from '../../src/agent/identity.js';
import { resolveProxyConfig } from '../../src/agent/proxy.js';
import { parseServerConfig } from '../../src/server/config.js';
import { createEnrollmentToken } from '../../src/server/nodes.js';
import { startServer } from '../../src/server/server.js';
import { createLogger } from '../../src/util/logger.js';
import { AdminClient } from '../../src/admin-api/client.js';
import { setUpgrade } from '../../src/admin-api/routes.js';
import { rawEd25519PublicKeyOf } from '../../src/contract/ed25519.js';
import { releaseKeyText, signRelease } from '../../src/contract/release.js';
import { openFeatureContext } from '../../src/agent/feature.js';
import { opsAgentFeature } from '../../src/agent/ops/index.js';
import { openAgentLog } from '../../src/agent/state/log-file.js';
import { startTestServer } from '../server/helpers.js';
import { cli, createToken, enrollAgent, freePort, listNodes, spawnCli, startServerProc, tempDir, waitFor, type CliResult, type Proc, type ServerProc } from './harness.js';
import { startTinyproxy, TINYPROXY_MISSING, type Tinyproxy } from './tinyproxy.js';

/**
 * Agents through a real CONNECT proxy (tinyproxy), through the real CLI: enrollment, the
 * connection and its in-band renewal, the HTTPS renewal of an expired certificate, NO_PROXY, a
 * proxy that refuses the server's port, Basic authentication, and a proxy that is down at first.
 * Everything on loopback; every wait is for a condition, bounded.
 */

// The machine's own proxy settings must not leak into these agents: empty values count as unset.
const CLEAN: NodeJS.ProcessEnv = { HTTPS_PROXY: '', https_proxy: '', ALL_PROXY: '', all_proxy: '', NO_PROXY: '', no_proxy: '' };

if (TINYPROXY_MISSING !== null && process.env.CI) {
  it('tinyproxy is installed (CI installs it in .ci/run)', () => {
    throw new Error(TINYPROXY_MISSING ?? "");
  });
}

describe.skipIf(TINYPROXY_MISSING !== null)(`agents through an HTTPS proxy (tinyproxy)${TINYPROXY_MISSING ? ` (skipped: ${TINYPROXY_MISSING})` : ''}`, () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let serverPort: number;
  const cleanups: Array<() => Promise<unknown>> = [];

  beforeAll(async () => {
    dir = await tempDir('ml-proxy-');
    serverPort = await freePort();
    // 60-second certificates: the agent renews in-band about 30 s after it got one.
    server = await startServerProc(join(dir.path, 'server'), serverPort, ['--cert-lifetime', '60s']);
  }, 90_000);

  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  afterAll(async () => {
    await server?.stop();
    await dir?.cleanup();
  });

  const target = (): string => `127.0.0.1:${serverPort}`;

  async function proxy(options: Parameters<typeof startTinyproxy>[1] = {}): Promise<Tinyproxy> {
    const p = await startTinyproxy(dir.path, options);
    cleanups.push(() => p.stop());
    return p;
  }

  function runAgent(stateDir: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): Proc {
    const agent = spawnCli(['agent', 'run', '--state-dir', stateDir, ...args], { ...CLEAN, ...env });
    cleanups.push(() => agent.stop());
    return agent;
  }

  async function enrollVia(stateDir: string, hostname: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
    const t = await createToken(server.dataDir);
    return cli(['agent', 'enroll', '--server', server.url, '--token', t.token, '--ca-pin', server.caPin, '--state-dir', stateDir, '--hostname', hostname, '--json', ...args], {
      ...CLEAN,
      ...env,
    });
  }

  const online = (nodeId: string) => waitFor(`node ${nodeId} online`, async () => (await listNodes(server.dataDir)).find((n) => n.id === nodeId && n.online), 30_000);

  async function status(stateDir: string): Promise<Record<string, unknown>> {
    const r = await cli(['agent', 'status', '--state-dir', stateDir, '--json'], CLEAN);
    expect(r.code).toBe(0);
    return JSON.parse(r.stdout) as Record<string, unknown>;
  }

  it('enrolls, runs and renews in-band through the proxy; status shows it as host:port', async () => {
    const p = await proxy();
    const stateDir = join(dir.path, 'via-flag');
    const r = await enrollVia(stateDir, 'via-flag', ['--proxy', p.url]);
    expect(r.code, r.stderr).toBe(0);
    const { nodeId } = JSON.parse(r.stdout) as { nodeId: string };
    // GET /v1/ca and POST /v1/enroll, each through its own tunnel to the server's port.
    expect((await p.connects()).filter((t) => t === target()).length).toBeGreaterThanOrEqual(2);

    // The CA pin is checked on what came through the tunnel, as without a proxy.
    const wrongPin = await cli(['agent', 'enroll', '--server', server.url, '--token', 'unused-token-123', '--ca-pin', `sha256:${'0'.repeat(64)}`, '--state-dir', join(dir.path, 'wrong-pin'), '--proxy', p.url], CLEAN);
    expect(wrongPin.code).toBe(4);
    expect(wrongPin.stderr).toContain('ML_ERR_CA_PIN_MISMATCH');

    const afterEnroll = (await p.connects()).length;
    const agent = runAgent(stateDir, ['--proxy', p.url]);
    await agent.waitForLog('connected');
    const first = await online(nodeId);
    expect((await p.connects()).length).toBeGreaterThan(afterEnroll);
    expect((await p.connects()).every((t) => t === target())).toBe(true);

    const s = await status(stateDir);
    expect(s.proxy).toEqual({ address: `127.0.0.1:${p.port}`, source: '--proxy' });
    const text = await cli(['agent', 'status', '--state-dir', stateDir], CLEAN);
    expect(text.stdout).toContain(`proxy:        127.0.0.1:${p.port} (from --proxy)`);

    // The in-band renewal opens its new connection (make before break) through a new tunnel.
    const beforeRenewal = (await p.connects()).length;
    await agent.waitForLog('certificate renewed; switching connections', 75_000);
    await waitFor('the renewed connection tunnelled', async () => (await p.connects()).length > beforeRenewal, 30_000);
    const renewed = await waitFor('the node online with its new certificate', async () => {
      const row = (await listNodes(server.dataDir)).find((n) => n.id === nodeId);
      return row?.online && row.certSerial !== first.certSerial ? row : null;
    });
    expect(renewed.online).toBe(true);
    expect(agent.output()).not.toContain('connection attempt failed');
  }, 150_000);

  it('renews an expired certificate over HTTPS (POST /v1/renew) through the proxy', async () => {
    const p = await proxy();
    const quiet = createLogger({ name: 'test', level: 'silent' });
    const local = await startServer(
      parseServerConfig({ dataDir: join(dir.path, 'expired-server'), listen: { host: '127.0.0.1', port: 0 }, caKeyType: 'rsa2048', renewGraceMs: 86_400_000, logLevel: 'silent' }),
      { logger: quiet },
    );
    cleanups.push(() => local.close());
    const stateDir = join(dir.path, 'expired-agent');
    const token = await createEnrollmentToken(local.store, { ttlMs: 60_000 });
    const proxyConfig = resolveProxyConfig(p.url, {});
    const { identity } = await enroll({ server: local.publicUrl, token: token.token, caPins: [local.caPin], stateDir, hostname: 'expired-host' }, { proxy: proxyConfig });
    // As if the host had been off for a day: a certificate that expired an hour ago.
    const keys = await generateAgentKeyPair();
    const hourAgo = Date.now() - 3_600_000;
    const issued = await local.enrollment.issueNodeCertificate(identity.nodeId, createCsrPem(keys, { hostname: 'expired-host', sans: [] }), {
      validity: { notBefore: new Date(hourAgo - 86_400_000), notAfter: new Date(hourAgo) },
    });
    await saveRenewedCertificate(stateDir, keys.privateKeyPem, issued.certificate);
    const expiredSerial = (await loadIdentity(stateDir)).cert.serial;

    const localPort = new URL(local.publicUrl).port;
    const before = (await p.connects()).length;
    const runner = new AgentRunner({ stateDir, logger: quiet, backoff: { baseMs: 50 }, proxy: proxyConfig });
    const connected = new Promise<void>((r) => runner.once('connected', () => r()));
    const done = runner.run();
    await connected;
    expect(runner.identity!.cert.serial).not.toBe(expiredSerial);
    expect(runner.identity!.cert.notAfter.getTime()).toBeGreaterThan(Date.now());
    expect(local.sessions!.isOnline(identity.nodeId)).toBe(true);
    // The refused dial, POST /v1/renew and the new connection: all through the proxy.
    const tunnels = (await p.connects()).slice(before);
    expect(tunnels.length).toBeGreaterThanOrEqual(3);
    expect(tunnels.every((t) => t === `127.0.0.1:${localPort}`)).toBe(true);
    runner.stop();
    expect(await done).toBe(AGENT_EXIT_CODES.ok);
  }, 60_000);

  it('downloads an agent upgrade through the proxy, with its mTLS identity', async () => {
    const p = await proxy();
    // A release key the server checks and the agent pins; the new build speaks the trial protocol.
    const { privateKey } = generateKeyPairSync('ed25519');
    const releaseKey = releaseKeyText(rawEd25519PublicKeyOf(privateKey));
    const ts = await startTestServer({ releaseKeys: [releaseKey] });
    cleanups.push(() => ts.stop());
    const stateDir = join(dir.path, 'upgrade-agent');
    const bundle = join(dir.path, 'upgrade-bundle.mjs');
    const head = (v: string): string => `#!/usr/bin/env node\n// meshlink-agent-bundle version=${v}\n`;
    const v1 = `${head('0.1.0')}console.log("one");\n`;
    const v2 =
      `${head('2.0.0')}import { createHash } from 'node:crypto';\nimport { readFileSync } from 'node:fs';\n` +
      `process.send({ type: 'meshlink.upgrade.trial', state: 'connected', buildId: createHash('sha256').update(readFileSync(process.argv[1])).digest('hex') });\n` +
      `process.on('SIGTERM', () => process.exit(0));\nsetInterval(() => {}, 1000);\n`;
    await writeFile(bundle, v1, { mode: 0o755 });
    const proxyConfig = resolveProxyConfig(p.url, {});
    const { token } = await createEnrollmentToken(ts.server.store, { ttlMs: 60_000 });
    const { identity } = await enroll({ server: ts.url, token, caPins: [ts.server.caPin], stateDir, hostname: 'upgrade-host' }, { proxy: proxyConfig });
    const { logger, file: logFile } = openAgentLog(stateDir, 'info', { stdout: false });
    const runner = new AgentRunner({ stateDir, logger, backoff: { baseMs: 50, maxMs: 500 }, proxy: proxyConfig });
    const core = openFeatureContext(runner, { stateDir, logger, logFile });
    let restarts = 0;
    const ops = await opsAgentFeature(runner, {
      ...core.context,
      options: { bundlePath: bundle, releaseKeys: [releaseKey] },
      restart: () => restarts++,
      trialCommand: (file) => ({ command: process.execPath, args: [file] }),
    });
    const running = runner.run();
    cleanups.push(async () => {
      runner.stop();
      await running.catch(() => {});
      ops.close();
      core.close();
    });
    await waitFor('agent online', async () => ts.server.sessions?.current(identity.nodeId) !== undefined);
    const beforeDownload = (await p.connects()).length;

    const manifest = signRelease(Buffer.from(v2), privateKey, rawEd25519PublicKeyOf(privateKey));
    const r = await new AdminClient(ts.server.adminSocketPath, { actor: 't' }).call(setUpgrade, { percent: 100, manifest: JSON.stringify(manifest) }, { body: Buffer.from(v2) });
    expect(r.notified).toBe(1);
    await waitFor('upgrade applied', async () => restarts === 1);
    expect(await readFile(bundle, 'utf8')).toBe(v2);
    // The download went through its own tunnel to the server's port.
    const tunnels = (await p.connects()).slice(beforeDownload);
    expect(tunnels).toContain(`127.0.0.1:${new URL(ts.url).port}`);
  }, 60_000);

  it('takes HTTPS_PROXY from the environment, and NO_PROXY sends the agent direct', async () => {
    const p = await proxy();
    const stateDir = join(dir.path, 'no-proxy');
    const r = await enrollVia(stateDir, 'no-proxy', [], { HTTPS_PROXY: p.url });
    expect(r.code, r.stderr).toBe(0);
    const { nodeId } = JSON.parse(r.stdout) as { nodeId: string };
    const seen = (await p.connects()).length;
    expect(seen).toBeGreaterThanOrEqual(2);

    for (const noProxy of ['127.0.0.0/8', `127.0.0.1:${serverPort}`, '*']) {
      const agent = runAgent(stateDir, [], { HTTPS_PROXY: p.url, NO_PROXY: `mesh.example, ${noProxy}` });
      await agent.waitForLog('connected');
      await online(nodeId);
      expect((await status(stateDir)).proxy).toBeNull();
      await agent.stop();
    }
    const text = await cli(['agent', 'status', '--state-dir', stateDir], CLEAN);
    expect(text.stdout).toContain('proxy:        none (direct)');
    expect((await p.connects()).length).toBe(seen);
  }, 90_000);

  it('a proxy that allows CONNECT only to port 443 gives ML_ERR_PROXY_REFUSED with its status line; the agent backs off', async () => {
    const p = await proxy({ connectPorts: [443] });
    const r = await enrollVia(join(dir.path, 'refused-enroll'), 'refused-enroll', ['--proxy', p.url]);
    expect(r.code).toBe(6);
    expect(r.stderr).toContain(`ML_ERR_PROXY_REFUSED: the proxy 127.0.0.1:${p.port} refused CONNECT ${target()}: 403`);

    const stateDir = join(dir.path, 'refused-run');
    await enrollAgent(server, stateDir, 'refused-run');
    const agent = runAgent(stateDir, ['--proxy', p.url]);
    const failed = await agent.waitForLog('connection attempt failed');
    expect(failed.err).toMatchObject({ code: 'ML_ERR_PROXY_REFUSED' });
    expect(String((failed.err as { message: string }).message)).toContain('403 Access violation');
    await agent.waitForLog('reconnecting after backoff');
    const s = await waitFor('status in backoff', async () => {
      const st = await status(stateDir);
      return (st.connection as { state: string }).state === 'backoff' ? st : null;
    });
    expect((s.connection as { lastError: { code: string } }).lastError.code).toBe('ML_ERR_PROXY_REFUSED');
  }, 60_000);

  it('Basic authentication: the right password gets through, a wrong one is ML_ERR_PROXY_AUTH; neither is ever printed', async () => {
    const p = await proxy({ basicAuth: { user: 'agent', password: 'right-pw-123' } });
    const right = `http://agent:right-pw-123@127.0.0.1:${p.port}`;
    const wrong = `http://agent:wrong-pw-456@127.0.0.1:${p.port}`;
    const stateDir = join(dir.path, 'auth');

    const bad = await enrollVia(stateDir, 'auth', ['--proxy', wrong]);
    expect(bad.code).toBe(6);
    expect(bad.stderr).toContain('ML_ERR_PROXY_AUTH');
    expect(bad.stderr + bad.stdout).not.toContain('wrong-pw-456');
    const none = await enrollVia(stateDir, 'auth', ['--proxy', p.url]);
    expect(none.stderr).toMatch(/ML_ERR_PROXY_AUTH: .*\(407\): the proxy URL carries no credentials/);

    const good = await enrollVia(stateDir, 'auth', ['--proxy', right]);
    expect(good.code, good.stderr).toBe(0);
    const { nodeId } = JSON.parse(good.stdout) as { nodeId: string };

    const refused = runAgent(stateDir, ['--proxy', wrong, '--log-level', 'debug']);
    const failed = await refused.waitForLog('connection attempt failed');
    expect(failed.err).toMatchObject({ code: 'ML_ERR_PROXY_AUTH' });
    // tinyproxy answers wrong credentials with 401 (no credentials at all: 407); the status line is the proxy's.
    expect(String((failed.err as { message: string }).message)).toContain('(401 Unauthorized): the proxy rejected the credentials');
    await refused.stop();
    expect(refused.output()).not.toContain('wrong-pw-456');

    const agent = runAgent(stateDir, ['--log-level', 'debug'], { HTTPS_PROXY: right });
    await agent.waitForLog('connected');
    await online(nodeId);
    const s = await status(stateDir);
    expect(s.proxy).toEqual({ address: `127.0.0.1:${p.port}`, source: 'HTTPS_PROXY' });
    expect(JSON.stringify(s)).not.toContain('right-pw-123');
    expect(agent.output()).not.toContain('right-pw-123');
    expect(agent.output()).toContain(`"proxy":"127.0.0.1:${p.port}"`);
  }, 90_000);

  it('proxy down: ML_ERR_PROXY_UNREACHABLE, backoff, then online once the proxy starts', async () => {
    const port = await freePort();
    const down = `http://127.0.0.1:${port}`;
    const r = await enrollVia(join(dir.path, 'down-enroll'), 'down-enroll', ['--proxy', down]);
    expect(r.code).toBe(6);
    expect(r.stderr).toContain(`ML_ERR_PROXY_UNREACHABLE: cannot reach the proxy 127.0.0.1:${port}`);

    const stateDir = join(dir.path, 'down-run');
    const { nodeId } = await enrollAgent(server, stateDir, 'down-run');
    const agent = runAgent(stateDir, ['--proxy', down]);
    const failed = await agent.waitForLog('connection attempt failed');
    expect(failed.err).toMatchObject({ code: 'ML_ERR_PROXY_UNREACHABLE' });
    await agent.waitForLog('reconnecting after backoff');

    const p = await proxy({ port });
    await agent.waitForLog('connected', 90_000);
    await online(nodeId);
    expect(await p.connects()).toContain(target());
  }, 120_000);
});
