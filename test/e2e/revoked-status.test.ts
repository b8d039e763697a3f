import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { cli, enrollAgent, freePort, spawnCli, startServerProc, tempDir, type ServerProc } from './harness.js';

/**
 * A node removed on the server: its running agent is closed with 4401 (session_revoked), exits with
 * the documented 78, and `agent status` (human and --json) says it was revoked, when, and that the
 * way back is a re-enrollment; a re-enrollment clears it. Real server, real agent processes.
 */
describe('agent status after a revocation (real processes)', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;

  beforeAll(async () => {
    dir = await tempDir('ml-revoked-');
    server = await startServerProc(join(dir.path, 'srv'), await freePort());
  }, 90_000);
  afterAll(async () => {
    await server?.stop('SIGKILL');
    await dir?.cleanup();
  });

  it('records the revocation in status.json, exits 78, and status shows it with the next step until a re-enrollment', async () => {
    const stateDir = join(dir.path, 'agent');
    const { nodeId } = await enrollAgent(server, stateDir, 'doomed-host');
    const agent = spawnCli(['agent', 'run', '--state-dir', stateDir]);
    await agent.waitForLog('connected');
    const before = JSON.parse((await cli(['agent', 'status', '--state-dir', stateDir, '--json'])).stdout) as { revoked: unknown };
    expect(before.revoked).toBeNull();

    const removedAt = Date.now();
    const removed = await cli(['server', 'nodes', 'remove', nodeId, '--data-dir', server.dataDir]);
    expect(removed.code, removed.stderr).toBe(0);
    expect(await agent.exited).toBe(78);

    const json = await cli(['agent', 'status', '--state-dir', stateDir, '--json']);
    expect(json.code, json.stderr).toBe(0);
    const report = JSON.parse(json.stdout) as { nodeId: string; certSerial: string; revoked: { at: string; how: string; certSerial: string; nextStep: string } | null };
    expect(report.revoked).not.toBeNull();
    expect(report.revoked!.how).toMatch(/4401|ML_ERR_CERT_REVOKED/);
    expect(report.revoked!.certSerial).toBe(report.certSerial);
    expect(Date.parse(report.revoked!.at)).toBeGreaterThanOrEqual(removedAt - 1000);
    expect(report.revoked!.nextStep).toMatch(/re-enroll/i);

    const human = await cli(['agent', 'status', '--state-dir', stateDir]);
    expect(human.stdout).toContain(`REVOKED:      at ${report.revoked!.at}`);
    expect(human.stdout).toMatch(/next step: .*meshlink server token create/);

    // Started again on the revoked identity, the agent is refused at once and exits 78 again.
    const again = spawnCli(['agent', 'run', '--state-dir', stateDir]);
    expect(await again.exited).toBe(78);

    // A re-enrollment replaces the identity: the revocation no longer applies.
    const t = JSON.parse((await cli(['server', 'token', 'create', '--data-dir', server.dataDir, '--json'])).stdout) as { token: string };
    const re = await cli(['agent', 'enroll', '--server', server.url, '--ca-pin', server.caPin, '--state-dir', stateDir, '--hostname', 'doomed-host', '--force', '--json'], { MESHLINK_ENROLL_TOKEN: t.token });
    expect(re.code, re.stderr).toBe(0);
    const after = JSON.parse((await cli(['agent', 'status', '--state-dir', stateDir, '--json'])).stdout) as { revoked: unknown };
    expect(after.revoked).toBeNull();
  }, 120_000);
});
