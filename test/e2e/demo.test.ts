import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { cli } from './harness.js';

describe('meshlink demo', () => {
  it('starts a server and an agent, shows the agent online, and cleans up', async () => {
    const r = await cli(['demo']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/the agent enrolled: node [0-9a-f-]{36}/);
    expect(r.stdout).toMatch(/demo-host {2}online {2}agent \d+\.\d+\.\d+/);
    expect(r.stdout).toMatch(/heartbeat round trip \d+ ms/);
    const dir = /demo in (\S+)/.exec(r.stdout)?.[1];
    expect(dir).toBeDefined();
    expect(existsSync(dir!)).toBe(false);
  }, 60_000);
});
