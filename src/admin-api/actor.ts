import { userInfo } from 'node:os';

/**
 * Who an operator is, for the audit log: the local OS user running the CLI, `name(uid N)`. The admin
 * socket's file permission is the authentication; this only names the person, one way everywhere
 * (the JSON routes send it as `x-meshlink-actor`, the tunnel in its request).
 */
export function localActor(): string {
  try {
    const u = userInfo();
    return `${u.username.replace(/[^\x21-\x7e]/g, '?').slice(0, 64) || 'unknown'}(uid ${u.uid})`;
  } catch {
    return 'unknown';
  }
}

/** What the server keeps of an actor it is sent: printable ASCII, at most 128 characters; anything else is "unknown". */
export const ACTOR_RE = /^[\x20-\x7e]{1,128}$/;
