import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, symlink, unlink, writeFile } from 'node:fs/promises';
import { AdminClient } from '../../src/admin-api/client.js';
import { listAudit } from '../../src/admin-api/routes.js';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runAction, runTunnel } from '../../src/admin-api/tunnel-client.js';
import { enroll } from '../../src/agent/enroll.js';
import { createEnrollmentToken } from '../../src/server/nodes.js';
import { tempDir } from '../server/helpers.js';
import { startOpsPair, waitUntil, type OpsPair } from './helpers.js';
import { MeshlinkError } from '../../src/errors.js';

function sink(): { stream: PassThrough; text(): string } {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return { stream, text: () => Buffer.concat(chunks).toString('utf8') };
}

async function act(p: OpsPair, action: string, args: Record<string, string> = {}, timeoutMs?: number) {
  const out = sink();
  const err = sink();
  let queued: boolean | null = null;
  const r = await runAction(p.socket, { op: 'action', node: p.nodeId, actor: 'tester', action, args, ...(timeoutMs ? { timeoutMs } : {}) }, { stdout: out.stream, stderr: err.stream, onAck: (q) => (queued = q) });
  return { ...r, stdout: out.text(), stderr: err.text(), queued };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('remote actions over real mTLS', () => {
  let p: OpsPair;
  let hooks: string;
  beforeAll(async () => {
    p = await startOpsPair({ maxActions: 2, maxQueuedActions: 1, actionOutputCap: 4096, killGraceMs: 200 });
    hooks = join(p.stateDir, 'hooks');
    await mkdir(hooks, { recursive: true, mode: 0o700 });
    const hook = async (name: string, body: string): Promise<void> => {
      await writeFile(join(hooks, name), `#!/bin/sh\n${body}\n`, { mode: 0o700 });
      await chmod(join(hooks, name), 0o700);
    };
    await hook('greet', 'echo "hello $MESHLINK_ARG_WHO from $MESHLINK_ACTION"; echo "to stderr" >&2; exit 3');
    await hook('chatty', 'i=0; while [ $i -lt 2000 ]; do echo "line $i of chatty output"; i=$((i+1)); done');
    // Starts a grandchild, reports both pids, then sleeps: the timeout must kill the whole group.
    await hook('hang', `sleep 300 & echo "child $!"; echo "self $$"; wait`);
    await hook('slow', 'sleep 0.6; echo done');
    await hook('injection', 'echo "arg=[$MESHLINK_ARG_X]"');
    await writeFile(join(hooks, 'notexec'), '#!/bin/sh\necho no\n', { mode: 0o600 });
  });
  afterAll(async () => p?.stop());

  it('ping and diagnostics are built in', async () => {
    const ping = await act(p, 'ping');
    expect(ping.stdout).toBe('pong\n');
    expect(ping.exitCode).toBe(0);
    const d = await act(p, 'diagnostics');
    const diag = JSON.parse(d.stdout) as { versions: { agent: string; node: string }; certificate: { notAfter: string; expiresInDays: number }; connection: { state: string; openStreams: number }; uptimeSec: number };
    expect(diag.versions.node).toBe(process.versions.node);
    expect(diag.certificate.expiresInDays).toBeGreaterThan(20);
    expect(diag.connection.state).toBe('connected');
    expect(diag.connection.openStreams).toBeGreaterThanOrEqual(1);
  });

  it('reconcile checks identity and the server round trip', async () => {
    const r = await act(p, 'reconcile');
    const rep = JSON.parse(r.stdout) as { ok: boolean; checks: Array<{ name: string; ok: boolean }> };
    expect(rep.checks.map((c) => c.name)).toEqual(expect.arrayContaining(['identity', 'server']));
    expect(rep.ok).toBe(true);
    expect(r.exitCode).toBe(0);
  });

  it('runs a hook with args as environment, streams stdout and stderr, reports the exit code', async () => {
    const r = await act(p, 'greet', { who: 'world' });
    expect(r.stdout).toBe('hello world from greet\n');
    expect(r.stderr).toBe('to stderr\n');
    expect(r.exitCode).toBe(3);
    expect(r.truncated).toBe(false);
    expect(r.queued).toBe(false);
  });

  it('never uses a shell: argument values are not interpreted', async () => {
    const r = await act(p, 'injection', { x: '$(touch /tmp/pwned); `id`' });
    expect(r.stdout).toBe('arg=[$(touch /tmp/pwned); `id`]\n');
  });

  it('truncates output past the cap and says so', async () => {
    const r = await act(p, 'chatty');
    expect(r.stdout.length).toBe(4096);
    expect(r.truncated).toBe(true);
    expect(r.exitCode).toBe(0);
  });

  it('a timeout kills the whole process group', async () => {
    const r = await act(p, 'hang', {}, 500);
    expect(r.error).toMatch(/^ML_ERR_OPS_TIMEOUT/);
    const child = Number(/child (\d+)/.exec(r.stdout)?.[1]);
    const self = Number(/self (\d+)/.exec(r.stdout)?.[1]);
    expect(child).toBeGreaterThan(0);
    await waitUntil('group dead', () => !isAlive(child) && !isAlive(self), 5_000);
  });

  it('refuses unknown, non-executable and invalid actions clearly', async () => {
    await expect(act(p, 'nope')).rejects.toMatchObject({ code: 'ML_ERR_OPS_UNKNOWN_ACTION' });
    await expect(act(p, 'notexec')).rejects.toMatchObject({ code: 'ML_ERR_OPS_UNKNOWN_ACTION', message: expect.stringMatching(/not executable/) });
    await expect(act(p, '../etc/passwd')).rejects.toBeInstanceOf(MeshlinkError);
  });

  it('refuses a hook owned by another user, writable by group, behind a symlink, or in an unsafe hooks dir', async () => {
    // Each hook leaves a marker if it runs: none may.
    const marker = join(p.stateDir, 'hook-ran');
    const body = `#!/bin/sh\ntouch ${marker}\n`;
    const unsafe = { code: 'ML_ERR_OPS_HOOK_UNSAFE' };
    await writeFile(join(hooks, 'foreign'), body, { mode: 0o700 });
    await chown(join(hooks, 'foreign'), 65534, 65534);
    await expect(act(p, 'foreign')).rejects.toMatchObject({ ...unsafe, message: expect.stringMatching(/owned by uid 65534/) });
    await writeFile(join(hooks, 'groupw'), body, { mode: 0o770 });
    await chmod(join(hooks, 'groupw'), 0o770);
    await expect(act(p, 'groupw')).rejects.toMatchObject({ ...unsafe, message: expect.stringMatching(/writable by group or others/) });
    await writeFile(join(p.stateDir, 'outside-hook'), body, { mode: 0o700 });
    await symlink(join(p.stateDir, 'outside-hook'), join(hooks, 'linked'));
    await expect(act(p, 'linked')).rejects.toMatchObject({ ...unsafe, message: expect.stringMatching(/symbolic link/) });
    // A safe hook in an unsafe directory is refused too: anyone could replace it there.
    await writeFile(join(hooks, 'safe'), body, { mode: 0o700 });
    await chmod(hooks, 0o777);
    try {
      await expect(act(p, 'safe')).rejects.toMatchObject({ ...unsafe, message: expect.stringMatching(/hooks dir .* writable by group or others/) });
    } finally {
      await chmod(hooks, 0o700);
    }
    await chown(hooks, 65534, 65534);
    try {
      await expect(act(p, 'safe')).rejects.toMatchObject({ ...unsafe, message: expect.stringMatching(/hooks dir .* owned by uid 65534/) });
    } finally {
      await chown(hooks, 0, 0);
    }
    expect(existsSync(marker)).toBe(false);
    // The same hook in the restored directory runs: the refusals were about ownership and modes.
    const ok = await act(p, 'safe');
    expect(ok.exitCode).toBe(0);
    expect(existsSync(marker)).toBe(true);
    await unlink(marker);
  });

  it('runs at most maxActions at once, queues maxQueued more, refuses beyond with ML_ERR_OPS_BUSY', async () => {
    const started = Date.now();
    const runs = [act(p, 'slow'), act(p, 'slow'), act(p, 'slow'), act(p, 'slow')].map((x) => x.then((r) => ({ ok: true as const, r }), (e: MeshlinkError) => ({ ok: false as const, e })));
    const results = await Promise.all(runs);
    const ok = results.filter((x) => x.ok);
    const refused = results.filter((x) => !x.ok);
    expect(ok).toHaveLength(3);
    expect(refused).toHaveLength(1);
    expect(refused[0]!.ok === false && refused[0]!.e.code).toBe('ML_ERR_OPS_BUSY');
    expect(ok.filter((x) => x.ok && x.r.queued)).toHaveLength(1);
    // Two ran in parallel, the queued one after: ≥ 2 × 0.6 s in total.
    expect(Date.now() - started).toBeGreaterThanOrEqual(1150);
  });

  it('an action on an enrolled node that is not connected fails with ML_ERR_OPS_NODE_OFFLINE', async () => {
    const { token } = await createEnrollmentToken(p.ts.server.store, { ttlMs: 60_000 });
    const dir = await tempDir('ml-ops-offline-');
    try {
      const { identity } = await enroll({ server: p.ts.url, token, caPins: [p.ts.server.caPin], stateDir: join(dir.path, 's'), hostname: 'offline-host' });
      await expect(act({ ...p, nodeId: 'offline-host' } as OpsPair, 'ping')).rejects.toMatchObject({ code: 'ML_ERR_OPS_NODE_OFFLINE', message: expect.stringContaining(identity.nodeId) });
    } finally {
      await dir.cleanup();
    }
  });

  it('a queued action whose operator leaves is dropped from the queue', async () => {
    const slow = [act(p, 'slow'), act(p, 'slow')];
    await waitUntil('two running', () => p.ops.actions.running === 2);
    const waiting = runTunnel(p.socket, { op: 'action', node: p.nodeId, actor: 't', action: 'slow' }, {
      onEvent(e, t) {
        if (e.type === 'ack' && e.queued) t.cancel();
      },
    });
    await expect(waiting).resolves.toBeNull();
    await waitUntil('queue empty', () => p.ops.actions.queued === 0, 5_000);
    await Promise.all(slow);
    await waitUntil('all done', () => p.ops.actions.running === 0, 5_000);
  });

  it('records every operation in the audit log with actor, node and result', async () => {
    await waitUntil('agent audit records', async () => {
      const list = await new AdminClient(p.socket).call(listAudit, { limit: 200 });
      return list.some((a) => a.source === 'agent' && a.target === 'greet');
    });
    const list = await new AdminClient(p.socket).call(listAudit, { limit: 200 });
    const greet = list.find((a) => a.source === 'admin' && a.target === 'greet')!;
    expect(greet).toMatchObject({ actor: 'tester', operation: 'action', nodeId: p.nodeId, result: 'exit:3' });
    expect(greet.finishedAt).toBeGreaterThanOrEqual(greet.ts);
    expect(list.find((a) => a.source === 'admin' && a.target === 'nope')?.result).toBe('error:ML_ERR_OPS_UNKNOWN_ACTION');
    expect(list.find((a) => a.source === 'admin' && a.target === 'hang')?.result).toBe('error:ML_ERR_OPS_TIMEOUT');
    expect(list.find((a) => a.source === 'agent' && a.target === 'greet')?.result).toBe('exit:3');
  });
});
