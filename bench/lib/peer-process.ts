/**
 * A bench receiver in its own process: forks bench/<script> with the PKI directory, and resolves
 * with the port it prints once it listens (every bench/mux-peer*.ts does so on its first line).
 * PEER_NODE_ARGS: node flags for the receivers alone, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" to
 * profile them. PEER_NETNS: the network namespace they run in (bench/wan.ts), through `ip netns exec`,
 * which keeps the IPC channel's descriptor.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { BenchPki } from './pki.js';

export interface PeerProcess {
  child: ChildProcess;
  port: number;
}

export async function startPeer(script: string, pki: BenchPki): Promise<PeerProcess> {
  const nodeArgs = (process.env.PEER_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const ns = process.env.PEER_NETNS;
  const options = ns ? { execPath: 'ip', execArgv: ['netns', 'exec', ns, process.execPath, ...nodeArgs] } : { execArgv: nodeArgs };
  const child = fork(fileURLToPath(new URL(`../${script}`, import.meta.url)), [pki.dir], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'], ...options });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`${script} exited (${code}) before listening`)));
    child.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
  });
  return { child, port };
}
