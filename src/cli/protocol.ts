import type { Command } from 'commander';

export function registerProtocolCommands(program: Command): void {
  program.command('protocol').description('protocol commands');
}
