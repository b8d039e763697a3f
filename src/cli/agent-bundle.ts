import { Command } from 'commander';
import { registerAgentCommands } from './agent.js';
import { fileURLToPath } from 'node:url';
import { versionText } from './version-text.js';
import { usageErrorsExit2 } from './failure.js';

/**
 * Entry point of the single-file agent bundle (scripts/bundle-agent.mjs): only `meshlink agent …`,
 * no server code (no SQLite), so the file runs anywhere Node 20 does:
 *   node meshlink-agent.mjs agent run --state-dir /var/lib/meshlink/agent
 */
const program = new Command();
// The bundle is this very file: its SHA-256 is the build id.
program.name('meshlink').description('meshlink agent (single-file bundle)').version(versionText(fileURLToPath(import.meta.url)), '-V, --version', 'print the version, the build id and the Node.js version');
usageErrorsExit2(program);
registerAgentCommands(program);
await program.parseAsync(process.argv);
