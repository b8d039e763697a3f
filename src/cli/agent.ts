import type { Command } from 'commander';
import { registerRunCommand } from './agent/run.js';
import { registerNatProbeCommand } from './agent/nat-probe.js';
import { DEFAULT_AGENT_CONFIG } from './agent/config-file.js';
import { z } from 'zod';
import { createLogger, LOG_LEVELS } from '../util/logger.js';
import { VERSION } from '../version.js';
import { AGENT_EXIT_CODES, defaultHostname, ENV_ENROLL_TOKEN, ENV_LOG_LEVEL, resolveStateDir } from '../agent/config.js';
import { enroll } from '../agent/enroll.js';
import { resolveProxyConfig } from '../agent/proxy.js';
import { isEnrolled, loadIdentity, type Identity } from '../agent/identity.js';
import { readAgentStatus, type AgentStatusReading, type Revocation } from '../agent/state/status-file.js';
import { parseCaPin } from '../contract/ca-pin.js';
import { parseReleaseKey } from '../contract/release.js';
import { saveReleaseKeys } from '../agent/ops/index.js';
import { readMeshStatus } from '../agent/mesh/index.js';
import { MeshlinkError } from '../errors.js';
import { reportFailure, withFailureReport } from './failure.js';

/**
 * `meshlink agent ...`. Thin: parse, validate, call into src/agent, print, map errors to exit codes.
 * Subcommands register themselves on the `agent` command (see registerAgentCommands), so `agent run`
 * is one more register function.
 */

export { AGENT_EXIT_CODES };

/** Wraps an action so every failure ends as a documented exit code (exitCode, not exit(): logs flush). */
export const agentAction = withFailureReport;

const logLevelSchema = z.enum(LOG_LEVELS);

/** The enroll command is interactive: quiet (warn) unless asked, so the result line stands out. */
function agentLogger(flag: string | undefined, fallback: string) {
  const raw = flag ?? process.env[ENV_LOG_LEVEL] ?? fallback;
  const level = logLevelSchema.safeParse(raw);
  if (!level.success) throw new MeshlinkError('ML_ERR_USAGE', `invalid log level "${raw}": expected one of ${LOG_LEVELS.join(', ')}`);
  // The interactive agent commands print their result on stdout: their logs go to stderr.
  return createLogger({ name: 'meshlink-agent', level: level.data, stderr: true });
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

// ---------------------------------------------------------------------------------------------
// agent enroll

const enrollFlagsSchema = z.object({
  server: z.string(),
  token: z.string().optional(),
  caPin: z.array(z.string()).default([]),
  stateDir: z.string().optional(),
  hostname: z.string().optional(),
  san: z.array(z.string()).default([]),
  force: z.boolean().default(false),
  json: z.boolean().default(false),
  logLevel: z.string().optional(),
  proxy: z.string().optional(),
  releaseKey: z.array(z.string()).default([]),
});

function registerEnrollCommand(agent: Command): void {
  agent
    .command('enroll')
    .description('enroll this host with a meshlink server using a one-time token')
    .requiredOption('--server <url>', 'server URL, https://HOST:PORT')
    .option('--token <token>', `one-time enrollment token (or set ${ENV_ENROLL_TOKEN})`)
    .option('--ca-pin <pin>', 'sha256:<hex> pin of the server CA (repeatable, or several comma-separated: any one may match)', collect, [])
    .option('--state-dir <dir>', 'state directory (default: $MESHLINK_STATE_DIR, /var/lib/meshlink/agent as root, else ~/.local/state/meshlink/agent)')
    .option('--hostname <name>', 'host name for the certificate (default: this machine\'s host name)')
    .option('--san <name>', 'extra subject alternative name, DNS name or IP (repeatable)', collect, [])
    .option('--force', 'replace an existing identity in the state dir', false)
    .option('--proxy <url>', 'HTTP CONNECT proxy, http://[user:pass@]host:port (default: HTTPS_PROXY or ALL_PROXY, honouring NO_PROXY)')
    .option('--release-key <key>', 'pin this release public key (ed25519:…, from `meshlink release keygen`): self-upgrades must be signed with it (repeatable)', collect, [])
    .option('--json', 'print the result as one JSON object', false)
    .option('--log-level <level>', `log level (${LOG_LEVELS.join(', ')}; default warn, or $${ENV_LOG_LEVEL})`)
    .action(
      agentAction(async (rawFlags: unknown) => {
        const flags = enrollFlagsSchema.parse(rawFlags);
        const token = flags.token ?? process.env[ENV_ENROLL_TOKEN];
        if (token === undefined || token === '') throw new MeshlinkError('ML_ERR_USAGE', `a token is required: --token or ${ENV_ENROLL_TOKEN}`);
        if (flags.caPin.length === 0) throw new MeshlinkError('ML_ERR_USAGE', 'at least one --ca-pin is required (printed by `meshlink server token create`)');
        // Several pins, repeated or comma-separated: during a CA rotation (docs/SERVER.md) either CA is good.
        const caPins = flags.caPin.flatMap((arg) => arg.split(',')).map((p) => p.trim()).filter((p) => p !== '').map(parseCaPin);
        // Checked before the token is spent; written once the identity is.
        const releaseKeys = flags.releaseKey.map(parseReleaseKey);
        const proxy = resolveProxyConfig(flags.proxy, process.env);
        const logger = agentLogger(flags.logLevel, 'warn');
        const stateDir = resolveStateDir(flags.stateDir);
        const { identity, caPin } = await enroll(
          {
            server: flags.server,
            token,
            caPins,
            stateDir,
            hostname: flags.hostname ?? defaultHostname(),
            sans: flags.san,
            force: flags.force,
          },
          { logger, agentVersion: VERSION, proxy },
        );
        if (releaseKeys.length > 0) await saveReleaseKeys(stateDir, releaseKeys.map((k) => k.text));
        if (flags.json) {
          process.stdout.write(
            `${JSON.stringify({
              nodeId: identity.nodeId,
              server: identity.server,
              caPin,
              certSerial: identity.cert.serial,
              certNotAfter: identity.cert.notAfter.toISOString(),
              stateDir,
              releaseKeys: releaseKeys.map((k) => k.keyId),
            })}\n`,
          );
        } else {
          process.stdout.write(
            `enrolled as node ${identity.nodeId}\n` +
              `certificate ${identity.cert.serial} valid until ${identity.cert.notAfter.toISOString()}\n` +
              `state dir ${stateDir}\n`,
          );
          // What to do next is advice, not the result: stderr, and only in human mode.
          process.stderr.write(
            nextStepAfterEnroll(flags.stateDir === undefined ? null : stateDir) +
              (releaseKeys.length > 0 ? `release key(s) pinned: ${releaseKeys.map((k) => k.keyId).join(', ')}\n` : 'no release key pinned: this agent refuses self-upgrades (add --release-key to agent run to allow them)\n'),
          );
        }
      }),
    );
}

/** The lines `agent enroll` prints on stderr after the result: how to start the agent, by hand or as the service. */
export function nextStepAfterEnroll(explicitStateDir: string | null): string {
  return (
    `next: start the agent: meshlink agent run${explicitStateDir === null ? '' : ` --state-dir ${explicitStateDir}`}\n` +
    `      or as a service: install packaging/systemd/meshlink-agent.service, then systemctl enable --now meshlink-agent\n` +
    `      (options such as allowExec and transferDir go in ${DEFAULT_AGENT_CONFIG}: docs/AGENT.md, "Config file")\n`
  );
}

// ---------------------------------------------------------------------------------------------
// agent status

/** `state` is one of connected|connecting|backoff|stopped (from status.json), 'not running' or 'unknown'. */
interface ConnectionReport {
  state: string;
  since?: string;
  error?: string;
  lastReported?: { state: string; since: string };
  [extra: string]: unknown;
}

function connectionReport(reading: AgentStatusReading): ConnectionReport {
  switch (reading.kind) {
    case 'absent':
      return { state: 'not running' };
    case 'invalid':
      return { state: 'unknown', error: reading.message };
    case 'present':
      // A status.json whose writer is gone is a leftover from a crash, not a live state.
      if (reading.writerAlive === false) {
        return { state: 'not running', lastReported: { ...reading.status } };
      }
      return { ...reading.status };
  }
}

function identityReport(identity: Identity) {
  return {
    nodeId: identity.nodeId,
    server: identity.server,
    hostname: identity.hostname,
    sans: [...identity.sans],
    enrolledAt: identity.enrolledAt,
    certSerial: identity.cert.serial,
    certNotBefore: identity.cert.notBefore.toISOString(),
    certNotAfter: identity.cert.notAfter.toISOString(),
    certExpired: identity.cert.notAfter.getTime() <= Date.now(),
  };
}

function describeConnection(c: ConnectionReport): string {
  if (c.state === 'not running') {
    const last = c.lastReported;
    return last === undefined ? 'not running' : `not running (last reported ${last.state} since ${last.since})`;
  }
  if (c.state === 'unknown') return `unknown (${c.error ?? ''})`;
  return `${c.state} since ${c.since ?? '?'}`;
}

/**
 * The proxy the running (or last running) agent uses, from its status.json: host:port and where it
 * was set, never credentials (the agent writes no more). Undefined when no agent reported one.
 */
function proxyReport(c: ConnectionReport): { address: string; source: string } | null | undefined {
  const raw = c.state === 'not running' ? (c.lastReported as Record<string, unknown> | undefined)?.proxy : c.proxy;
  const parsed = z.object({ address: z.string(), source: z.string() }).nullable().safeParse(raw);
  return raw === undefined || !parsed.success ? undefined : parsed.data;
}

const REVOKED_NEXT_STEP =
  'the server revoked this node; restarting cannot help. Re-enroll: on the server run `meshlink server token create`, ' +
  'then here the command it prints, with --force to replace this identity';

/**
 * The revocation the last `agent run` recorded, while the identity it was for is still the one held
 * (a re-enrollment has another certificate serial and clears it); null otherwise.
 */
function revocationReport(reading: AgentStatusReading, certSerial: string | null): (Revocation & { nextStep: string }) | null {
  if (reading.kind !== 'present' || reading.status.revoked === undefined) return null;
  const revoked = reading.status.revoked;
  if (certSerial !== null && revoked.certSerial !== null && revoked.certSerial !== certSerial) return null;
  return { ...revoked, nextStep: REVOKED_NEXT_STEP };
}

function registerStatusCommand(agent: Command): void {
  agent
    .command('status')
    .description('show enrollment, certificate and connection state')
    .option('--state-dir <dir>', 'state directory (default as for enroll)')
    .option('--json', 'print one JSON object', false)
    .action(
      agentAction(async (rawFlags: unknown) => {
        const flags = z.object({ stateDir: z.string().optional(), json: z.boolean().default(false) }).parse(rawFlags);
        const stateDir = resolveStateDir(flags.stateDir);
        const enrolled = await isEnrolled(stateDir);
        const identity = enrolled ? identityReport(await loadIdentity(stateDir)) : null;
        const reading = await readAgentStatus(stateDir);
        const connection = connectionReport(reading);
        const revoked = revocationReport(reading, identity?.certSerial ?? null);
        const proxy = proxyReport(connection);
        const mesh = await readMeshStatus(stateDir);
        const report = { enrolled, stateDir, ...(identity ?? {}), ...mesh, connection, revoked, ...(proxy === undefined ? {} : { proxy }) };
        if (flags.json) {
          process.stdout.write(`${JSON.stringify(report)}\n`);
          return;
        }
        const lines = [`state dir:    ${stateDir}`, `enrolled:     ${enrolled ? 'yes' : 'no'}`];
        if (identity !== null) {
          lines.push(
            `node id:      ${identity.nodeId}`,
            `server:       ${identity.server}`,
            `hostname:     ${identity.hostname}`,
            `cert serial:  ${identity.certSerial}`,
            `cert expires: ${identity.certNotAfter}${identity.certExpired ? ' (EXPIRED)' : ''}`,
          );
        }
        lines.push(`connection:   ${describeConnection(connection)}`);
        if (revoked !== null) lines.push(`REVOKED:      at ${revoked.at} (${revoked.how})`, `next step:    ${revoked.nextStep}`);
        if (proxy !== undefined) lines.push(`proxy:        ${proxy === null ? 'none (direct)' : `${proxy.address} (from ${proxy.source})`}`);
        if (mesh.meshIp != null) {
          const peers = mesh.peers ?? [];
          lines.push(`mesh ip:      ${mesh.meshIp} (WireGuard ${mesh.wireguard?.mode ?? '-'}${mesh.nat ? `, NAT ${mesh.nat.mapping}` : ''})`, `mesh peers:   ${peers.length}: node, path, endpoint, link, last handshake`);
          for (const p of peers.slice(0, MAX_PEER_LINES)) lines.push(`  ${p.nodeId.padEnd(36)} ${(p.path ?? '-').padEnd(6)} ${(p.endpoint ?? '-').padEnd(24)} ${(p.link ?? '-').padEnd(7)} ${p.lastHandshake ?? '-'}`);
          if (peers.length > MAX_PEER_LINES) lines.push(`  … ${peers.length - MAX_PEER_LINES} more (--json for all)`);
        }
        process.stdout.write(`${lines.join('\n')}\n`);
      }),
    );
}

// ---------------------------------------------------------------------------------------------

/** Peers `agent status` prints one line each; --json has them all. */
const MAX_PEER_LINES = 50;

export function registerAgentCommands(program: Command): Command {
  const agent = program
    .command('agent')
    .description('agent commands: enroll this host, show its status');
  registerEnrollCommand(agent);
  registerStatusCommand(agent);
  registerRunCommand(agent, reportFailure);
  registerNatProbeCommand(agent);
  return agent;
}
