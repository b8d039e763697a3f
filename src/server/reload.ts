import type { ServerConfig } from './config.js';
import { redactUrl } from './store/location.js';

/**
 * Live reload of the server's config (SIGHUP, docs/SERVER.md "Reload"). The config stays what
 * config.ts makes it: validated once and frozen. A reload parses a whole new config the same way and
 * hands it to `applyReloadable`, the one place that swaps parts of a running server: for each key
 * that differs, a key in RELOADABLE is applied through its setter; any other key is reported as
 * needing a restart and keeps its running value. The result is the config now in effect, frozen.
 *
 * What is reloadable is what the server reads at use time as a plain value: the log level, the
 * first-byte deadline of new connections, the lifetime of certificates issued from now on, the rate
 * of failed enrollments per address. The rest (listen addresses, the data dir, the key file, the
 * heartbeat a session was told in its welcome, …) is bound at start.
 */

/** The setters a running server offers for its reloadable keys. */
export interface ReloadTargets {
  logLevel(level: ServerConfig['logLevel']): void;
  clientHelloTimeoutMs(ms: number): void;
  certLifetimeMs(ms: number): void;
  enrollFailuresPerMinute(perMinute: number): void;
}

export const RELOADABLE: ReadonlySet<string> = new Set<keyof ReloadTargets>(['logLevel', 'clientHelloTimeoutMs', 'certLifetimeMs', 'enrollFailuresPerMinute']);

export interface ReloadChange {
  key: string;
  from: unknown;
  to: unknown;
  /** true: in effect now; false: the running value stays until a restart. */
  applied: boolean;
}

export function applyReloadable(running: ServerConfig, next: ServerConfig, targets: ReloadTargets): { config: ServerConfig; changes: ReloadChange[] } {
  const changes: ReloadChange[] = [];
  const effective: Record<string, unknown> = { ...running };
  const keys = [...new Set([...Object.keys(running), ...Object.keys(next)])].sort();
  for (const key of keys) {
    const from = (running as Record<string, unknown>)[key];
    const to = (next as Record<string, unknown>)[key];
    if (same(from, to)) continue;
    const applied = RELOADABLE.has(key);
    if (applied) {
      (targets[key as keyof ReloadTargets] as (value: unknown) => void)(to);
      effective[key] = to;
    }
    // A change is logged: a store URL may carry the database's password.
    const shown = (v: unknown): unknown => (key === 'store' && typeof v === 'string' ? redactUrl(v) : (v ?? null));
    changes.push({ key, from: shown(from), to: shown(to), applied });
  }
  return { config: Object.freeze(effective) as ServerConfig, changes };
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}
