import { Command } from 'commander';
import { registerAgentCommands } from './agent.js';
import { VERSION } from '../version.js';
import { usageErrorsExit2 } from './failure.js';

/**
 * Entry point of the single-file agent bundle (scripts/bundle-agent.mjs): only `meshlink agent …`,
 * no server code (no SQLite), so the file runs anywhere Node 20 does:
 *   node meshlink-agent.mjs agent run --state-dir /var/lib/meshlink/agent
 */
const program = new Command();
program.name('meshlink').description('meshlink agent (single-file bundle)').version(VERSION);
usageErrorsExit2(program);
registerAgentCommands(program);
await program.parseAsync(process.argv);
