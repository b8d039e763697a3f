import { Option, type Command } from 'commander';
import { z } from 'zod';
import * as api from '../admin-api/routes.js';
import { withFailureReport } from './failure.js';
import { withOperator } from './operator.js';
import { printTable } from './table.js';

/**
 * `meshlink server token list [--json]` and `meshlink server token revoke ID [--json]` (also spelled
 * `server tokens …`): the `tokens.list` and `tokens.revoke` routes, on the running server or, with none,
 * on the store. Listings name a token by its public id; the token itself is shown once, at creation.
 */
const listOptions = z.object({ dataDir: z.string().optional(), json: z.boolean().default(false), limit: z.coerce.number().int().min(1).max(10_000).default(100) });
const revokeOptions = z.object({ dataDir: z.string().optional(), json: z.boolean().default(false) });
const dataDirOption = () => new Option('--data-dir <dir>', 'server data dir (default: MESHLINK_DATA_DIR, /var/lib/meshlink/server as root, else ~/.local/share/meshlink/server)');

export function registerTokenCommands(server: Command): void {
  const token = server.commands.find((c) => c.name() === 'token') ?? server.command('token').description('enrollment tokens');
  if (!token.aliases().includes('tokens')) token.alias('tokens');

  token
    .command('list')
    .description('list enrollment tokens, newest first: id, state, created, expiry, uses, tags (never the token)')
    .addOption(dataDirOption())
    .option('--limit <n>', 'tokens to show', '100')
    .option('--json', 'print a JSON array')
    .action(
      withFailureReport(async (raw: unknown) => {
        const opts = listOptions.parse(raw);
        const list = await withOperator(opts.dataDir, (op) => op.call(api.listTokens, { limit: opts.limit }));
        if (opts.json) {
          process.stdout.write(JSON.stringify(list) + '\n');
          return;
        }
        printTable([
          ['ID', 'STATE', 'CREATED', 'EXPIRES', 'USES', 'TAGS', 'NODE'],
          ...list.map((t) => [t.id, t.state, t.createdAt, t.expiresAt, String(t.uses), t.tags && t.tags.length > 0 ? t.tags.join(',') : '-', t.nodeId ?? '-']),
        ]);
      }),
    );

  token
    .command('revoke')
    .description('revoke an unused enrollment token: it no longer enrolls')
    .argument('<id>', 'the token id (`server token list`)')
    .addOption(dataDirOption())
    .option('--json', 'print the revoked token as `token list --json` shows it')
    .action(
      withFailureReport(async (id: string, raw: unknown) => {
        const opts = revokeOptions.parse(raw);
        const t = await withOperator(opts.dataDir, (op) => op.call(api.revokeToken, { id }));
        if (opts.json) process.stdout.write(JSON.stringify(t) + '\n');
        else process.stdout.write(`revoked token ${t.id} (revoked at ${t.revokedAt ?? '-'})\n`);
      }),
    );
}
