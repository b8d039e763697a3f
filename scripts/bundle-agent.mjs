#!/usr/bin/env node
// Builds the single-file agent bundle: dist/meshlink-agent.mjs (esbuild, ESM, Node 20).
//   node scripts/bundle-agent.mjs [--out FILE] [--marker TEXT] [--version V] [--metafile FILE]
// The bundle's build id is the SHA-256 of the file (printed on the last line as JSON), which is
// what `meshlink server upgrade set` offers and what the agent compares; --marker adds a comment so
// tests can make a second, different build from the same sources; --version bakes another version
// (banner and VERSION) than package.json's, so tests can make a newer or an older release. The
// banner is the bundle header src/contract/release.ts defines: `release sign` and `upgrade set` require it. --metafile writes esbuild's list of
// the bundle's inputs and their imports (JSON), which test/architecture/agent-bundle.test.ts reads.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : fallback;
};
const out = resolve(opt('--out', resolve(root, 'dist/meshlink-agent.mjs')));
const marker = opt('--marker', '');
const metafile = opt('--metafile', '');
const version = opt('--version', JSON.parse(readFileSync(resolve(root, 'package.json'), 'utf8')).version);

// version.ts reads package.json next to itself; a bundle has none, so the version is baked in.
const versionPlugin = {
  name: 'meshlink-version',
  setup(b) {
    b.onLoad({ filter: /[\\/]src[\\/]version\.ts$/ }, () => ({ contents: `export const VERSION = ${JSON.stringify(version)};`, loader: 'ts' }));
  },
};

const result = await build({
  entryPoints: [resolve(root, 'src/cli/agent-bundle.ts')],
  outfile: out,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // ws loads these native helpers optionally and works without them.
  external: ['bufferutil', 'utf-8-validate'],
  define: { __MESHLINK_AGENT_BUNDLE__: 'true' },
  banner: {
    js: [
      '#!/usr/bin/env node',
      `// meshlink-agent-bundle version=${version}${marker ? ` marker=${marker.replace(/[^\w.-]/g, '_')}` : ''}`,
      // CommonJS dependencies call require(); give them one.
      "import { createRequire as __mlCreateRequire } from 'node:module'; const require = __mlCreateRequire(import.meta.url);",
    ].join('\n'),
  },
  plugins: [versionPlugin],
  legalComments: 'none',
  logLevel: 'warning',
  metafile: metafile !== '',
});
if (metafile) writeFileSync(resolve(metafile), JSON.stringify(result.metafile));
const sha256 = createHash('sha256').update(readFileSync(out)).digest('hex');
process.stdout.write(JSON.stringify({ bundle: out, version, buildId: sha256, sha256 }) + '\n');
