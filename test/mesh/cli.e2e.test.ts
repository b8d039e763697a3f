import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, createToken, freePort, spawnCli, startServerProc, tempDir, waitFor, type Proc, type ServerProc } from '../e2e/harness.js';

/** The mesh through real CLI processes: server, tagged tokens, two agents (render-only), policy, tags, tail. */

let root: { path: string; cleanup(): Promise<void> };
let server: ServerProc;
const procs: Proc[] = [];
const nodes: Record<string, { id: string; stateDir: string }> = {};

async function statusOf(name: string): Promise<Record<string, unknown> & { peers?: Array<{ nodeId: string }> }> {
  const r = await cli(['agent', 'status', '--state-dir', nodes[name]!.stateDir, '--json']);
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout);
}

beforeAll(async () => {
  root = await tempDir('ml-mesh-cli-');
  server = await startServerProc(join(root.path, 'server'), await freePort());
  for (const [name, tag] of [['alpha', 'web'], ['beta', 'db']] as const) {
    const stateDir = join(root.path, name);
    const t = await createToken(server.dataDir, ['--tag', tag]);
    const r = await cli(['agent', 'enroll', '--server', server.url, '--token', t.token, '--ca-pin', server.caPin, '--state-dir', stateDir, '--hostname', name, '--json']);
    expect(r.code, r.stderr).toBe(0);
    nodes[name] = { id: JSON.parse(r.stdout).nodeId, stateDir };
    const p = spawnCli(['agent', 'run', '--state-dir', stateDir, '--endpoint', `192.0.2.${name === 'alpha' ? 1 : 2}:51820`, '--reconcile-interval', '2s']);
    procs.push(p);
    await p.waitForLog('connected');
  }
}, 120_000);

afterAll(async () => {
  for (const p of procs) await p.stop();
  await server?.stop();
  await root?.cleanup();
});

describe('meshlink mesh CLI (real processes)', () => {
  it('nodes list --json and agent status --json show mesh fields; the two agents peer', async () => {
    const list = await waitFor('keys reported', async () => {
      const r = await cli(['server', 'nodes', 'list', '--data-dir', server.dataDir, '--json']);
      const l = JSON.parse(r.stdout) as Array<{ id: string; meshIp: string; wgPublicKey: string | null; tags: string[] }>;
      return l.every((n) => n.wgPublicKey) ? l : null;
    });
    const alpha = list.find((n) => n.id === nodes.alpha!.id)!;
    expect(alpha.meshIp).toMatch(/^10\.100\.0\.\d+$/);
    expect(alpha.tags).toEqual(['web']);
    expect(list.find((n) => n.id === nodes.beta!.id)!.tags).toEqual(['db']);
    const st = await waitFor('alpha has beta as peer', async () => {
      const s = await statusOf('alpha');
      return s.peers?.length === 1 ? s : null;
    });
    expect(st).toMatchObject({ meshIp: alpha.meshIp, wgPublicKey: alpha.wgPublicKey, peers: [{ nodeId: nodes.beta!.id, endpoints: ['192.0.2.2:51820'] }] });
    expect(typeof st.lastEventSeq).toBe('number');
  });

  it('policy set refuses an invalid file naming the fault and keeps the policy in force', async () => {
    const good = join(root.path, 'good.json');
    const bad = join(root.path, 'bad.json');
    await writeFile(good, JSON.stringify({ rules: [{ from: 'web', to: 'ops' }] }));
    await writeFile(bad, '{"rules":[{"from":"web","to":"no spaces"}]}');
    const set = await cli(['server', 'policy', 'set', good, '--data-dir', server.dataDir]);
    expect(set.code, set.stderr).toBe(0);
    expect(set.stdout).toMatch(/in force; 2 node\(s\) notified/);
    const refused = await cli(['server', 'policy', 'set', bad, '--data-dir', server.dataDir]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/ML_ERR_MESH_POLICY: invalid policy at rules.0.to/);
    const show = await cli(['server', 'policy', 'show', '--data-dir', server.dataDir]);
    expect(JSON.parse(show.stdout)).toEqual({ rules: [{ from: 'web', to: 'ops' }] });
    // The same policy again changes nothing: with --json, stdout is exactly one JSON document.
    const again = await cli(['server', 'policy', 'set', good, '--json', '--data-dir', server.dataDir]);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toEqual({ policyId: expect.any(String), affectedNodes: [], live: true });
    await waitFor('peers separated', async () => (await statusOf('alpha')).peers?.length === 0);
  });

  it('nodes tag brings the pair back under the policy; events tail shows the events without PSKs', async () => {
    const tag = await cli(['server', 'nodes', 'tag', 'beta', 'ops', '--add', '--data-dir', server.dataDir]);
    expect(tag.code, tag.stderr).toBe(0);
    expect(tag.stdout).toMatch(/tags: db, ops/);
    await waitFor('peers again', async () => (await statusOf('alpha')).peers?.length === 1);
    const tail = await cli(['server', 'events', 'tail', '--node', 'alpha', '--last', '50', '--no-follow', '--data-dir', server.dataDir]);
    expect(tail.code, tail.stderr).toBe(0);
    const entries = tail.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string; nodeId: string });
    expect(entries.every((e) => e.nodeId === nodes.alpha!.id)).toBe(true);
    expect(entries.map((e) => e.type)).toEqual(expect.arrayContaining(['policy_updated', 'peer_removed', 'peer_added']));
    expect(tail.stdout).not.toMatch(/"psk":"[A-Za-z0-9+/]{43}="/);
    const asJson = await cli(['server', 'nodes', 'tag', 'beta', 'ops', '--add', '--json', '--data-dir', server.dataDir]);
    expect(JSON.parse(asJson.stdout)).toEqual({ id: nodes.beta!.id, hostname: 'beta', tags: ['db', 'ops'], affectedNodes: [] });
    const badTag = await cli(['server', 'nodes', 'tag', 'beta', 'bad tag', '--data-dir', server.dataDir]);
    expect(badTag.code).toBe(2);
    const unknown = await cli(['server', 'nodes', 'tag', 'nobody', 'x', '--data-dir', server.dataDir]);
    expect(unknown.code).toBe(3);
  });

  it('mesh notify sends operator events to one node or to all; the agents apply them', async () => {
    const before = { alpha: (await statusOf('alpha')).lastEventSeq as number, beta: (await statusOf('beta')).lastEventSeq as number };
    const one = await cli(['server', 'mesh', 'notify', 'alpha', '--action', 'refresh-cache', '--arg', 'scope=all', '--data-dir', server.dataDir]);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout).toMatch(new RegExp(`^action_request sent to ${nodes.alpha!.id} \\(event ${before.alpha + 1}\\)`));
    const all = await cli(['server', 'mesh', 'notify', '--all', '--secrets', 'db-password', '--data-dir', server.dataDir]);
    expect(all.code, all.stderr).toBe(0);
    expect(all.stdout).toBe('node_secrets_updated sent to 2 nodes\n');
    await waitFor('both applied', async () => (await statusOf('alpha')).lastEventSeq === before.alpha + 2 && (await statusOf('beta')).lastEventSeq === before.beta + 1, 15_000);
    expect(procs[0]!.output()).toMatch(/action requested by event/);
    expect(procs[1]!.output()).toMatch(/node secrets updated/);
    const bad = await cli(['server', 'mesh', 'notify', 'alpha', '--data-dir', server.dataDir]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--action NAME or --secrets KEY/);
  });

  it('events tail follows new events as they happen', async () => {
    const tail = spawnCli(['server', 'events', 'tail', '--last', '0', '--data-dir', server.dataDir]);
    procs.push(tail);
    // Only events after the tail's first page are followed (--last 0): act once it says it follows.
    await waitFor('tail following', async () => /following new entries/.test(tail.output()), 30_000);
    const rot = await cli(['server', 'mesh', 'rotate-keys', 'beta', '--data-dir', server.dataDir]);
    expect(rot.code, rot.stderr).toBe(0);
    await waitFor('tail shows rotate_keys and peer_key_rotated', async () => /"rotate_keys"/.test(tail.output()) && /"peer_key_rotated"/.test(tail.output()), 15_000);
    await tail.stop('SIGINT');
  });
});
