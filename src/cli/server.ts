import type { Command } from 'commander';

export function registerServerCommands(program: Command): void {
  program.command('server').description('server commands');
}
