import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AGENT_EXIT_CODES } from '../../src/agent/config.js';

const doc = readFileSync('docs/AGENT.md', 'utf8');
const unitPath = 'packaging/systemd/meshlink-agent.service';
const unit = readFileSync(unitPath, 'utf8');
const hasSystemdAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;

function unitValues(key: string): string[] {
  return unit
    .split('\n')
    .filter((line) => line.startsWith(`${key}=`))
    .map((line) => line.slice(key.length + 1).trim());
}

describe('docs/AGENT.md agrees with the code', () => {
  it('documents every exit code with its number and name, and no others', () => {
    const rows = [...doc.matchAll(/^\| (\d+) \| `(\w+)` \|/gm)].map((m) => [m[2], Number(m[1])]);
    expect(Object.fromEntries(rows)).toEqual({ ...AGENT_EXIT_CODES });
  });

  it('documents every error code the agent code raises', () => {
    // The enrollment/state-dir modules; `agent run` modules document their codes with the connection code.
    const sources = ['csr', 'config', 'identity', 'enroll'].map((m) => join('src/agent', `${m}.ts`)).concat('src/contract/ca-pin.ts', 'src/cli/agent.ts');
    const raised = new Set(sources.flatMap((file) => [...readFileSync(file, 'utf8').matchAll(/'(ML_ERR_[A-Z_]+)'/g)].map((m) => m[1]!)));
    expect(raised.size).toBeGreaterThan(8);
    const documented = new Set([...doc.matchAll(/^\| `(ML_ERR_[A-Z_]+)` \|/gm)].map((m) => m[1]!));
    // ML_ERR_CERT_REVOKED / ML_ERR_INTERNAL are protocol-table codes mapped by the CLI, documented in PROTOCOL.md
    const missing = [...raised].filter((code) => !documented.has(code) && code !== 'ML_ERR_CERT_REVOKED' && code !== 'ML_ERR_INTERNAL');
    expect(missing).toEqual([]);
  });
});

describe('packaging/systemd/meshlink-agent.service', () => {
  it('has the required directives', () => {
    expect(unitValues('ExecStart')).toEqual(['/usr/bin/meshlink agent run']);
    expect(unitValues('Restart')).toEqual(['on-failure']);
    expect(unitValues('RestartSec')).toEqual(['5']);
    expect(unitValues('RestartPreventExitStatus')).toEqual([`${AGENT_EXIT_CODES.revoked} ${AGENT_EXIT_CODES.certExpired}`]);
    expect(unitValues('NoNewPrivileges')).toEqual(['true']);
    expect(unitValues('ProtectSystem')).toEqual(['strict']);
    expect(unitValues('ReadWritePaths')).toEqual(['/var/lib/meshlink/agent']);
    expect(unitValues('PrivateTmp')).toEqual(['true']);
    expect(unitValues('ProtectHome')).toEqual(['true']);
    expect(unitValues('Environment')).toContain('MESHLINK_LOG_LEVEL=info');
  });

  it.skipIf(!hasSystemdAnalyze)('passes systemd-analyze verify apart from the binary not being installed here', () => {
    const result = spawnSync('systemd-analyze', ['verify', unitPath], { encoding: 'utf8' });
    const complaints = `${result.stdout}${result.stderr}`
      .split('\n')
      .filter((line) => line.trim() !== '' && !line.includes('/usr/bin/meshlink is not executable'));
    expect(complaints).toEqual([]);
  });
});
