import type { Command } from 'commander';

/** Subcommands of `meshlink server` that features add (mesh policy, operations, ...). */
export function registerServerExtensions(_server: Command): void {}
