import { X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { EnrollError, enroll, renewViaHttps } from '../../src/agent/enroll.js';
import { loadIdentity } from '../../src/agent/identity.js';
import { spkiPinOf } from '../../src/contract/ca-pin.js';
import { startEnrollServer, type EnrollServer } from './helpers/enroll-server.js';
import { createTestCa, tempDirs } from './helpers/fixtures.js';

const TOKEN = 'tok_ABCDEFGHIJKLMNOPQRSTUV';

describe('enroll against a real HTTPS server implementing the contract', () => {
  const dirs = tempDirs();
  let server: EnrollServer;
  let tokenSeq = 0;

  beforeAll(async () => {
    server = await startEnrollServer();
  });
  afterAll(async () => {
    await server.close();
    dirs.cleanup();
  });
  afterEach(() => {
    server.misbehave = 'none';
    server.certLifetimeMs = 30 * 86_400_000;
    server.requests.length = 0;
  });

  function freshToken(nodeId: string | null = null): string {
    const token = `${TOKEN}-${++tokenSeq}`;
    server.addToken(token, nodeId);
    return token;
  }

  function baseOptions(stateDir: string, token = freshToken()) {
    return { server: server.url, token, caPins: [server.caPin], stateDir, hostname: 'agent-1.example', sans: ['10.9.8.7'] };
  }

  it('happy path: pins the CA, redeems the token, writes a verified identity', async () => {
    const stateDir = join(dirs.make(), 'state');
    const { identity, caPin } = await enroll(baseOptions(stateDir));
    expect(caPin).toBe(server.caPin);
    expect(identity.nodeId).toMatch(/^node-[0-9a-f]{12}$/);
    expect(identity.server).toBe(server.url);
    expect(identity.hostname).toBe('agent-1.example');
    expect(identity.sans).toEqual(['10.9.8.7']);

    // What the server received: the CSR for the hostname, and the token only on the pinned connection.
    const post = server.requests.find((r) => r.path === '/v1/enroll');
    const body = JSON.parse(post!.body) as { token: string; csr: string; hostname: string; agentVersion: string };
    expect(body.hostname).toBe('agent-1.example');
    expect(body.csr).toContain('BEGIN CERTIFICATE REQUEST');
    expect(server.requests.map((r) => r.path)).toEqual(['/v1/ca', '/v1/enroll']);

    // Files on disk match what load returns, the cert chains to the CA and carries our key.
    const loaded = await loadIdentity(stateDir);
    expect(loaded).toEqual(identity);
    const cert = new X509Certificate(readFileSync(join(stateDir, 'cert.pem')));
    expect(cert.verify(new X509Certificate(server.ca.certPem).publicKey)).toBe(true);
    expect(cert.checkPrivateKey((await import('node:crypto')).createPrivateKey(readFileSync(join(stateDir, 'key.pem'))))).toBe(true);
    expect(statSync(join(stateDir, 'key.pem')).mode & 0o777).toBe(0o600);
    expect(statSync(stateDir).mode & 0o777).toBe(0o700);
    expect(spkiPinOf(readFileSync(join(stateDir, 'ca.pem'), 'utf8'))).toBe(server.caPin);
  });

  it('wrong pin: ML_ERR_CA_PIN_MISMATCH naming the seen pin, token never sent, nothing written', async () => {
    const parent = dirs.make();
    const stateDir = join(parent, 'state');
    const other = await createTestCa();
    const err = await enroll({ ...baseOptions(stateDir), caPins: [spkiPinOf(other.certPem)] }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ML_ERR_CA_PIN_MISMATCH' });
    expect((err as Error).message).toContain(server.caPin);
    expect(server.requests.map((r) => r.path)).toEqual(['/v1/ca']);
    expect(existsSync(stateDir)).toBe(false);
    expect(readdirSync(parent)).toEqual([]);
  });

  it('accepts any one of several pins (CA rotation)', async () => {
    const other = await createTestCa();
    const { caPin } = await enroll({ ...baseOptions(dirs.make()), caPins: [spkiPinOf(other.certPem), server.caPin] });
    expect(caPin).toBe(server.caPin);
  });

  it('already enrolled: refused with ML_ERR_ALREADY_ENROLLED before any network call; --force replaces', async () => {
    const stateDir = dirs.make();
    const first = await enroll(baseOptions(stateDir));
    server.requests.length = 0;
    await expect(enroll(baseOptions(stateDir))).rejects.toMatchObject({ code: 'ML_ERR_ALREADY_ENROLLED' });
    expect(server.requests).toEqual([]);
    expect((await loadIdentity(stateDir)).nodeId).toBe(first.identity.nodeId);

    const second = await enroll({ ...baseOptions(stateDir), force: true });
    expect(second.identity.nodeId).not.toBe(first.identity.nodeId);
    expect((await loadIdentity(stateDir)).nodeId).toBe(second.identity.nodeId);
  });

  it('re-enrollment with a token bound to the node id keeps the node id', async () => {
    const stateDir = dirs.make();
    const first = await enroll(baseOptions(stateDir));
    const again = await enroll({ ...baseOptions(stateDir, freshToken(first.identity.nodeId)), force: true });
    expect(again.identity.nodeId).toBe(first.identity.nodeId);
    expect(again.identity.cert.serial).not.toBe(first.identity.cert.serial);
  });

  it('401 maps to a typed EnrollError carrying the server code; a used token is refused the same way', async () => {
    const stateDir = dirs.make();
    const err = await enroll({ ...baseOptions(stateDir), token: 'never-issued-token' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EnrollError);
    expect(err).toMatchObject({ code: 'ML_ERR_TOKEN_INVALID', status: 401 });
    expect((err as Error).message).toContain('token unknown, used or expired');
    expect((err as Error).message).not.toContain('never-issued-token');
    expect(readdirSync(stateDir)).toEqual([]);

    const token = freshToken();
    await enroll(baseOptions(dirs.make(), token));
    await expect(enroll(baseOptions(dirs.make(), token))).rejects.toMatchObject({ code: 'ML_ERR_TOKEN_INVALID', status: 401 });
  });

  it('429 carries Retry-After; 500 without JSON maps to ML_ERR_SERVER', async () => {
    server.misbehave = 'rate-limit';
    await expect(enroll(baseOptions(dirs.make()))).rejects.toMatchObject({ code: 'ML_ERR_RATE_LIMITED', status: 429, retryAfterSeconds: 17 });
    server.misbehave = 'server-error';
    await expect(enroll(baseOptions(dirs.make()))).rejects.toMatchObject({ code: 'ML_ERR_SERVER', status: 500 });
  });

  it.each([
    ['wrong-key', /does not carry the public key we sent/],
    ['foreign-ca', /is not pinned/],
    ['unsigned-by-ca', /not signed by the returned CA/],
    ['huge-response', /exceeds \d+ bytes/],
  ] as const)('a server that misbehaves (%s) is refused with ML_ERR_ENROLL_RESPONSE and nothing written', async (mode, message) => {
    server.misbehave = mode;
    const stateDir = dirs.make();
    const err = await enroll(baseOptions(stateDir)).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ML_ERR_ENROLL_RESPONSE' });
    expect((err as Error).message).toMatch(message);
    expect(readdirSync(stateDir)).toEqual([]);
  });

  it('a server certificate not issued by the pinned CA fails TLS with ML_ERR_SERVER_TLS and the token is not sent', async () => {
    const impostorCa = await createTestCa('impostor');
    const impostor = await startEnrollServer({ serverCertCa: impostorCa });
    try {
      impostor.addToken(TOKEN);
      // The impostor serves the genuine pinned CA cert on /v1/ca but cannot present a cert from it.
      const err = await enroll({ server: impostor.url, token: TOKEN, caPins: [impostor.caPin], stateDir: dirs.make(), hostname: 'h.example' }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ML_ERR_SERVER_TLS' });
      expect(impostor.requests.map((r) => r.path)).toEqual(['/v1/ca']);
    } finally {
      await impostor.close();
    }
  });

  it('a server certificate without the dialled name fails host name verification', async () => {
    const narrow = await startEnrollServer({ serverNames: ['only-this.example'] });
    try {
      narrow.addToken(TOKEN);
      const err = await enroll({ server: narrow.url, token: TOKEN, caPins: [narrow.caPin], stateDir: dirs.make(), hostname: 'h.example' }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ML_ERR_SERVER_TLS' });
      expect((err as Error).message).toContain('ERR_TLS_CERT_ALTNAME_INVALID');
    } finally {
      await narrow.close();
    }
  });

  it('a server without /v1/ca is ML_ERR_CA_CERT and gets no token', async () => {
    server.misbehave = 'no-ca';
    const err = await enroll(baseOptions(dirs.make())).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ML_ERR_CA_CERT' });
    expect((err as Error).message).toContain('HTTP 404');
    expect(server.requests.map((r) => r.path)).toEqual(['/v1/ca']);
  });

  it('an unreachable server is ML_ERR_SERVER_UNREACHABLE', async () => {
    const closed = await startEnrollServer();
    const url = closed.url;
    await closed.close();
    await expect(enroll({ server: url, token: TOKEN, caPins: [closed.caPin], stateDir: dirs.make(), hostname: 'h.example', timeoutMs: 2000 }))
      .rejects.toMatchObject({ code: 'ML_ERR_SERVER_UNREACHABLE' });
  });

  it('a server that accepts the connection but never answers fails within the timeout', async () => {
    const sockets = new Set<Socket>();
    const silent = createNetServer((socket) => sockets.add(socket)); // TCP accept, then nothing (no TLS)
    await new Promise<void>((res) => silent.listen(0, '127.0.0.1', res));
    const port = (silent.address() as AddressInfo).port;
    try {
      const started = Date.now();
      const err = await enroll({ server: `https://127.0.0.1:${port}`, token: TOKEN, caPins: [server.caPin], stateDir: dirs.make(), hostname: 'h.example', timeoutMs: 700 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ML_ERR_SERVER_UNREACHABLE' });
      console.log(`silent server → ML_ERR_SERVER_UNREACHABLE after ${Date.now() - started} ms (timeout 700 ms)`); // a hang fails at the test timeout
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((res) => silent.close(() => res()));
    }
  });

  it('an unusable state dir is refused before the token is sent', async () => {
    const shared = dirs.make();
    chmodSync(shared, 0o755);
    writeFileSync(join(shared, 'other.txt'), 'x');
    await expect(enroll(baseOptions(shared))).rejects.toMatchObject({ code: 'ML_ERR_STATE_ACCESS' });
    const file = join(dirs.make(), 'a-file');
    writeFileSync(file, 'x');
    await expect(enroll(baseOptions(file))).rejects.toMatchObject({ code: 'ML_ERR_STATE_ACCESS' });
    expect(server.requests).toEqual([]);
  });

  it('invalid options are ML_ERR_CONFIG naming the field, without echoing the token', async () => {
    const err = await enroll({ ...baseOptions(dirs.make()), server: 'http://127.0.0.1:1', token: 'has space in it' }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ML_ERR_CONFIG' });
    expect((err as Error).message).toMatch(/server: must use https/);
    expect((err as Error).message).toMatch(/token:/);
    expect((err as Error).message).not.toContain('has space in it');
  });

  describe('renewViaHttps', () => {
    it('renews an expired certificate within the grace over mTLS with a fresh key', async () => {
      const stateDir = dirs.make();
      server.certLifetimeMs = -60_000; // issued already expired: the agent was offline past NotAfter
      const { identity } = await enroll(baseOptions(stateDir));
      expect(identity.cert.notAfter.getTime()).toBeLessThan(Date.now());
      server.certLifetimeMs = 30 * 86_400_000;
      server.requests.length = 0;

      const renewed = await renewViaHttps(identity);
      expect(server.requests.map((r) => r.path)).toEqual(['/v1/renew']);
      expect(renewed.nodeId).toBe(identity.nodeId);
      expect(renewed.cert.notAfter.getTime()).toBeGreaterThan(Date.now());
      expect(renewed.keyPem).not.toBe(identity.keyPem);
      expect(await loadIdentity(stateDir)).toEqual(renewed);
      expect(readFileSync(join(stateDir, 'cert.pem'), 'utf8')).toBe(renewed.certPem);
    });

    it('beyond the grace the refusal is a typed EnrollError and the old pair stays', async () => {
      const strict = await startEnrollServer({ renewGraceMs: 1000 });
      try {
        strict.addToken(TOKEN);
        strict.certLifetimeMs = -60_000;
        const stateDir = dirs.make();
        const { identity } = await enroll({ server: strict.url, token: TOKEN, caPins: [strict.caPin], stateDir, hostname: 'h.example' });
        await expect(renewViaHttps(identity)).rejects.toMatchObject({ code: 'ML_ERR_RENEW_GRACE_EXCEEDED', status: 403 });
        expect(await loadIdentity(stateDir)).toEqual(identity);
      } finally {
        await strict.close();
      }
    });
  });
});
