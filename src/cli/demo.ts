import type { Command } from 'commander';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentRunner } from '../agent/connection.js';
import { enroll } from '../agent/enroll.js';
import { parseServerConfig } from '../server/config.js';
import { AdminClient } from '../admin-api/client.js';
import * as api from '../admin-api/routes.js';
import { startServer } from '../server/server.js';
import { createLogger } from '../util/logger.js';
import { VERSION } from '../version.js';

/**
 * `meshlink demo`: the whole system in one command, in a temporary directory: a server (internal CA,
 * store, gateway), a one-time token, an agent that enrolls with it (CA pinned) and connects over
 * mutual TLS, and the node list showing it online. Everything is removed afterwards.
 */
export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('start a server and one agent in a temporary directory and show the agent online')
    .option('--keep-running', 'keep both running until Ctrl-C instead of exiting')
    .action(async (opts: { keepRunning?: boolean }) => {
      const dir = await mkdtemp(join(tmpdir(), 'meshlink-demo-'));
      const say = (line: string): void => void process.stdout.write(`${line}\n`);
      const quiet = createLogger({ name: 'meshlink-demo', level: 'silent' });
      let stop = async (): Promise<void> => {};
      try {
        say(`meshlink ${VERSION} demo in ${dir}`);
        say('1. starting the control-plane server (new internal CA, SQLite store, mTLS gateway on 127.0.0.1)…');
        const server = await startServer(parseServerConfig({ dataDir: join(dir, 'server'), listen: { host: '127.0.0.1', port: 0 }, caKeyType: 'rsa2048', logLevel: 'silent' }), { logger: quiet });
        say(`   listening on ${server.publicUrl}, CA pin ${server.caPin}`);
        const admin = new AdminClient(server.adminSocketPath);
        const token = await admin.call(api.createToken, { ttlMs: 10 * 60_000 });
        say('2. created a one-time enrollment token; the operator would paste:');
        say(`   ${token.enrollCommand.replace(token.token, '<token>')}`);
        const stateDir = join(dir, 'agent');
        const enrolled = await enroll({ server: server.publicUrl, token: token.token, caPins: [server.caPin], stateDir, hostname: 'demo-host' }, { agentVersion: VERSION });
        say(`3. the agent enrolled: node ${enrolled.identity.nodeId}, certificate valid until ${enrolled.identity.cert.notAfter.toISOString()}`);
        const runner = new AgentRunner({ stateDir, logger: quiet });
        const connected = new Promise<void>((resolve) => runner.once('connected', () => resolve()));
        const running = runner.run();
        await connected;
        const rtt = await new Promise<number>((resolve) => runner.once('heartbeat', resolve));
        say(`4. the agent is connected over one outbound mTLS WebSocket; heartbeat round trip ${rtt} ms`);
        say('5. meshlink server nodes list:');
        for (const n of await admin.call(api.listNodes, {})) {
          say(`   ${n.id}  ${n.hostname}  ${n.online ? 'online' : 'offline'}  agent ${n.agentVersion ?? '?'}  cert ${n.certSerial}`);
        }
        stop = async () => {
          runner.stop();
          await running;
          await server.close();
        };
        if (opts.keepRunning) {
          say('running; press Ctrl-C to stop');
          await new Promise<void>((resolve) => {
            process.once('SIGINT', () => resolve());
            process.once('SIGTERM', () => resolve());
          });
        }
      } finally {
        await stop();
        await rm(dir, { recursive: true, force: true });
      }
      say('done: stopped both and removed the temporary directory');
    });
}
