import { withFailureReport } from './failure.js';
import { readFile, stat } from 'node:fs/promises';
import { Command, Option } from 'commander';
import { z } from 'zod';
import { parsePolicy, POLICY_MAX_BYTES, type Policy } from '../admin-api/policy.js';
import * as api from '../admin-api/routes.js';
import { MeshlinkError } from '../errors.js';
import { withOperator } from './operator.js';
import { printable } from './table.js';

/**
 * Mesh subcommands of `meshlink server` (docs/MESH.md):
 *   policy set FILE | policy show, nodes tag ID_OR_HOSTNAME TAG..., events tail [--node ID],
 *   mesh rotate-keys NODE, mesh rotate-signing-key.
 * With a running server they go through its admin socket (which notifies agents); with none, policy
 * and tags are written to the store and take effect at the next start.
 * Exit codes as for the other server commands (src/errors.ts): 2 invalid input (policy file, tag),
 * 3 node not found, 5 data dir not initialized, 1 anything else.
 */

const action = withFailureReport;


const jsonOptions = z.object({ dataDir: z.string().optional(), json: z.boolean().default(false) });
const dataDirOption = () => new Option('--data-dir <dir>', 'server data dir (default as for server start)');

async function readPolicyFile(file: string): Promise<Policy> {
  const info = await stat(file).catch((err: NodeJS.ErrnoException) => {
    throw new MeshlinkError('ML_ERR_MESH_POLICY', `cannot read ${file}: ${err.code ?? err.message}`);
  });
  if (info.size > POLICY_MAX_BYTES) throw new MeshlinkError('ML_ERR_MESH_POLICY', `${file} is larger than ${POLICY_MAX_BYTES} bytes`);
  return parsePolicy(await readFile(file, 'utf8'));
}

function printFeed(entries: api.FeedEntry[]): void {
  for (const e of entries) process.stdout.write(`${JSON.stringify(e)}\n`);
}

export function registerMeshCommands(server: Command): void {
  const policy = server.command('policy').description('mesh network policy: which tagged nodes may reach which');
  policy
    .command('set')
    .description('replace the policy with FILE ({"rules":[{"from":TAG,"to":TAG}]}, "*" = any node; an invalid file changes nothing)')
    .argument('<file>', 'policy JSON file')
    .addOption(dataDirOption())
    .option('--json', 'print {"policyId","affectedNodes","live"}')
    .action(
      action(async (file: string, raw: unknown) => {
        const opts = jsonOptions.parse(raw);
        const parsed = await readPolicyFile(file);
        const { value, live } = await withOperator(opts.dataDir, async (op) => ({ value: await op.call(api.setPolicy, { policy: parsed }), live: op.live }));
        if (opts.json) {
          process.stdout.write(JSON.stringify({ ...value, live }) + '\n');
          return;
        }
        process.stdout.write(
          live
            ? `policy ${value.policyId} in force; ${value.affectedNodes.length} node(s) notified\n`
            : `policy ${value.policyId} stored; no server is running, nodes are told at its next start\n`,
        );
      }),
    );
  policy
    .command('show')
    .description('print the policy in force (null = no policy: full mesh)')
    .addOption(dataDirOption())
    .action(
      action(async (raw: unknown) => {
        const opts = z.object({ dataDir: z.string().optional() }).parse(raw);
        const value = await withOperator(opts.dataDir, (op) => op.call(api.showPolicy, {}));
        process.stdout.write(`${JSON.stringify(value.policy, null, 2)}\n`);
        process.stderr.write(value.policy === null ? 'no policy: every node sees every node\n' : `policy ${value.policyId}\n`);
      }),
    );

  const nodes = server.commands.find((c) => c.name() === 'nodes') ?? server.command('nodes').description('enrolled nodes');
  nodes
    .command('tag')
    .description('set the tags of a node (or --add / --remove them); its peers follow the policy at once')
    .argument('<idOrHostname>', 'node id, or a hostname that names exactly one live node')
    .argument('<tags...>', 'tags: letters, digits, . _ - (at most 64 characters)')
    .option('--add', 'add the tags to the node’s tags', false)
    .option('--remove', 'remove the tags from the node’s tags', false)
    .addOption(dataDirOption())
    .option('--json', 'print {"id","hostname","tags","affectedNodes"}')
    .action(
      action(async (idOrHostname: string, tags: string[], raw: unknown) => {
        const opts = z.object({ dataDir: z.string().optional(), add: z.boolean(), remove: z.boolean(), json: z.boolean().default(false) }).parse(raw);
        if (opts.add && opts.remove) throw new MeshlinkError('ML_ERR_USAGE', '--add and --remove exclude each other');
        const mode = opts.add ? 'add' : opts.remove ? 'remove' : 'set';
        const value = await withOperator(opts.dataDir, (op) => op.call(api.tagNode, { node: idOrHostname, tags, mode }));
        if (opts.json) process.stdout.write(JSON.stringify(value) + '\n');
        else process.stdout.write(`${value.id} (${printable(value.hostname)}) tags: ${value.tags.length > 0 ? value.tags.join(', ') : '(none)'}\n`);
      }),
    );

  const events = server.command('events').description('the mesh event stream');
  events
    .command('tail')
    .description('print recent mesh events and drift reports as JSON lines, then follow (secrets redacted)')
    .option('--node <idOrHostname>', 'only this node')
    .option('--last <n>', 'how many recent entries to print first', '20')
    .option('--no-follow', 'print the recent entries and exit')
    .addOption(dataDirOption())
    .action(
      action(async (raw: unknown) => {
        const opts = z.object({ dataDir: z.string().optional(), node: z.string().max(253).optional(), last: z.coerce.number().int().min(0).max(10_000), follow: z.boolean() }).parse(raw);
        await withOperator(opts.dataDir, async (op) => {
          const node = opts.node;
          const first = await op.call(api.meshFeed, { last: opts.last, ...(node ? { node } : {}) });
          printFeed(first.entries);
          if (!op.live) {
            process.stderr.write('no server is running: printed the stored entries only\n');
            return;
          }
          let after = first.last;
          let stop = !opts.follow;
          process.once('SIGINT', () => (stop = true));
          process.once('SIGTERM', () => (stop = true));
          // Said once the first page is printed: entries from here on are followed. A script that starts a tail and
          // then acts waits for this line, or it may act before the first page and never see its own events.
          if (!stop) process.stderr.write('following new entries (Ctrl-C to stop)\n');
          while (!stop) {
            const next = await op.call(api.meshFeed, { after, waitMs: 10_000, ...(node ? { node } : {}) }, { timeoutMs: 20_000 });
            printFeed(next.entries);
            after = next.last;
          }
        });
      }),
    );

  const meshCmd = server.command('mesh').description('mesh key operations (need a running server)');
  meshCmd
    .command('rotate-keys')
    .description('ask a node to generate a new WireGuard key (its peers get peer_key_rotated)')
    .argument('<idOrHostname>', 'node id or unique hostname')
    .addOption(dataDirOption())
    .option('--json', 'print {"nodeId","seq"}')
    .action(
      action(async (node: string, raw: unknown) => {
        const opts = jsonOptions.parse(raw);
        const value = await withOperator(opts.dataDir, (op) => op.call(api.rotateNodeKey, { node }));
        process.stdout.write(opts.json ? JSON.stringify(value) + '\n' : `rotate_keys sent to ${value.nodeId} (event ${value.seq})\n`);
      }),
    );
  meshCmd
    .command('notify')
    .description('send a signed event to one node, or with --all to every node (offline nodes get it when they reconnect)')
    .argument('[idOrHostname]', 'node id or unique hostname (or --all)')
    .option('--all', 'every node in the mesh')
    .option('--action <name>', 'an action_request event naming this action')
    .option('--arg <key=value>', 'an argument of the action (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--secrets <key>', 'a node_secrets_updated event naming this secret (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .addOption(dataDirOption())
    .option('--json', 'print {"type","nodes","nodeId","seq"}')
    .action(
      action(async (node: string | undefined, raw: unknown) => {
        const opts = z
          .object({ all: z.boolean().optional(), action: z.string().min(1).max(128).optional(), arg: z.array(z.string()).default([]), secrets: z.array(z.string().min(1).max(256)).max(1024).optional(), dataDir: z.string().optional(), json: z.boolean().default(false) })
          .parse(raw);
        if ((node === undefined) === (opts.all !== true)) throw new MeshlinkError('ML_ERR_USAGE', 'name one node, or give --all');
        if ((opts.action === undefined) === (opts.secrets === undefined)) throw new MeshlinkError('ML_ERR_USAGE', 'give either --action NAME or --secrets KEY');
        const args: Record<string, string> = {};
        for (const a of opts.arg) {
          const eq = a.indexOf('=');
          if (eq <= 0) throw new MeshlinkError('ML_ERR_USAGE', `--arg ${a}: expected key=value`);
          args[a.slice(0, eq)] = a.slice(eq + 1);
        }
        const target = node !== undefined ? { node } : {};
        const body: z.input<typeof api.notify.input> =
          opts.action !== undefined
            ? { type: 'action_request', ...target, payload: { action: opts.action, ...(opts.arg.length > 0 ? { args } : {}) } }
            : { type: 'node_secrets_updated', ...target, payload: { keys: opts.secrets ?? [] } };
        const value = await withOperator(opts.dataDir, (op) => op.call(api.notify, body, { timeoutMs: 60_000 }));
        if (opts.json) process.stdout.write(JSON.stringify(value) + '\n');
        else process.stdout.write(value.nodeId ? `${value.type} sent to ${value.nodeId} (event ${value.seq})\n` : `${value.type} sent to ${value.nodes} nodes\n`);
      }),
    );
  meshCmd
    .command('rotate-signing-key')
    .description('create a new event-signing key, announced to every node under the current one')
    .addOption(dataDirOption())
    .option('--json', 'print {"keyId","previousKeyId"}')
    .action(
      action(async (raw: unknown) => {
        const opts = jsonOptions.parse(raw);
        const value = await withOperator(opts.dataDir, (op) => op.call(api.rotateSigningKey, {}));
        if (opts.json) {
          process.stdout.write(JSON.stringify(value) + '\n');
          return;
        }
        process.stdout.write(`signing key ${value.keyId} in use; ${value.previousKeyId} accepted during the transition\n`);
      }),
    );
}
