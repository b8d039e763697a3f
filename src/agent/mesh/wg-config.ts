import { join } from 'node:path';
import { writeFileAtomic } from '../../util/atomic-file.js';
import type { MeshState } from '../../contract/mesh-events.js';

/**
 * The desired WireGuard configuration in wg-quick format (`<stateDir>/wg-meshlink.conf`, mode 0600:
 * it holds the private key and the PSKs). Always rendered, also when the agent does not apply it, so an
 * operator can bring the mesh up by hand with `wg-quick up`.
 */

export const WG_CONFIG_FILE = 'wg-meshlink.conf';
export const DEFAULT_WG_PORT = 51820;
export const KEEPALIVE_S = 25;

export function renderWgQuick(state: MeshState, privateKey: string, listenPort: number): string {
  const lines = ['# Written by meshlink; replaced on every change.', '[Interface]', `PrivateKey = ${privateKey}`, `Address = ${state.meshIp}/32`, `ListenPort = ${listenPort}`];
  for (const p of [...state.peers].sort((a, b) => (a.meshIp < b.meshIp ? -1 : 1))) {
    lines.push('', `# node ${p.nodeId}`, '[Peer]', `PublicKey = ${p.publicKey}`, `PresharedKey = ${p.psk}`, `AllowedIPs = ${p.meshIp}/32`);
    if (p.endpoints[0]) lines.push(`Endpoint = ${p.endpoints[0]}`);
    lines.push(`PersistentKeepalive = ${KEEPALIVE_S}`);
  }
  return `${lines.join('\n')}\n`;
}

export async function writeWgQuick(stateDir: string, state: MeshState, privateKey: string, listenPort: number): Promise<string> {
  const path = join(stateDir, WG_CONFIG_FILE);
  await writeFileAtomic(path, renderWgQuick(state, privateKey, listenPort), { mode: 0o600 });
  return path;
}
