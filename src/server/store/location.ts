/** Store locations: a SQLite file's path, or a PostgreSQL URL (pure: no driver is loaded here). */

/** True for a store location that names PostgreSQL (`postgres://` or `postgresql://`). */
export function isPostgresUrl(location: string): boolean {
  return /^postgres(ql)?:\/\//i.test(location);
}

/**
 * Query parameters of a PostgreSQL URL that pg reads as secrets (pg-connection-string turns every
 * parameter into a connection option: `?password=…` logs in like the userinfo's password).
 */
const SECRET_URL_PARAMS = ['password', 'sslpassword'];

/** A PostgreSQL URL with its passwords replaced, fit for logs and error messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    for (const name of SECRET_URL_PARAMS) if (u.searchParams.has(name)) u.searchParams.set(name, '***');
    return u.toString();
  } catch {
    return 'postgres://(unparsable URL)';
  }
}
