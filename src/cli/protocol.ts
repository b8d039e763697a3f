import type { Command } from 'commander';
import { describeRegistry } from '../protocol/registry.js';
import { SUPPORTED_VERSIONS } from '../protocol/handshake.js';
import { ERRORS, EXIT_CODES, type ErrorSpec } from '../errors.js';

/** `meshlink protocol …`: the wire protocol as data, for other implementations and debugging tools. */
export function registerProtocolCommands(program: Command): void {
  const protocol = program.command('protocol').description('describe the wire protocol');
  protocol
    .command('messages')
    .description('print the message registry (code, name, direction, scope, JSON Schema of the payload)')
    .option('--json', 'print JSON instead of a table')
    .action((opts: { json?: boolean }) => {
      const kinds = describeRegistry();
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ versions: SUPPORTED_VERSIONS, messages: kinds }, null, 2)}\n`);
        return;
      }
      for (const k of kinds) {
        process.stdout.write(`${k.hex}  ${k.name.padEnd(22)} ${k.direction.padEnd(16)} ${k.scope.padEnd(8)} ${k.description}\n`);
      }
    });
  protocol
    .command('errors')
    .description('print every error code: WebSocket close code, HTTP status and CLI exit code')
    .option('--json', 'print JSON instead of a table')
    .action((opts: { json?: boolean }) => {
      const rows = Object.entries(ERRORS as Record<string, ErrorSpec>).map(([code, spec]) => ({
        code,
        closeCode: spec.closeCode ?? null,
        status: spec.status ?? null,
        exit: EXIT_CODES[spec.exit],
        description: spec.description,
      }));
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
        return;
      }
      for (const r of rows) {
        process.stdout.write(`${r.code.padEnd(30)} ${String(r.closeCode ?? '-').padEnd(5)} ${String(r.status ?? '-').padEnd(4)} ${String(r.exit).padEnd(3)} ${r.description}\n`);
      }
    });
}
