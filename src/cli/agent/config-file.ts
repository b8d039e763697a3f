import { configFilePath, type ConfigFileSpec } from '../config-file.js';

/**
 * Where `agent run` finds its config file (src/cli/config-file.ts reads it; docs/AGENT.md, "Config
 * file"): `--config FILE` (must exist), else MESHLINK_AGENT_CONFIG, else /etc/meshlink/agent.json if
 * present. Relative paths of the path options are resolved against the file's directory.
 */
export const DEFAULT_AGENT_CONFIG = '/etc/meshlink/agent.json';

export const AGENT_CONFIG_FILE: ConfigFileSpec = Object.freeze({
  envVar: 'MESHLINK_AGENT_CONFIG',
  defaultPath: DEFAULT_AGENT_CONFIG,
  pathOptions: new Set(['stateDir', 'transferDir', 'hooksDir', 'bundle']),
});

/** Which file to read: an explicit one must exist; the default is optional. */
export function agentConfigPath(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string | null {
  return configFilePath(AGENT_CONFIG_FILE, flag, env);
}
