import { readFileSync } from 'node:fs';

/**
 * The package version, read once from package.json. This module runs both compiled
 * (dist/src/version.js) and from source under the test runner (src/version.ts), so it looks in both places.
 */
function readVersion(): string {
  for (const rel of ['../../package.json', '../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'meshlink' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // try the next location
    }
  }
  return '0.0.0-unknown';
}

export const VERSION: string = readVersion();
