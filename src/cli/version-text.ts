import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { VERSION } from '../version.js';

/**
 * What `--version` prints: the version, the build, and the Node.js it runs on. A single-file agent
 * bundle's build id is the SHA-256 of the file, the same id its agent reports in hello and
 * `meshlink server upgrade status` shows; the npm package has no single file to name.
 */
export function versionText(bundleFile?: string): string {
  const build = bundleFile ? `build ${createHash('sha256').update(readFileSync(bundleFile)).digest('hex')}` : 'npm package';
  return `meshlink ${VERSION} (${build}, node ${process.version})`;
}
