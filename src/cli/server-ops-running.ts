import { Option, type Command } from 'commander';
import { z } from 'zod';
import * as api from '../admin-api/routes.js';
import { MeshlinkError } from '../errors.js';
import { withFailureReport } from './failure.js';
import { withOperator } from './operator.js';
import { printTable } from './table.js';

/**
 * `meshlink server ops list [--json]` and `meshlink server ops end ID [--json]` (docs/OPERATIONS.md):
 * the streaming operations running now on the server (exec, logs, cp, tunnels, actions) and ending one
 * (`ops.list`, `ops.end`). Both need the running server: nothing runs without one (exit 11).
 */
const listOptions = z.object({ dataDir: z.string().optional(), json: z.boolean().default(false) });
const dataDirOption = () => new Option('--data-dir <dir>', 'server data dir (default: MESHLINK_DATA_DIR or the documented default)');

export function registerRunningOpsCommands(server: Command): void {
  const ops = server.commands.find((c) => c.name() === 'ops') ?? server.command('ops').description('streaming operations running on the server');

  ops
    .command('list')
    .description('the operations running now: id, operation, node, operator, started, bytes each way')
    .addOption(dataDirOption())
    .option('--json', 'print a JSON array')
    .action(
      withFailureReport(async (raw: unknown) => {
        const o = listOptions.parse(raw);
        const list = await withOperator(o.dataDir, (op) => op.call(api.listOperations, {}));
        if (o.json) {
          process.stdout.write(JSON.stringify(list) + '\n');
          return;
        }
        printTable([
          ['ID', 'OP', 'NODE', 'OPERATOR', 'TARGET', 'STARTED', 'TO NODE', 'FROM NODE'],
          ...list.map((r) => [String(r.id), r.op, r.hostname, r.actor, r.target ?? '-', r.startedAt, String(r.toNode), String(r.fromNode)]),
        ]);
      }),
    );

  ops
    .command('end')
    .description('end a running operation: its agent stream is reset and its operator’s command fails with ML_ERR_OPS_ENDED')
    .argument('<id>', 'the operation id (`server ops list`)')
    .addOption(dataDirOption())
    .option('--json', 'print the ended operation as `ops list --json` shows it')
    .action(
      withFailureReport(async (idText: string, raw: unknown) => {
        const o = listOptions.parse(raw);
        if (!/^[1-9][0-9]{0,15}$/.test(idText)) throw new MeshlinkError('ML_ERR_USAGE', `an operation id is a positive number (\`server ops list\`): ${idText}`);
        const r = await withOperator(o.dataDir, (op) => op.call(api.endOperation, { id: Number(idText) }));
        if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
        else process.stdout.write(`ended operation ${r.id} (${r.op} on ${r.hostname}, started by ${r.actor})\n`);
      }),
    );
}
