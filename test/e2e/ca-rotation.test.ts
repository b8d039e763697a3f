import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CaStatus } from '../../src/admin-api/routes.js';
import { cli, createToken, enrollAgent, freePort, listNodes, spawnCli, startServerProc, tempDir, waitFor, type Proc, type ServerProc } from './harness.js';

/**
 * `meshlink server ca rotate start|issue|retire` end to end (docs/SERVER.md, "Rotating the CA"): real
 * server and agent processes of the real CLI on loopback, 60-second client certificates so that agents
 * renew by themselves about 30 s after they got one. Sequential: each step builds on the previous one.
 *
 * - A: enrolled and running on the old CA before `start`; must stay online (never reconnecting with
 *   backoff) across start → issue, renew in-band onto a certificate of the new CA.
 * - D: enrolled on the old CA before `start`, first run after `issue`: it never got the bundle, so the
 *   new-CA server certificate is refused (the documented reason to issue only once every node has
 *   connected since `start`); removed, it no longer blocks retire.
 * - B (`--ca-pin old,new`) and C (`--ca-pin new`): enrolled after `issue`.
 * Then retire succeeds, and after a server restart (only the new CA left) every agent reconnects.
 */

async function caStatus(dataDir: string): Promise<CaStatus> {
  const r = await cli(['server', 'ca', 'status', '--data-dir', dataDir, '--json']);
  if (r.code !== 0) throw new Error(`ca status failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as CaStatus;
}

async function rotate(dataDir: string, phase: string, extra: string[] = []): Promise<{ code: number; status: (CaStatus & { retiredPin?: string }) | null; stderr: string }> {
  const r = await cli(['server', 'ca', 'rotate', phase, '--data-dir', dataDir, '--json', ...extra]);
  return { code: r.code, status: r.code === 0 ? (JSON.parse(r.stdout) as CaStatus) : null, stderr: r.stderr };
}

/** The pins in the agent's identity.json and the CA certificates of its ca.pem. */
async function agentTrust(stateDir: string): Promise<{ caPins: string[]; cas: X509Certificate[]; cert: X509Certificate }> {
  const identity = JSON.parse(await readFile(join(stateDir, 'identity.json'), 'utf8')) as { caPins: string[] };
  const caPem = await readFile(join(stateDir, 'ca.pem'), 'utf8');
  const cas = (caPem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []).map((b) => new X509Certificate(b));
  return { caPins: identity.caPins, cas, cert: new X509Certificate(await readFile(join(stateDir, 'cert.pem'), 'utf8')) };
}

const renewals = (p: Proc): number => p.output().split('\n').filter((l) => l.includes('certificate renewed; switching connections')).length;

describe('CA rotation: start → issue → retire with live agents (real processes, real TLS, real SQLite)', () => {
  const dirs: Array<{ path: string; cleanup(): Promise<void> }> = [];
  let port: number;
  let server: ServerProc;
  let dataDir: string;
  const agents: Record<string, { stateDir: string; nodeId: string; proc?: Proc }> = {};
  let oldPin: string;
  let newPin: string;
  const serverArgs = ['--cert-lifetime', '60s', '--log-level', 'debug'];

  const stateDirFor = async (name: string): Promise<string> => {
    const d = await tempDir(`ml-e2e-carot-${name}-`);
    dirs.push(d);
    return d.path;
  };
  const run = (name: string): Proc => {
    const a = agents[name]!;
    a.proc = spawnCli(['agent', 'run', '--state-dir', a.stateDir, '--log-level', 'debug']);
    return a.proc;
  };
  const online = async (name: string): Promise<boolean> => (await listNodes(dataDir)).some((n) => n.id === agents[name]!.nodeId && n.online);

  beforeAll(async () => {
    const d = await tempDir('ml-e2e-carot-srv-');
    dirs.push(d);
    dataDir = d.path;
    port = await freePort();
    server = await startServerProc(dataDir, port, serverArgs);
    oldPin = server.caPin;
    for (const name of ['A', 'D']) {
      const stateDir = await stateDirFor(name);
      const { nodeId } = await enrollAgent(server, stateDir, `carot-${name.toLowerCase()}`);
      agents[name] = { stateDir, nodeId };
    }
    run('A');
    await agents.A!.proc!.waitForLog('connected');
    await waitFor('A online', () => online('A'));
  }, 120_000);

  afterAll(async () => {
    for (const a of Object.values(agents)) await a.proc?.stop('SIGKILL');
    await server?.stop('SIGKILL');
    for (const d of dirs) await d.cleanup();
  });

  it('status before a rotation: one CA, every node on it; issue and retire are refused out of order', async () => {
    const s = await caStatus(dataDir);
    expect(s).toMatchObject({ phase: 'none', next: null, current: { pin: oldPin, nodes: 2 } });
    const issue = await rotate(dataDir, 'issue');
    expect(issue.code).toBe(8);
    expect(issue.stderr).toContain('ML_ERR_CA_ROTATION_PHASE');
    expect((await rotate(dataDir, 'retire')).stderr).toContain('ML_ERR_CA_ROTATION_PHASE');
  });

  it('start then issue: A stays on its session; the server certificate now comes from the new CA', async () => {
    const connectedBefore = agents.A!.proc!.output().split('\n').filter((l) => l.includes('"msg":"connected"')).length;
    const renewalsBefore = renewals(agents.A!.proc!);
    const started = await rotate(dataDir, 'start');
    expect(started.code, started.stderr).toBe(0);
    expect(started.status).toMatchObject({ phase: 'started', current: { pin: oldPin, nodes: 2 }, next: { nodes: 0 } });
    newPin = started.status!.next!.pin;
    expect(newPin).not.toBe(oldPin);
    expect((await rotate(dataDir, 'start')).stderr).toContain('ML_ERR_CA_ROTATION_PHASE');
    // A, connected before start, gets the bundle on its open session (ca.bundle) and pins both CAs.
    await agents.A!.proc!.waitForLog('the server changed its CA bundle; trusting it from now on', 30_000);
    expect((await agentTrust(agents.A!.stateDir)).caPins.sort()).toEqual([oldPin, newPin].sort());
    const issuing = await rotate(dataDir, 'issue');
    expect(issuing.code, issuing.stderr).toBe(0);
    expect(issuing.status).toMatchObject({ phase: 'issuing', current: { pin: oldPin }, next: { pin: newPin } });
    await server.waitForLog(/server certificate rotated/);
    // The same session (no new "connected" unless a renewal switched connections, make before break).
    expect(await online('A')).toBe(true);
    const connectedAfter = agents.A!.proc!.output().split('\n').filter((l) => l.includes('"msg":"connected"')).length;
    expect(connectedAfter - connectedBefore).toBe(renewals(agents.A!.proc!) - renewalsBefore);
    // GET /v1/ca now serves the new CA, so enrollment commands name its pin.
    expect((await createToken(dataDir)).caPin).toBe(newPin);
  }, 60_000);

  it('retire is refused while live nodes hold old-CA certificates, and names them', async () => {
    const r = await rotate(dataDir, 'retire');
    expect(r.code).toBe(8);
    expect(r.stderr).toContain('ML_ERR_CA_RETIRE_BLOCKED');
    // D (not running) surely holds an old-CA certificate; A may have renewed already (60-second certificates).
    expect(r.stderr).toContain('carot-d');
    expect(r.stderr).toContain(agents.D!.nodeId);
    expect((await caStatus(dataDir)).phase).toBe('issuing');
  });

  it('D, stopped during start and issue, is refused by the new-CA server certificate (why the docs say: issue once every node has connected)', async () => {
    expect((await agentTrust(agents.D!.stateDir)).caPins).toEqual([oldPin]);
    run('D');
    await agents.D!.proc!.waitForLog('connection attempt failed', 30_000);
    expect(await online('D')).toBe(false);
    await agents.D!.proc!.stop('SIGKILL');
    delete agents.D!.proc;
    // Removed, it no longer blocks retire.
    expect((await cli(['server', 'nodes', 'remove', agents.D!.nodeId, '--data-dir', dataDir])).code).toBe(0);
    delete agents.D;
  }, 60_000);

  it('B (--ca-pin old,new) and C (--ca-pin new) enroll after issue and get new-CA certificates', async () => {
    for (const [name, pins] of [['B', `${oldPin},${newPin}`], ['C', newPin]] as const) {
      const stateDir = await stateDirFor(name);
      const t = await createToken(dataDir);
      const r = await cli(['agent', 'enroll', '--server', server.url, '--token', t.token, '--ca-pin', pins, '--state-dir', stateDir, '--hostname', `carot-${name.toLowerCase()}`, '--json']);
      expect(r.code, r.stderr).toBe(0);
      agents[name] = { stateDir, nodeId: (JSON.parse(r.stdout) as { nodeId: string }).nodeId };
      const trust = await agentTrust(stateDir);
      const newCa = trust.cas.find((ca) => ca.checkIssued(ca) && trust.cert.checkIssued(ca) && trust.cert.verify(ca.publicKey));
      expect(newCa, `${name}'s certificate is signed by a CA in its ca.pem`).toBeDefined();
      expect(trust.caPins).toContain(newPin);
      run(name);
      await agents[name]!.proc!.waitForLog('connected', 30_000);
      await waitFor(`${name} online`, () => online(name));
    }
    const s = await caStatus(dataDir);
    expect(s.next!.nodes).toBeGreaterThanOrEqual(2);
  }, 90_000);

  it('A renews onto the new CA without going offline; then retire succeeds', async () => {
    let offline = 0;
    let status = await caStatus(dataDir);
    // Done when the server counts every node on the new CA *and* A holds its new certificate: the
    // server commits a renewal before A has verified and stored the answer (and logged it), so the
    // server's count alone can run ahead of A.
    const aOnNewCa = async (): Promise<boolean> => {
      if (renewals(agents.A!.proc!) < 1 || !status.next) return false;
      const t = await agentTrust(agents.A!.stateDir);
      const ca = t.cas.find((c) => c.fingerprint256 === status.next!.fingerprint256);
      return ca !== undefined && t.cert.verify(ca.publicKey);
    };
    const deadline = Date.now() + 100_000;
    while (Date.now() < deadline && !(status.current.nodes === 0 && status.next?.nodes === 3 && (await aOnNewCa()))) {
      if (!(await online('A'))) offline++;
      await new Promise((r) => setTimeout(r, 500));
      status = await caStatus(dataDir);
    }
    expect(status).toMatchObject({ phase: 'issuing', current: { pin: oldPin, nodes: 0 }, next: { pin: newPin, nodes: 3 } });
    expect(offline).toBe(0);
    expect(renewals(agents.A!.proc!), `A's output:\n${agents.A!.proc!.output().slice(-12000)}`).toBeGreaterThanOrEqual(1);
    expect(agents.A!.proc!.output()).not.toContain('reconnecting after backoff');
    const trustA = await agentTrust(agents.A!.stateDir);
    expect(trustA.caPins.sort()).toEqual([oldPin, newPin].sort());
    const newCa = trustA.cas.find((ca) => ca.fingerprint256 === status.next!.fingerprint256)!;
    expect(trustA.cert.verify(newCa.publicKey)).toBe(true);

    const retired = await rotate(dataDir, 'retire');
    expect(retired.code, retired.stderr).toBe(0);
    expect(retired.status).toMatchObject({ phase: 'none', next: null, current: { pin: newPin, nodes: 3 }, retiredPin: oldPin });
    expect((await createToken(dataDir)).caPin).toBe(newPin);
    const audit = await cli(['server', 'audit', '--data-dir', dataDir, '--json']);
    expect(audit.code, audit.stderr).toBe(0);
    const rows = (JSON.parse(audit.stdout) as Array<{ operation: string; result: string; target: string | null }>).filter((r) => r.operation === 'server/ca/rotate');
    expect(rows).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ result: 'ok', target: expect.stringContaining(`next ${newPin}`) }),
        expect.objectContaining({ result: 'error:ML_ERR_CA_RETIRE_BLOCKED' }),
        expect.objectContaining({ result: 'ok', target: expect.stringContaining(`retired ${oldPin}`) }),
      ]),
    );
  }, 130_000);

  it('after a server restart with only the new CA every agent reconnects and drops the old CA', async () => {
    expect(await server.stop('SIGTERM'), `server output:\n${server.output().slice(-8000)}`).toBe(0);
    server = await startServerProc(dataDir, port, serverArgs);
    expect(server.caPin).toBe(newPin);
    for (const name of ['A', 'B', 'C']) await waitFor(`${name} online after restart`, () => online(name), 60_000);
    expect(await caStatus(dataDir)).toMatchObject({ phase: 'none', current: { pin: newPin }, next: null });
    for (const name of ['A']) {
      await waitFor(`${name} trusts only the new CA`, async () => {
        const t = await agentTrust(agents[name]!.stateDir);
        return t.caPins.length === 1 && t.caPins[0] === newPin && t.cas.length === 1;
      });
    }
  }, 120_000);
});
