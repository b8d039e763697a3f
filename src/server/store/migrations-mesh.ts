import type { Migration } from './migrations.js';

/** Schema migrations of the mesh feature: versions 100–199, append only (see migrations.ts). */
export const MESH_MIGRATIONS: readonly Migration[] = [];
