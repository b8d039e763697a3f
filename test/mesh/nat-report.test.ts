import { mkdtemp, rm } from 'node:fs/promises';
import { createSocket, type Socket } from 'node:dgram';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MeshAgent } from '../../src/agent/mesh/mesh-agent.js';
import { selfReportSchema } from '../../src/contract/mesh-events.js';
import { StunResponder } from '../../src/server/mesh/stun-responder.js';
import { createLogger } from '../../src/util/logger.js';

/**
 * The agent's NAT report (MeshAgent.probeNat → hello's `nat`) against the real STUN responder on
 * loopback, with real UDP sockets: from the listen port, from any port when the listen port is held
 * (as by a WireGuard interface left up), and with no responder at all.
 */

const logger = createLogger({ name: 'test', level: 'silent' });
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function agentWith(stun: { host: string; port: number } | null, listenPort: number): Promise<MeshAgent> {
  const dir = await mkdtemp(join(tmpdir(), 'ml-nat-report-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const agent = await MeshAgent.create({ stateDir: dir, logger, listenPort, stun, stunTimeoutMs: 500, endpoints: ['192.0.2.7:51820'] });
  cleanups.push(() => agent.close());
  return agent;
}

async function responder(): Promise<StunResponder> {
  const r = await StunResponder.listen({ host: '127.0.0.1', port: 0, alternatePort: 0, logger });
  cleanups.push(() => r.close());
  return r;
}

describe('the agent NAT report', () => {
  it('probes from the listen port and reports the reflexive endpoint and class in hello (schema-valid)', async () => {
    const r = await responder();
    const port = await freeUdpPort();
    const agent = await agentWith({ host: '127.0.0.1', port: r.endpoints[0].port }, port);
    expect(agent.helloFields().nat).toBeUndefined();
    const report = await agent.probeNat();
    expect(report).toEqual({ mapping: 'none', reflexive: `127.0.0.1:${port}` });
    const hello = agent.helloFields();
    expect(hello.nat).toEqual(report);
    expect(selfReportSchema.safeParse({ wgPublicKey: hello.wgPublicKey, endpoints: hello.endpoints, nat: hello.nat }).success).toBe(true);
    expect(agent.status().nat).toEqual(report);
  });

  it('with the listen port held, probes from any port: no NAT still names the listen port', async () => {
    const r = await responder();
    const holder: Socket = createSocket('udp4');
    await new Promise<void>((res) => holder.bind(0, () => res()));
    cleanups.push(() => new Promise<void>((res) => holder.close(() => res())));
    const port = holder.address().port;
    const agent = await agentWith({ host: '127.0.0.1', port: r.endpoints[0].port }, port);
    expect(await agent.probeNat()).toEqual({ mapping: 'none', reflexive: `127.0.0.1:${port}` });
  });

  it('no answer: reports unknown without a reflexive endpoint (never nothing), and does not throw', async () => {
    const silent = createSocket('udp4');
    await new Promise<void>((res) => silent.bind(0, '127.0.0.1', () => res()));
    cleanups.push(() => new Promise<void>((res) => silent.close(() => res())));
    const agent = await agentWith({ host: '127.0.0.1', port: silent.address().port }, await freeUdpPort());
    expect(await agent.probeNat()).toEqual({ mapping: 'unknown', reflexive: null });
    expect(agent.helloFields().nat).toEqual({ mapping: 'unknown', reflexive: null });
  });

  it('no STUN server configured (--no-stun): no probe, no report', async () => {
    const agent = await agentWith(null, await freeUdpPort());
    expect(await agent.probeNat()).toBeNull();
    expect('nat' in agent.helloFields()).toBe(false);
  });
});
