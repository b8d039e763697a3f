import { describe, expect, it } from 'vitest';
import { httpsRequest, startTestServer } from './helpers.js';

/** GET /healthz on the agent-facing port is what load balancers probe: it answers for the store too. */
describe('gateway /healthz', () => {
  it('is 200 while the store answers and 503 once it does not', async () => {
    const ts = await startTestServer();
    try {
      const ok = await httpsRequest(`${ts.url}/healthz`, { ca: ts.server.caCertPem });
      expect([ok.status, ok.json()]).toEqual([200, { status: 'ok' }]);
      await ts.server.store.close();
      const down = await httpsRequest(`${ts.url}/healthz`, { ca: ts.server.caCertPem });
      expect([down.status, down.json()]).toEqual([503, { status: 'unavailable' }]);
    } finally {
      await ts.stop();
    }
  });
});
