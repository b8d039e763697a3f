import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { encode } from '@msgpack/msgpack';
import { attachSession } from '../../src/net/ws-session.js';
import { encodeFrame } from '../../src/protocol/frame.js';
import { kindByName } from '../../src/protocol/registry.js';
import { RemoteError, type CloseInfo, type Session } from '../../src/protocol/session.js';
import { AuditLog } from '../../src/server/audit-log.js';
import { cli } from '../e2e/harness.js';
import { dialConnect, enrollNode, startTestServer, type TestServer } from './helpers.js';

/**
 * Agent-supplied strings (issue 17, item 8): an enrolled node's raw mTLS session sends names with
 * terminal escape sequences; the server refuses them at the boundary, and the CLI escapes control
 * characters in what an agent supplied even when a store holds such a value from before the check.
 */

const ESC = '\u001b]0;owned\u0007\u001b[2J';
let srv: TestServer;
const sockets: WebSocket[] = [];

/** One frame sent as raw bytes, past the sender-side schema check a real agent's session applies. */
function sendRaw(ws: WebSocket, kind: string, payload: unknown): void {
  ws.send(encodeFrame({ type: kindByName(kind)!.code, stream: 0, flags: 0 }, encode(payload)));
}

function wsClosed(ws: WebSocket): Promise<number> {
  return new Promise((resolve) => ws.once('close', (code) => resolve(code)));
}

async function attacker(name: string): Promise<{ nodeId: string; session: Session; ws: WebSocket }> {
  const node = await enrollNode(srv, name);
  const outcome = await dialConnect(srv.url, { ca: node.caPem, cert: node.certPem, key: node.keyPem });
  if (outcome.kind !== 'open') throw new Error(`attacker could not connect: ${outcome.kind}`);
  sockets.push(outcome.ws);
  return { nodeId: node.nodeId, session: attachSession(outcome.ws, { role: 'agent' }), ws: outcome.ws };
}

function closed(session: Session): Promise<{ code: number; error?: string }> {
  const of = (info: CloseInfo) => ({ code: info.code, ...(info.error ? { error: info.error instanceof RemoteError ? info.error.remoteCode : info.error.code } : {}) });
  return new Promise((resolve) => (session.closeInfo ? resolve(of(session.closeInfo)) : session.once('close', (info) => resolve(of(info)))));
}

beforeAll(async () => {
  srv = await startTestServer();
});
afterAll(async () => {
  for (const ws of sockets) ws.terminate();
  await srv.stop();
});

describe('agent-supplied strings', () => {
  it('a hello whose agentVersion carries control characters is refused; the stored version is unchanged', async () => {
    const evil = await attacker('esc-version');
    const refused = wsClosed(evil.ws);
    sendRaw(evil.ws, 'hello', { versions: [1], agentVersion: `1.0${ESC}` });
    expect(await refused).toBe(4004);
    expect((await srv.server.store.getNode(evil.nodeId))!.agentVersion ?? '').not.toContain('\u001b');
  });

  it('an audit.batch with control characters in its operation or target is refused and stores nothing', async () => {
    const evil = await attacker('esc-audit');
    await evil.session.handshake({ agentVersion: '1.0' });
    const before = (await AuditLog.of(srv.server.store).ofNode(evil.nodeId, 100)).length;
    const refused = closed(evil.session);
    sendRaw(evil.ws, 'audit.batch', { records: [{ ts: Date.now(), action: `exec${ESC}`, target: `/etc${ESC}`, result: 'ok' }] });
    expect(await refused).toMatchObject({ code: 4004, error: 'ML_ERR_BAD_PAYLOAD' });
    expect((await AuditLog.of(srv.server.store).ofNode(evil.nodeId, 100)).length).toBe(before);
  });

  it('the CLI escapes control characters in agent-supplied fields (a record stored before the check)', async () => {
    const { nodeId } = await enrollNode(srv, 'esc-stored');
    await AuditLog.of(srv.server.store).record({ source: 'agent', actor: `root${ESC}`, operation: `exec${ESC}`, nodeId, target: `/tmp${ESC}`, result: `ok${ESC}` });
    await srv.server.store.setAgentVersion(nodeId, `9${ESC}`);
    for (const args of [['server', 'audit'], ['server', 'nodes', 'list']]) {
      const r = await cli([...args, '--data-dir', srv.dataDir]);
      expect(r.code, r.stderr).toBe(0);
      // eslint-disable-next-line no-control-regex -- the test looks for raw control characters
      expect(r.stdout).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/);
      expect(r.stdout).toContain('\\x1b]0;owned\\x07');
    }
    // JSON output stays JSON: the same value, escaped by JSON.
    const json = await cli(['server', 'audit', '--json', '--data-dir', srv.dataDir]);
    expect(json.stdout).not.toContain('\u001b');
    expect((JSON.parse(json.stdout) as Array<{ operation: string }>).some((a) => a.operation === `exec${ESC}`)).toBe(true);
  }, 60_000);
});
