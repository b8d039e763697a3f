/**
 * An origin and nothing else: scheme, host and optional port, no path, query, fragment or
 * credentials. Returns the normalised origin (`https://mesh.example.com:443` →
 * `https://mesh.example.com`), or null for anything else or another scheme.
 */
export function plainOrigin(text: string, protocols: readonly string[]): string | null {
  try {
    const url = new URL(text);
    const plain = protocols.includes(url.protocol) && url.hostname !== '' && url.username === '' && url.password === '' && url.pathname === '/' && url.search === '' && url.hash === '';
    return plain ? url.origin : null;
  } catch {
    return null;
  }
}

/**
 * A server's public URL as both roles hold it: `https://host[:port]`. The server accepts it from
 * `--public-url`; agents accept it from `welcome.serverUrl`.
 */
export function serverOrigin(text: string): string | null {
  return plainOrigin(text, ['https:']);
}
