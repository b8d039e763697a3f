import { configFilePath, type ConfigFileSpec } from './config-file.js';

/**
 * Where `server start` finds its config file (src/cli/config-file.ts reads it; docs/SERVER.md,
 * "Config file"): `--config FILE` (must exist), else MESHLINK_SERVER_CONFIG, else
 * /etc/meshlink/server.json if present. A relative `dataDir` or `keyFile` in it is resolved against the file's
 * directory.
 */
export const DEFAULT_SERVER_CONFIG = '/etc/meshlink/server.json';

export const SERVER_CONFIG_FILE: ConfigFileSpec = Object.freeze({
  envVar: 'MESHLINK_SERVER_CONFIG',
  defaultPath: DEFAULT_SERVER_CONFIG,
  pathOptions: new Set(['dataDir', 'keyFile']),
});

/** Which file to read: an explicit one must exist; the default is optional. */
export function serverConfigPath(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string | null {
  return configFilePath(SERVER_CONFIG_FILE, flag, env);
}
