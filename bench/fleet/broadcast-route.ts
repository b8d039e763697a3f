import { z } from 'zod';
import { defineRoute } from '../../src/admin-api/route.js';

/** The benchmark's own operator route: one signed action_request to every node, timed on the server. */
export const benchBroadcast = defineRoute({
  name: 'bench.broadcast',
  method: 'POST',
  path: '/v1/bench/broadcast',
  input: z.object({ n: z.number().int().min(0) }).strict(),
  output: z.object({ nodes: z.number().int(), publishMs: z.number() }),
  offline: false,
});
