import type { Migration } from './migrations.js';

/** Schema migrations of the ops feature: versions 200–299, append only (see migrations.ts). */
export const OPS_MIGRATIONS: readonly Migration[] = [];
