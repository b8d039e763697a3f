// The build's second step: the web console's static pages (plain files, no build of their own) next to
// the compiled console module, so that dist/src (what `npm pack` ships) serves them.
import { cpSync, rmSync } from 'node:fs';

const from = 'src/server/console/assets';
const to = 'dist/src/server/console/assets';
rmSync(to, { recursive: true, force: true });
cpSync(from, to, { recursive: true });
