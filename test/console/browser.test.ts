import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/admin-api/client.js';
import * as api from '../../src/admin-api/routes.js';
import { cli, enrollAgent, freePort, listNodes, spawnCli, startServerProc, tempDir, waitFor, type Proc, type ServerProc } from '../e2e/harness.js';

/**
 * The web console in a real browser (Debian's chromium through playwright-core) against a real server
 * process and real agents. `.ci/run` installs chromium; without it the suite is skipped.
 * MESHLINK_CONSOLE_SCREENSHOTS=1 writes the page screenshots to docs/console/ (committed, shown in the
 * README); otherwise they go to the temp dir, so that a test run leaves the tree as it was.
 */
const CHROMIUM = '/usr/bin/chromium';
const HAVE_CHROMIUM = existsSync(CHROMIUM);
if (!HAVE_CHROMIUM) console.warn(`skipping the console browser tests: ${CHROMIUM} is missing (apt-get install chromium)`);

describe.skipIf(!HAVE_CHROMIUM)('web console in chromium', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  let origin: string;
  let shots: string;
  const agents: Proc[] = [];
  const stateDirs: Array<{ path: string; cleanup(): Promise<void> }> = [];

  const stateDir = async (): Promise<string> => {
    const d = await tempDir('ml-console-agent-');
    stateDirs.push(d);
    return d.path;
  };
  const runAgent = (path: string): Proc => {
    const a = spawnCli(['agent', 'run', '--state-dir', path]);
    agents.push(a);
    return a;
  };
  const shot = (name: string) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

  beforeAll(async () => {
    dir = await tempDir('ml-console-');
    shots = process.env.MESHLINK_CONSOLE_SCREENSHOTS === '1' ? 'docs/console' : join(dir.path, 'shots');
    await mkdir(shots, { recursive: true });
    const consolePort = await freePort();
    origin = `http://127.0.0.1:${consolePort}`;
    server = await startServerProc(join(dir.path, 'server'), await freePort(), ['--console-listen', `127.0.0.1:${consolePort}`]);
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: process.getuid?.() === 0 ? ['--no-sandbox'] : [] });
    context = await browser.newContext({ viewport: { width: 1200, height: 700 } });
    page = await context.newPage();
  }, 120_000);
  afterAll(async () => {
    await browser?.close();
    for (const a of agents) await a.stop('SIGKILL');
    await server?.stop('SIGKILL');
    for (const d of stateDirs) await d.cleanup();
    await dir?.cleanup();
  });

  const row = (nodeId: string) => `tr[data-node-id="${nodeId}"]`;

  it('logs in through the one-time link of `server console login --json`', async () => {
    const r = await cli(['server', 'console', 'login', '--data-dir', server.dataDir, '--json']);
    expect(r.code).toBe(0);
    const { url } = JSON.parse(r.stdout) as { url: string };
    expect(url.startsWith(`${origin}/login?token=`)).toBe(true);
    await page.goto(url);
    expect(page.url()).toBe(`${origin}/`);
    await page.waitForSelector('h1:has-text("Nodes")');
    await page.waitForSelector('#live.online');
    const cookies = await page.context().cookies();
    expect(cookies).toEqual([expect.objectContaining({ name: 'meshlink_console', httpOnly: true, sameSite: 'Strict', path: '/' })]);
    // The link is spent: a second browser opening it is refused.
    const other = await browser.newPage();
    const again = await other.goto(url);
    expect(again?.status()).toBe(401);
    expect(await other.textContent('h1')).toBe('This login link does not work');
    await other.close();
  });

  it('the node table updates live when an agent connects and when it is killed', async () => {
    const path = await stateDir();
    const { nodeId } = await enrollAgent(server, path, 'web-1');
    await page.goto(`${origin}/#/nodes`);
    await page.waitForSelector(`${row(nodeId)} td.offline`);
    const agent = runAgent(path);
    await page.waitForSelector(`${row(nodeId)} td.online`, { timeout: 20_000 });
    await shot('nodes');
    await agent.stop('SIGKILL');
    await page.waitForSelector(`${row(nodeId)} td.offline`, { timeout: 20_000 });
  });

  it('creates a token in the UI, and the enroll command it shows enrolls an agent', async () => {
    await page.goto(`${origin}/#/tokens`);
    await page.fill('#token-ttl', '10m');
    await page.fill('#token-tags', 'web, prod');
    await page.click('#token-create');
    const command = (await page.textContent('#enroll-command'))!.trim();
    await shot('tokens');
    // MESHLINK_ENROLL_TOKEN=… meshlink agent enroll …: the token in the environment, out of argv.
    const [assignment, bin, ...args] = command.split(/\s+/);
    const token = /^MESHLINK_ENROLL_TOKEN=([A-Za-z0-9_-]+)$/.exec(assignment ?? '')?.[1];
    expect(token).toBeDefined();
    expect(bin).toBe('meshlink');
    expect(args).not.toContain('--token');
    const path = await stateDir();
    const enrolled = await cli([...args, '--state-dir', path, '--hostname', 'from-ui', '--json'], { MESHLINK_ENROLL_TOKEN: token });
    expect(enrolled.code, enrolled.stderr).toBe(0);
    const { nodeId } = JSON.parse(enrolled.stdout) as { nodeId: string };
    const nodes = await listNodes(server.dataDir);
    const node = nodes.find((n) => n.id === nodeId) as { hostname: string; tags?: string[] } | undefined;
    expect(node?.hostname).toBe('from-ui');
    expect([...(node?.tags ?? [])].sort()).toEqual(['prod', 'web']);
  });

  it('lists tokens and revokes one in the UI after a confirmation; enrolling with it then fails', async () => {
    const created = JSON.parse((await cli(['server', 'token', 'create', '--data-dir', server.dataDir, '--json'])).stdout) as { token: string };
    const [listed] = JSON.parse((await cli(['server', 'token', 'list', '--data-dir', server.dataDir, '--json'])).stdout) as Array<{ id: string }>;
    const id = listed!.id;
    // The page may already show #/tokens (the test before): load it afresh.
    await page.goto(`${origin}/#/tokens`);
    await page.reload();
    await page.waitForSelector(`#tokens tr[data-token-id="${id}"] td.state-usable`);
    expect(await page.textContent('#tokens')).not.toContain(created.token);
    let asked = '';
    page.once('dialog', (d) => {
      asked = d.message();
      void d.accept();
    });
    await page.click(`#tokens tr[data-token-id="${id}"] button.revoke-token`);
    await page.waitForSelector(`#tokens tr[data-token-id="${id}"] td.state-revoked`);
    expect(asked).toContain(`Revoke token ${id}`);
    const path = await stateDir();
    const r = await cli(['agent', 'enroll', '--server', server.url, '--token', created.token, '--ca-pin', server.caPin, '--state-dir', path, '--hostname', 'too-late', '--json']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('ML_ERR_TOKEN_INVALID');
    const audit = await new AdminClient(join(server.dataDir, 'admin.sock')).call(api.listAudit, { limit: 10 });
    expect(audit.find((a) => a.operation === 'tokens/revoke')).toMatchObject({ actor: expect.stringMatching(/^console:/), target: `token ${id}`, result: 'ok' });
  });

  it('pings a node from its page, and ends an operator’s `logs --follow` from the Operations page', async () => {
    const path = await stateDir();
    const { nodeId } = await enrollAgent(server, path, 'busy');
    runAgent(path);
    await waitFor('node online', async () => (await listNodes(server.dataDir)).find((n) => n.id === nodeId && n.online));
    await page.goto(`${origin}/#/node/${nodeId}`);
    await page.waitForSelector('#node-status.online');
    await page.click('#ping');
    await page.waitForSelector('#action-result[data-action="ping"]:has-text("pong")');
    await page.waitForSelector('#peers');
    await shot('node');

    const follower = spawnCli(['server', 'logs', 'busy', '--follow', '--data-dir', server.dataDir]);
    agents.push(follower);
    await page.goto(`${origin}/#/operations`);
    const opRow = 'tr[data-op="logs"]';
    await page.waitForSelector(opRow, { timeout: 20_000 });
    expect(await page.textContent(opRow)).toContain('busy');
    await shot('operations');
    page.once('dialog', (d) => void d.accept());
    await page.click(`${opRow} button.end-op`);
    expect(await follower.exited).toBe(8);
    expect(follower.output()).toContain('ML_ERR_OPS_ENDED');
    await page.waitForSelector('#operations-empty:not([hidden])');
  });

  it('revokes a node from the UI after a confirmation, and its agent drops within 2 s', async () => {
    const path = await stateDir();
    const { nodeId } = await enrollAgent(server, path, 'doomed');
    const agent = runAgent(path);
    await waitFor('node online', async () => (await listNodes(server.dataDir)).find((n) => n.id === nodeId && n.online));
    await page.goto(`${origin}/#/node/${nodeId}`);
    await page.waitForSelector('#node-status.online');
    let asked = '';
    page.once('dialog', (d) => {
      asked = d.message();
      void d.accept();
    });
    const t0 = Date.now();
    await page.click('#revoke');
    await page.waitForSelector('#revoked');
    expect(asked).toContain('Revoke doomed');
    await waitFor('node offline', async () => !(await listNodes(server.dataDir)).find((n) => n.id === nodeId)?.online, 30_000, 50);
    console.log(`revoke click → node offline: ${Date.now() - t0} ms`);
    expect(await Promise.race([agent.exited, new Promise((r) => setTimeout(() => r('timeout'), 10_000))])).toBe(78);
    const audit = await new AdminClient(join(server.dataDir, 'admin.sock')).call(api.listAudit, { limit: 5 });
    expect(audit.find((a) => a.operation === 'nodes/remove')).toMatchObject({ actor: expect.stringMatching(/^console:/), nodeId, result: 'ok' });
  });

  it('a cross-origin POST from a page on another port is refused and changes nothing', async () => {
    const before = await new AdminClient(join(server.dataDir, 'admin.sock')).call(api.listAudit, { limit: 1 });
    // A page served from another origin (the same host, another port) posts to the console's API with
    // the browser's cookie; chromium sends its own Origin, which the console refuses.
    const evilServer = createServer((_req, res) => res.end('<p>evil</p>'));
    await new Promise<void>((r) => evilServer.listen(0, '127.0.0.1', r));
    const evilPort = (evilServer.address() as AddressInfo).port;
    // The same browser context: it holds the console's cookie, which a same-site page's request carries.
    const evil = await context.newPage();
    try {
      await evil.goto(`http://127.0.0.1:${evilPort}/`);
      const type = await evil.evaluate(async (target) => {
        const res = await fetch(`${target}/api/v1/tokens`, { method: 'POST', mode: 'no-cors', credentials: 'include', headers: { 'content-type': 'text/plain' }, body: '{"ttlMs":60000}' });
        return res.type;
      }, origin);
      expect(type).toBe('opaque');
    } finally {
      await evil.close();
      evilServer.close();
    }
    const after = await new AdminClient(join(server.dataDir, 'admin.sock')).call(api.listAudit, { limit: 1 });
    expect(after[0]!.id).toBe(before[0]!.id);
  });

  it('shows the audit log with the console operator, the events and the policy with its errors in place', async () => {
    await page.goto(`${origin}/#/audit`);
    await page.waitForSelector('#audit td:has-text("console:")');
    await shot('audit');
    await page.goto(`${origin}/#/events`);
    await page.waitForSelector('#events tbody tr');
    await shot('events');
    await page.goto(`${origin}/#/policy`);
    await page.waitForSelector('#policy-text');
    await page.fill('#policy-text', '{"rules": 5}');
    await page.click('#policy-save');
    await page.waitForSelector('#policy-error:not(:empty)');
    expect(await page.textContent('#policy-error')).toMatch(/^ML_ERR_MESH_POLICY: /);
    // Every issue in place, each with its path.
    await page.fill('#policy-text', '{"rules": [{"from": "web"}, {"from": "bad tag", "to": "db"}]}');
    await page.click('#policy-save');
    await page.waitForSelector('#policy-issues li:has-text("rules.1.from")');
    expect(await page.$$eval('#policy-issues li code', (els) => els.map((e) => e.textContent))).toEqual(['rules.0.to', 'rules.1.from']);
    expect(await page.getAttribute('#policy-text', 'aria-invalid')).toBe('true');
    await shot('policy');
  });

  it('logs out: the session ends on the server, and the pages say how to log in again', async () => {
    const session = (await context.cookies()).find((c) => c.name === 'meshlink_console')!.value;
    await page.goto(`${origin}/#/nodes`);
    await page.click('#logout');
    await page.waitForSelector('#status:has-text("Logged out.")');
    const res = await page.request.get(`${origin}/api/v1/nodes`, { headers: { cookie: `meshlink_console=${session}` } });
    expect(res.status()).toBe(401);
    await page.reload();
    await page.waitForSelector('#status:has-text("Not logged in")');
  });
});
