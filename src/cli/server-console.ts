import { Command, Option } from 'commander';
import { z } from 'zod';
import * as api from '../admin-api/routes.js';
import { withFailureReport } from './failure.js';
import { withOperator } from './operator.js';

/**
 * `meshlink server console login`: a one-time link to the web console (docs/CONSOLE.md), valid 60 s,
 * from the running server's admin socket (`console.login`; exit 11 with no server running, 2 when the
 * server runs without --console-listen). The link opens a session as the operator who ran this.
 */
const loginOptions = z.object({ dataDir: z.string().optional(), json: z.boolean().default(false) });

export function registerConsoleCommands(server: Command): void {
  const consoleCmd = server.command('console').description('the web console (server start --console-listen)');
  consoleCmd
    .command('login')
    .description('print a one-time login link to the web console, valid 60 s')
    .addOption(new Option('--data-dir <dir>', 'server data dir (default: MESHLINK_DATA_DIR, /var/lib/meshlink/server as root, else ~/.local/share/meshlink/server)'))
    .option('--json', 'print {"url","expiresAt"}')
    .action(
      withFailureReport(async (raw: unknown) => {
        const opts = loginOptions.parse(raw);
        const link = await withOperator(opts.dataDir, (op) => op.call(api.consoleLogin, {}));
        if (opts.json) process.stdout.write(JSON.stringify({ url: link.url, expiresAt: link.expiresAt }) + '\n');
        else {
          process.stdout.write(link.url + '\n');
          process.stderr.write(`one-time link, valid until ${link.expiresAt}\n`);
        }
      }),
    );
}
