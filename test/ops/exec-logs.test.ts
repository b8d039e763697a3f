import { PassThrough, Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runAction, runExec, runTunnel, tailLogs } from '../../src/admin-api/tunnel-client.js';
import { startOpsPair, waitUntil, type OpsPair } from './helpers.js';

function sink(): { stream: PassThrough; text(): string; bytes(): number } {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return { stream, text: () => Buffer.concat(chunks).toString('utf8'), bytes: () => chunks.reduce((n, c) => n + c.length, 0) };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function diagnostics(p: OpsPair): Promise<{ ops: Record<string, number>; activeResources: Record<string, number> }> {
  const out = sink();
  await runAction(p.socket, { op: 'action', node: p.nodeId, actor: 't', action: 'diagnostics' }, { stdout: out.stream, stderr: new PassThrough() });
  return JSON.parse(out.text());
}

describe('exec over real mTLS', () => {
  let on: OpsPair;
  let off: OpsPair;
  beforeAll(async () => {
    [on, off] = await Promise.all([startOpsPair({ allowExec: true }), startOpsPair({})]);
  });
  afterAll(async () => Promise.all([on?.stop(), off?.stop()]));

  it('streams stdin to the command and stdout/stderr back, with its exit code', async () => {
    const out = sink();
    const err = sink();
    const input = Readable.from([Buffer.from('alpha\n'), Buffer.from('beta\n')]);
    const r = await runExec(on.socket, { op: 'exec', node: on.nodeId, actor: 't', command: 'sh', args: ['-c', 'tr a-z A-Z; echo oops >&2; exit 7'] }, { stdin: input, stdout: out.stream, stderr: err.stream });
    expect(out.text()).toBe('ALPHA\nBETA\n');
    expect(err.text()).toBe('oops\n');
    expect(r.exitCode).toBe(7);
  });

  it('moves megabytes both ways with flow control', async () => {
    const out = sink();
    const size = 8 * 1024 * 1024;
    const input = Readable.from((function* () {
      for (let i = 0; i < size / 65536; i++) yield Buffer.alloc(65536, i % 251);
    })());
    const r = await runExec(on.socket, { op: 'exec', node: on.nodeId, actor: 't', command: 'cat', args: [] }, { stdin: input, stdout: out.stream, stderr: new PassThrough() });
    expect(r.exitCode).toBe(0);
    expect(out.bytes()).toBe(size);
  });

  it('is refused with a clear error unless the agent allows it', async () => {
    await expect(
      runExec(off.socket, { op: 'exec', node: off.nodeId, actor: 't', command: 'id', args: [] }, { stdin: null, stdout: new PassThrough(), stderr: new PassThrough() }),
    ).rejects.toMatchObject({ code: 'ML_ERR_OPS_EXEC_DISABLED', message: expect.stringMatching(/--allow-exec/) });
  });

  it('a command that cannot start is refused with ML_ERR_OPS_SPAWN', async () => {
    await expect(
      runExec(on.socket, { op: 'exec', node: on.nodeId, actor: 't', command: '/nonexistent/cmd', args: [] }, { stdin: null, stdout: new PassThrough(), stderr: new PassThrough() }),
    ).rejects.toMatchObject({ code: 'ML_ERR_OPS_SPAWN' });
  });

  it('ending the command kills the remote process group at once', async () => {
    const out = sink();
    let pids: number[] = [];
    const done = runTunnel(on.socket, { op: 'exec', node: on.nodeId, actor: 't', command: 'sh', args: ['-c', 'sleep 300 & echo "$$ $!"; wait'] }, {
      onData: (c) => {
        out.stream.write(c);
      },
      onEvent(e, t) {
        if (e.type === 'ack') t.event({ type: 'eof' });
      },
      onOpen(t) {
        const check = setInterval(() => {
          const m = /^(\d+) (\d+)/.exec(out.text());
          if (m) {
            clearInterval(check);
            pids = [Number(m[1]), Number(m[2])];
            t.cancel();
          }
        }, 10);
      },
    });
    await expect(done).resolves.toBeNull();
    expect(pids).toHaveLength(2);
    await waitUntil('remote group killed', () => pids.every((pid) => !alive(pid)), 5_000);
    await waitUntil('exec count back to 0', () => on.ops.exec.running === 0, 5_000);
  });

  it('log tail: the last N lines of the agent’s own log', async () => {
    for (let i = 0; i < 30; i++) on.logger.info({ i }, 'tail-marker');
    const out = sink();
    await tailLogs(on.socket, { op: 'logs', node: on.nodeId, actor: 't', lines: 5, follow: false }, out.stream);
    const lines = out.text().trim().split('\n').map((l) => JSON.parse(l) as { msg: string; i?: number });
    expect(lines).toHaveLength(5);
    // The newest lines (the tail request itself may have logged after our markers).
    expect(lines.filter((l) => l.msg === 'tail-marker').map((l) => l.i)).toEqual(expect.arrayContaining([29]));
  });

  it('log follow: new lines stream; ending the command stops the agent’s tail at once, leaving no listener or timer', async () => {
    const before = await diagnostics(on);
    const out = sink();
    const abort = new AbortController();
    const tail = tailLogs(on.socket, { op: 'logs', node: on.nodeId, actor: 't', lines: 0, follow: true }, out.stream, abort.signal);
    await waitUntil('follower attached', () => on.ops.logs.followers === 1);
    on.logger.info('follow-me-1');
    on.logger.info('follow-me-2');
    await waitUntil('lines followed', () => out.text().includes('follow-me-2'));
    abort.abort();
    await tail;
    await waitUntil('follower gone', () => on.ops.logs.followers === 0, 5_000);
    const after = await diagnostics(on);
    expect(after.ops.logFollowers).toBe(0);
    // No timer or watcher survives the tail (FSWatcher/StatWatcher/Timeout counts unchanged).
    for (const kind of ['FSEvent', 'StatWatcher', 'Timeout']) expect(after.activeResources[kind] ?? 0).toBeLessThanOrEqual(before.activeResources[kind] ?? 0);
  });
});
