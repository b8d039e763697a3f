import { describe, expect, it } from 'vitest';
import { cli } from './harness.js';

/**
 * Usage errors exit 2 everywhere, commander's own included: an unknown command or option at the root
 * and in every command group, a missing argument, a bare command group. Through the real CLI.
 */
describe('meshlink usage errors exit 2 in every command group', () => {
  const cases: Array<[string, string[]]> = [
    ['unknown root command', ['bogus']],
    ['unknown root option', ['--bogus']],
    ['unknown server command', ['server', 'bogus']],
    ['unknown server option', ['server', '--bogus']],
    ['unknown server nodes command', ['server', 'nodes', 'bogus']],
    ['unknown option of server nodes list', ['server', 'nodes', 'list', '--bogus']],
    ['unknown option of an ops command', ['server', 'audit', '--bogus']],
    ['unknown server upgrade command', ['server', 'upgrade', 'bogus']],
    ['unknown server policy command', ['server', 'policy', 'bogus']],
    ['unknown server mesh command', ['server', 'mesh', 'bogus']],
    ['missing argument of server nodes show', ['server', 'nodes', 'show']],
    ['unknown agent command', ['agent', 'bogus']],
    ['unknown option of agent status', ['agent', 'status', '--bogus']],
    ['unknown protocol command', ['protocol', 'bogus']],
    ['unknown option of protocol errors', ['protocol', 'errors', '--bogus']],
    ['unknown option of demo', ['demo', '--bogus']],
    ['malformed --metrics-listen of server start', ['server', 'start', '--metrics-listen', 'nonsense', '--data-dir', '/nonexistent/meshlink-usage-test']],
    ['malformed --console-listen of server start', ['server', 'start', '--console-listen', 'nonsense', '--data-dir', '/nonexistent/meshlink-usage-test']],
    ['unknown option of server console login', ['server', 'console', 'login', '--bogus']],
  ];

  it.each(cases)('%s', async (_name, args) => {
    const r = await cli(args);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/^error ML_ERR_USAGE: /m);
  });

  it('a bare command prints its help on stderr and exits 2', async () => {
    for (const args of [[], ['server'], ['server', 'nodes'], ['agent'], ['protocol']]) {
      const r = await cli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/^Usage: meshlink/m);
    }
  });

  it('help and --version still exit 0', async () => {
    expect((await cli(['--help'])).code).toBe(0);
    const version = await cli(['--version']);
    expect(version.code).toBe(0);
    expect(version.stdout.trim()).toMatch(/^meshlink \d+\.\d+\.\d+\S* \(npm package, node v\d+\.\d+\.\d+\)$/);
    expect((await cli(['server', 'nodes', '--help'])).code).toBe(0);
    expect((await cli(['agent', 'status', '--help'])).code).toBe(0);
  });
});
