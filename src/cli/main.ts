#!/usr/bin/env node
import { Command } from 'commander';
import { registerProtocolCommands } from './protocol.js';
import { registerServerCommands } from './server.js';
import { registerAgentCommands } from './agent.js';
import { registerDemoCommand } from './demo.js';
import { VERSION } from '../version.js';

const program = new Command();
program
  .name('meshlink')
  .description('Self-hosted agent transport: mTLS WebSocket, multiplexed streams, WireGuard mesh control plane')
  .version(VERSION)
  .showHelpAfterError();

registerServerCommands(program);
registerAgentCommands(program);
registerProtocolCommands(program);
registerDemoCommand(program);

await program.parseAsync(process.argv);
