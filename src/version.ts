import { createRequire } from 'node:module';

const pkg = createRequire(import.meta.url)('../../package.json') as { version: string };

/** The package version, read once from package.json (dist/src/version.js → ../../package.json). */
export const VERSION: string = pkg.version;
