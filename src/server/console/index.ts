import type { Server } from 'node:http';
import { fileURLToPath } from 'node:url';
import { consoleLogin } from '../../admin-api/routes.js';
import { MeshlinkError } from '../../errors.js';
import type { ServerFeature, ServerFeatureContext } from '../feature.js';
import { ConsoleAuth, type ConsoleAuthOptions } from './auth.js';
import { ConsoleEvents } from './events.js';
import { createConsoleServer } from './http.js';

/**
 * The web console (docs/CONSOLE.md): its own plain-HTTP listener (`--console-listen`, off unless
 * given), logins by one-time links from the admin socket's `console.login`, and pages that use the
 * operator API itself. It holds no state of its own beyond the in-memory logins.
 */

/** The static pages: next to this module (the build copies src/server/console/assets to dist). */
export const ASSETS_DIR = fileURLToPath(new URL('./assets/', import.meta.url));

export interface ConsoleFeatureOptions {
  auth?: ConsoleAuthOptions;
  /** Called with the bound address once the listener is up (tests on port 0). */
  onListening?: (address: { host: string; port: number }) => void;
}

export function createConsoleFeature(options: ConsoleFeatureOptions = {}): ServerFeature {
  return async (ctx: ServerFeatureContext) => {
    const listen = ctx.config.consoleListen;
    if (!listen) {
      ctx.admin.handle(consoleLogin, () => {
        throw new MeshlinkError('ML_ERR_CONSOLE_OFF', 'the web console is off on this server: start it with --console-listen 127.0.0.1:8444');
      });
      return;
    }
    const log = ctx.logger.child({ component: 'console' });
    const auth = new ConsoleAuth(options.auth);
    const events = new ConsoleEvents({ sessions: ctx.sessions, routes: ctx.admin, logger: log });
    const server = createConsoleServer({ routes: ctx.admin, auth, events, origin: ctx.config.consoleOrigin, assetsDir: ASSETS_DIR, logger: log });
    const bound = await listenOn(server, listen.host, listen.port);
    const hostPart = bound.host === '0.0.0.0' || bound.host === '::' ? '127.0.0.1' : bound.host.includes(':') ? `[${bound.host}]` : bound.host;
    const origin = ctx.config.consoleOrigin ?? `http://${hostPart}:${bound.port}`;
    options.onListening?.(bound);

    ctx.admin.handle(
      consoleLogin,
      (_input, call) => {
        const link = auth.createLink(call.actor);
        return { url: `${origin}/login?token=${link.token}`, expiresAt: new Date(link.expiresAt).toISOString() };
      },
      // The link is a secret: the audit record names only its expiry.
      { audit: (answer) => ({ target: `expires ${answer.expiresAt}` }) },
    );
    log.info({ address: `${hostPart}:${bound.port}`, origin }, 'console listening');
    return {
      close: () =>
        new Promise<void>((resolve) => {
          events.close();
          server.close(() => resolve());
          server.closeAllConnections();
        }),
    };
  };
}

/** The feature every server runs (off unless the config names a listen address). */
export const consoleFeature: ServerFeature = createConsoleFeature();

function listenOn(server: Server, host: string, port: number): Promise<{ host: string; port: number }> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const a = server.address();
      resolve(typeof a === 'object' && a ? { host: a.address, port: a.port } : { host, port });
    });
  });
}
