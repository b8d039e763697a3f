import type { Command } from 'commander';
import { z } from 'zod';
import { resolveStateDir } from '../../agent/config.js';
import { isEnrolled, loadIdentity } from '../../agent/identity.js';
import { probeNat, type NatMapping } from '../../agent/mesh/index.js';
import { MeshlinkError } from '../../errors.js';
import { parseDuration } from '../../util/duration.js';
import { parseListenAddress } from '../../util/listen-address.js';
import { withFailureReport } from '../failure.js';

/**
 * `meshlink agent nat-probe`: asks the server's STUN responder, from one local UDP port, what public
 * endpoint this host's NAT gives that port and whether the mapping is the same for every destination
 * (docs/MESH.md, "NAT traversal"). A diagnosis for the operator; the agent runs the same probe itself.
 */

const flagsSchema = z.object({
  stun: z.string().optional(),
  localPort: z.coerce.number().int().min(0).max(65_535).default(0),
  timeout: z.string().default('3s'),
  stateDir: z.string().optional(),
  json: z.boolean().default(false),
});

const VERDICT: Record<NatMapping, string> = {
  none: 'no NAT: peers reach this node where it listens',
  'endpoint-independent': 'one public port for every destination: peers reach this node directly once it has sent to them',
  'endpoint-dependent': 'a new public port per destination: peers cannot reach this node directly; it needs a relay',
  unknown: 'the alternate STUN port did not answer: treated as needing a relay',
};

export function registerNatProbeCommand(agent: Command): void {
  agent
    .command('nat-probe')
    .description("learn this host's public UDP endpoint and NAT mapping from the server's STUN responder")
    .option('--stun <host:port>', 'STUN responder (default: the enrolled server host, port 3478)')
    .option('--local-port <port>', 'local UDP port to probe from, e.g. the WireGuard listen port while the interface is down (default: any)')
    .option('--timeout <duration>', 'how long to wait for each answer', '3s')
    .option('--state-dir <dir>', 'state directory, for the default STUN host (default as for enroll)')
    .option('--json', 'print one JSON object', false)
    .action(
      withFailureReport(async (raw: unknown) => {
        const flags = flagsSchema.parse(raw);
        const server = flags.stun ? parseListenAddress(flags.stun, '--stun', 'ML_ERR_USAGE') : await enrolledServerStun(flags.stateDir);
        const result = await probeNat({ server, localPort: flags.localPort, timeoutMs: parseDuration(flags.timeout) });
        if (flags.json) {
          process.stdout.write(`${JSON.stringify(result)}\n`);
          return;
        }
        const at = (e: { address: string; port: number } | null): string => (e === null ? '- (no answer)' : `${e.address}:${e.port}`);
        process.stdout.write(
          [
            `stun server:  ${at(result.server)}`,
            `local port:   ${result.localPort}`,
            `public:       ${at(result.reflexive)}`,
            `alternate:    ${at(result.alternateReflexive)}`,
            `mapping:      ${result.mapping} (${VERDICT[result.mapping]})`,
          ].join('\n') + '\n',
        );
      }),
    );
}

async function enrolledServerStun(stateDirFlag: string | undefined): Promise<{ host: string; port: number }> {
  const stateDir = resolveStateDir(stateDirFlag);
  if (!(await isEnrolled(stateDir))) throw new MeshlinkError('ML_ERR_USAGE', `not enrolled at ${stateDir}: give --stun HOST:PORT`);
  const identity = await loadIdentity(stateDir);
  return { host: new URL(identity.server).hostname.replace(/^\[|\]$/g, ''), port: 3478 };
}
