import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { decodeFrame } from '../../src/protocol/codec.js';
import { FrameDecoder } from '../../src/protocol/decoder.js';
import type { InputOf } from '../../src/protocol/registry.js';
import { createMeshFeature, type MeshService } from '../../src/server/mesh/index.js';
import type { RelaySessions } from '../../src/server/mesh/relay-sessions.js';
import type { ServerConfigInput } from '../../src/server/config.js';
import { tempDir } from '../e2e/harness.js';
import { frame } from '../helpers/raw-agent.js';
import { dialConnect, enrollNode, startTestServer, type TestServer } from '../server/helpers.js';
import { wgKey } from './helpers.js';

/**
 * Relay sessions across server restarts (real server, real SQLite store on one data dir, agents as raw
 * protocol clients over TLS on loopback): the sessions a run assigned are revoked by the next run,
 * whether it runs the relay again ("relay restarted") or not ("relay off"), so no agent keeps
 * sending to ports that died with the old process.
 */

type Nat = NonNullable<InputOf<'hello'>['nat']>;
const HARD: Nat = { mapping: 'endpoint-dependent', reflexive: '198.51.100.10:40001' };
const HARD2: Nat = { mapping: 'unknown', reflexive: null };

let dir: { path: string; cleanup(): Promise<void> };
const enrolled: Array<{ nodeId: string; tls: { ca: string; cert: string; key: string } }> = [];

interface Run {
  ts: TestServer;
  mesh: MeshService;
  sessions: RelaySessions | null;
  sockets: WebSocket[];
}

async function start(overrides: Partial<ServerConfigInput>): Promise<Run> {
  let mesh: MeshService | undefined;
  let sessions: RelaySessions | null = null;
  const ts = await startTestServer(
    { stunListen: null, ...overrides },
    { dataDir: dir.path, features: [createMeshFeature({ onStarted: (m) => (mesh = m), onRelayStarted: (_r, s) => (sessions = s) })] },
  );
  return { ts, mesh: mesh!, sessions, sockets: [] };
}

/** Connects a node with a hello that reports `nat`; resolves on welcome. */
async function connect(run: Run, i: number, nat: Nat): Promise<void> {
  const node = enrolled[i]!;
  const out = await dialConnect(run.ts.url, node.tls);
  if (out.kind !== 'open') throw new Error(`connect failed: ${JSON.stringify(out)}`);
  const ws = out.ws;
  run.sockets.push(ws);
  const decoder = new FrameDecoder();
  await new Promise<void>((resolve, reject) => {
    ws.on('message', (data: Buffer) => {
      for (const f of decoder.push(new Uint8Array(data))) if (decodeFrame(f, 1024 * 1024).name === 'welcome') resolve();
    });
    ws.once('close', (code) => reject(new Error(`closed ${code}`)));
    const hello: InputOf<'hello'> = { versions: [1], agentVersion: 'relay-restart-test', hostname: `n${i}`, lastEventSeq: 0, wgPublicKey: wgKey(i + 1), endpoints: [`10.0.${i}.1:51820`], nat };
    ws.send(Buffer.from(frame('hello', 0, hello)), { binary: true });
  });
}

async function stop(run: Run): Promise<void> {
  for (const ws of run.sockets) ws.terminate();
  await run.ts.stop();
}

async function until(ok: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`${what}: not reached`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  dir = await tempDir('ml-relay-restart-');
  const first = await start({ relayListen: null });
  for (const name of ['x', 'y']) {
    const e = await enrollNode(first.ts, name);
    enrolled.push({ nodeId: e.nodeId, tls: { ca: e.caPem, cert: e.certPem, key: e.keyPem } });
  }
  await stop(first);
}, 60_000);

afterAll(async () => {
  await dir?.cleanup();
});

describe('relay sessions across restarts', () => {
  it('a restarted server revokes the sessions of its previous run; with --no-relay too', async () => {
    const relayOn = { relayListen: { host: '127.0.0.1', ports: null } };
    const one = await start(relayOn);
    await connect(one, 0, HARD);
    await connect(one, 1, HARD2);
    await until(() => one.sessions!.list().length === 1, 'the pair relayed');
    const old = one.sessions!.list()[0]!.id;
    expect(one.mesh.heldRelaySessions().map((h) => h.sessionId)).toEqual([old]);
    await stop(one);

    // The relay again, agents not back yet: the old session is revoked and nothing new is assigned.
    const two = await start(relayOn);
    expect(two.mesh.heldRelaySessions()).toEqual([]);
    // Each member has a signed revoke of the old session in its event log (delivered when it is back).
    const revokes = async (run: Run, i: number) => (await run.mesh.feed(0, enrolled[i]!.nodeId)).filter((e) => e.type === 'relay_session_revoked').map((e) => e.detail);
    for (const i of [0, 1]) expect(JSON.stringify(await revokes(two, i))).toContain(old);
    await connect(two, 0, HARD);
    await connect(two, 1, HARD2);
    await until(() => two.sessions!.list().length === 1, 'the pair relayed again');
    const renewed = two.sessions!.list()[0]!.id;
    expect(renewed).not.toBe(old);
    await stop(two);

    // No relay: the held session is revoked as well, and none is assigned.
    const three = await start({ relayListen: null });
    expect(three.sessions).toBeNull();
    expect(three.mesh.heldRelaySessions()).toEqual([]);
    for (const i of [0, 1]) expect(JSON.stringify(await revokes(three, i))).toContain(renewed);
    await stop(three);
  }, 90_000);
});
