#!/usr/bin/env node
import { Command } from 'commander';
import { registerProtocolCommands } from './protocol.js';
import { registerServerCommands } from './server.js';
import { registerAgentCommands } from './agent.js';
import { registerDemoCommand } from './demo.js';
import { registerReleaseCommands } from './release.js';
import { registerCompletionCommand } from './completion.js';
import { versionText } from './version-text.js';
import { usageErrorsExit2 } from './failure.js';

const program = new Command();
program
  .name('meshlink')
  .description('Self-hosted agent transport: mTLS WebSocket, multiplexed streams, WireGuard mesh control plane')
  .version(versionText(), '-V, --version', 'print the version, the build and the Node.js version')
  .showHelpAfterError();
// Before any command is registered, so that every command group and subcommand inherits it.
usageErrorsExit2(program);

registerServerCommands(program);
registerAgentCommands(program);
registerProtocolCommands(program);
registerReleaseCommands(program);
registerDemoCommand(program);
// Last: it describes every command registered before it.
registerCompletionCommand(program);

await program.parseAsync(process.argv);
