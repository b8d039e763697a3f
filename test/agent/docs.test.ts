import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
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
});

describe('packaging/systemd/meshlink-agent.service', () => {
  it('has the required directives', () => {
    expect(unitValues('ExecStart')).toEqual(['/usr/bin/meshlink agent run']);
    expect(unitValues('Restart')).toEqual(['on-failure']);
    expect(unitValues('RestartSec')).toEqual(['5']);
    expect(unitValues('RestartPreventExitStatus')).toEqual([`${AGENT_EXIT_CODES.revoked} ${AGENT_EXIT_CODES.certExpired}`]);
    expect(unitValues('NoNewPrivileges')).toEqual(['true']);
    expect(unitValues('ProtectSystem')).toEqual(['strict']);
    expect(unitValues('ReadWritePaths')).toEqual(['/var/lib/meshlink/agent', '-/opt/meshlink']);
    expect(unitValues('PrivateTmp')).toEqual(['true']);
    expect(unitValues('ProtectHome')).toEqual(['true']);
    expect(unitValues('Environment')).toContain('MESHLINK_LOG_LEVEL=info');
  });

});

// The units' sandboxing, as systemd scores it (0 = locked down, 10 = exposed): the agent keeps root
// with a bounded capability set, so that exec can do an operator's work; the server needs nothing.
describe.each([
  ['packaging/systemd/meshlink-agent.service', 5.0],
  ['packaging/systemd/meshlink-server.service', 3.0],
])('%s under systemd-analyze (skipped without it; CI installs systemd)', (path, maxExposure) => {
  it.skipIf(!hasSystemdAnalyze)('passes verify apart from the binary not being installed here', () => {
    const result = spawnSync('systemd-analyze', ['verify', path], { encoding: 'utf8' });
    const complaints = `${result.stdout}${result.stderr}`
      .split('\n')
      .filter((line) => line.trim() !== '' && !line.includes('/usr/bin/meshlink is not executable'));
    expect(complaints).toEqual([]);
  });

  it.skipIf(!hasSystemdAnalyze)(`scores at most ${maxExposure} in systemd-analyze security`, () => {
    const result = spawnSync('systemd-analyze', ['security', '--offline=true', path], { encoding: 'utf8' });
    const level = /Overall exposure level for \S+: (\d+\.\d)/.exec(result.stdout)?.[1];
    expect(level, result.stdout + result.stderr).toBeDefined();
    expect(Number(level)).toBeLessThanOrEqual(maxExposure);
  });
});
