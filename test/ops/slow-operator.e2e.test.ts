import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, enrollAgent, freePort, spawnCli, startServerProc, tempDir, waitFor, type Proc, type ServerProc } from '../e2e/harness.js';

/**
 * Issue 17 item 4 through real processes: the operator's CLI is stopped (SIGSTOP) while the agent's
 * command writes 150 MiB to stderr (exec.stderr typed messages). Before, the server relayed them to
 * the stopped operator's socket without backpressure (RSS 105 → 357 MB). Now they take stream
 * credit and the relay pauses the stream while the operator's socket is backed up: the server's RSS
 * stays bounded, and after SIGCONT the operator receives every line in order.
 */

const rssKiB = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
const LINES = 18_800_000; // `seq 1 18800000` writes 150.1 MiB

describe('a stopped operator cannot make the server buffer an agent stream', () => {
  let srvDir: { path: string; cleanup(): Promise<void> };
  let work: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let agent: Proc;
  let nodeId: string;

  beforeAll(async () => {
    srvDir = await tempDir('ml-slowop-srv-');
    work = await tempDir('ml-slowop-');
    server = await startServerProc(srvDir.path, await freePort());
    const stateDir = join(work.path, 'state');
    nodeId = (await enrollAgent(server, stateDir, 'slowop')).nodeId;
    agent = spawnCli(['agent', 'run', '--state-dir', stateDir, '--allow-exec', '--log-level', 'info']);
    await agent.waitForLog('connected', 60_000);
  }, 120_000);

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    await work?.cleanup();
    await srvDir?.cleanup();
  });

  it('150 MiB of exec stderr to a SIGSTOPped operator: server RSS grows < 100 MB, and every line arrives in order after SIGCONT', async () => {
    if (!process.platform.startsWith('linux')) return; // /proc is needed to read RSS
    const before = rssKiB(server.child.pid!);
    const op = spawn(process.execPath, [CLI, 'server', 'exec', '--data-dir', server.dataDir, nodeId, '--', 'sh', '-c', `seq 1 ${LINES} >&2`], { stdio: ['ignore', 'ignore', 'pipe'] });
    // Check the order as it streams: the remote command writes `seq`'s lines to its stderr.
    let next = 1;
    let partial = '';
    let bad: string | null = null;
    let bytes = 0;
    let tail = '';
    op.stderr.on('data', (c: Buffer) => {
      bytes += c.length;
      tail = (tail + c.toString('latin1')).slice(-2_000);
      const text = partial + c.toString('latin1');
      const lines = text.split('\n');
      partial = lines.pop()!;
      for (const l of lines) {
        if (bad) return;
        if (l === String(next)) next++;
        else if (next <= LINES) bad = `expected ${next}, got ${JSON.stringify(l.slice(0, 80))}`;
      }
    });
    const exited = new Promise<number | null>((r) => op.once('exit', (code) => r(code)));
    await waitFor('first output', async () => next > 1000, 60_000, 50);
    op.kill('SIGSTOP');
    // Observe the server for a while with the operator stopped (the agent keeps producing).
    let peak = 0;
    for (let i = 0; i < 20; i++) {
      await new Promise((r) => setTimeout(r, 500));
      peak = Math.max(peak, rssKiB(server.child.pid!));
    }
    op.kill('SIGCONT');
    expect(await exited, `the operator's last output: ${tail}`).toBe(0);
    expect(bad).toBeNull();
    expect(next - 1).toBe(LINES);
    expect(bytes).toBeGreaterThan(150 * 1024 * 1024);
    const after = rssKiB(server.child.pid!);
    console.log(`server RSS: before ${before} KiB, peak while stopped ${peak} KiB, after ${after} KiB`);
    expect((peak - before) / 1024).toBeLessThan(100);
    expect((after - before) / 1024).toBeLessThan(100);
  }, 600_000);
});
