import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, tempDir } from '../e2e/harness.js';

/** `meshlink completion SHELL` through the real CLI, each script run by its real shell. */
const has = (shell: string): boolean => spawnSync(shell, ['-c', 'exit 0']).status === 0;

describe('meshlink completion', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  const scripts: Record<string, string> = {};

  beforeAll(async () => {
    dir = await tempDir('ml-completion-');
    for (const shell of ['bash', 'zsh', 'fish']) {
      const r = await cli(['completion', shell]);
      expect(r.code, r.stderr).toBe(0);
      scripts[shell] = join(dir.path, `meshlink.${shell}`);
      writeFileSync(scripts[shell]!, r.stdout);
    }
  });
  afterAll(() => dir?.cleanup());

  it('bash offers the subcommands and options of the command before the cursor', () => {
    const complete = (words: string[]): string[] => {
      const script = `source ${scripts.bash}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _meshlink; printf '%s\\n' "\${COMPREPLY[@]}"`;
      return spawnSync('bash', ['-c', script], { encoding: 'utf8' }).stdout.trim().split('\n');
    };
    expect(complete(['meshlink', ''])).toEqual(expect.arrayContaining(['server', 'agent', 'protocol', 'demo', 'completion']));
    expect(complete(['meshlink', 'server', 'no'])).toEqual(['nodes']);
    expect(complete(['meshlink', 'server', 'nodes', 'list', '--'])).toEqual(expect.arrayContaining(['--data-dir', '--json']));
    // Options between the words do not change the command path.
    expect(complete(['meshlink', 'server', '--data-dir', 'mesh', 'po'])).toEqual(['policy']);
  });

  it.skipIf(!has('zsh'))('zsh offers the same (skipped when zsh is not installed; CI installs it)', () => {
    const script = `compadd() { [[ $1 == -- ]] && shift; print -l -- "$@" }; source ${scripts.zsh} >/dev/null; words=(meshlink server --data-dir /srv/ml nodes); CURRENT=6; _meshlink`;
    const r = spawnSync('zsh', ['-c', script], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual(expect.arrayContaining(['list', 'remove', 'show', 'tag']));
  });

  it.skipIf(!has('fish'))('fish offers the same (skipped when fish is not installed; CI installs it)', () => {
    const r = spawnSync('fish', ['-c', `source ${scripts.fish}; complete -C 'meshlink server nodes list --data-dir /srv/ml --'`], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.split('\n').map((l) => l.split('\t')[0])).toEqual(expect.arrayContaining(['--data-dir', '--json']));
  });

  it('refuses an unknown shell with a usage error', async () => {
    const r = await cli(['completion', 'powershell']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^error ML_ERR_USAGE: no completion for powershell/m);
  });
});
