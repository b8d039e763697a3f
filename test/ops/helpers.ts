import { join } from 'node:path';
import { AgentRunner } from '../../src/agent/connection.js';
import { enroll } from '../../src/agent/enroll.js';
import { openFeatureContext } from '../../src/agent/feature.js';
import { opsAgentFeature, type OpsAgentHandle } from '../../src/agent/ops/index.js';
import type { OpsOptionsInput } from '../../src/agent/ops/options.js';
import { openAgentLog } from '../../src/agent/state/log-file.js';
import { createEnrollmentToken } from '../../src/server/nodes.js';
import { tempDir, startTestServer, type TestServer } from '../server/helpers.js';
import type { ServerConfigInput } from '../../src/server/config.js';
import type { Logger } from '../../src/util/logger.js';

/** A real server (mTLS gateway, SQLite, admin socket) and a real in-process agent with the ops feature. */
export interface OpsPair {
  ts: TestServer;
  socket: string;
  nodeId: string;
  stateDir: string;
  runner: AgentRunner;
  ops: OpsAgentHandle;
  logger: Logger;
  running: Promise<number>;
  /** Waits until the node has an open session on the server. */
  online(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

export async function waitUntil(what: string, probe: () => boolean | Promise<boolean>, timeoutMs = 20_000, everyMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export async function startOpsPair(
  options: OpsOptionsInput = {},
  extra: { server?: Partial<ServerConfigInput>; hostname?: string; restart?: () => void; trialCommand?: (file: string) => { command: string; args: string[] }; logLevel?: string } = {},
): Promise<OpsPair> {
  const ts = await startTestServer(extra.server ?? {});
  const agentDir = await tempDir('ml-ops-agent-');
  const stateDir = join(agentDir.path, 'state');
  const { token } = await createEnrollmentToken(ts.server.store, { ttlMs: 60_000 });
  const { identity } = await enroll({ server: ts.url, token, caPins: [ts.server.caPin], stateDir, hostname: extra.hostname ?? 'ops-host' });
  const { logger, file: logFile } = openAgentLog(stateDir, extra.logLevel ?? 'info', { stdout: false });
  // The in-process agent's log lines would flood the test output: the file is what `logs` tails.
  // Short heartbeat intervals in some tests: keep the agent's half-open detection well above a
  // loaded CI machine's event-loop stalls (it is not what these tests measure).
  const runner = new AgentRunner({ stateDir, logger, backoff: { baseMs: 50, maxMs: 500 }, livenessIntervals: 15 });
  // The core context `agent run` gives its features: the log file for `logs`, the upload channel for audit records.
  const core = openFeatureContext(runner, { stateDir, logger, logFile });
  const ops = await opsAgentFeature(runner, { ...core.context, options, ...(extra.restart ? { restart: extra.restart } : {}), ...(extra.trialCommand ? { trialCommand: extra.trialCommand } : {}) });
  const running = runner.run();
  const pair: OpsPair = {
    ts,
    socket: ts.server.adminSocketPath,
    nodeId: identity.nodeId,
    stateDir,
    runner,
    ops,
    logger,
    running,
    online: (timeoutMs = 20_000) => waitUntil('agent online', () => ts.server.sessions?.current(identity.nodeId) !== undefined, timeoutMs),
    async stop() {
      runner.stop();
      await running.catch(() => {});
      ops.close();
      core.close();
      await ts.stop();
      await agentDir.cleanup();
    },
  };
  await pair.online();
  return pair;
}
