import * as api from '../../admin-api/routes.js';
import type { Logger } from '../../util/logger.js';
import type { AdminRoutes } from '../admin-routes.js';
import type { CaKeyType } from '../ca.js';
import type { SealingSecret } from '../ca-key-crypto.js';
import type { CaRing } from '../ca-rotation.js';
import { META_CA_PIN } from '../nodes.js';
import type { Store } from '../store/store.js';

/**
 * `server ca status` and `server ca rotate --phase start|issue|retire`: online only, because the
 * running server's ring (gateway trust, issuer, welcome bundle) must change with the store.
 * Audited like every state-changing route (admin-routes.ts): the target names the phase and pins.
 */
export function registerCaRotationRoutes(
  routes: AdminRoutes,
  deps: { store: Store; ring: CaRing; keyType: CaKeyType; secret: SealingSecret; logger: Logger; closeSerials?: (serials: string[]) => void },
): void {
  const { store, ring } = deps;
  const log = deps.logger.child({ component: 'ca-rotation' });

  routes.handle(api.caStatus, () => ring.status(store));

  routes.handle(
    api.caRotate,
    async ({ phase, force }) => {
      if (phase === 'start') {
        await ring.start(store, { keyType: deps.keyType, secret: deps.secret });
        log.info({ pins: ring.trusted.map((c) => c.pin) }, 'CA rotation started: the next CA is trusted and handed to every agent');
        return ring.status(store);
      }
      if (phase === 'issue') {
        await ring.issue(store);
        // GET /v1/ca serves the issuing CA now: enrollment commands (`token create`) must name its pin.
        await store.setMeta(META_CA_PIN, ring.issuer.pin);
        log.info({ issuer: ring.issuer.pin }, 'CA rotation: the next CA issues certificates');
        return ring.status(store);
      }
      const done = await ring.retire(store, { force, metaCaPin: META_CA_PIN });
      // Their certificates chain to a CA no longer trusted: their open sessions end now, not at a reconnect.
      if (done.stranded.length > 0) deps.closeSerials?.(done.stranded.map((n) => n.certSerial));
      if (done.stranded.length > 0) log.warn({ stranded: done.stranded.map((n) => n.nodeId) }, 'CA retired by force: these nodes hold certificates of the retired CA and must re-enroll');
      log.info({ retiredPin: done.retiredPin, pin: done.pin }, 'CA rotation done: the old CA is retired');
      return { ...(await ring.status(store)), retiredPin: done.retiredPin, stranded: done.stranded.map((n) => ({ nodeId: n.nodeId, hostname: n.hostname })) };
    },
    { audit: (answer) => ({ target: `phase ${answer.phase}, CA ${answer.current.pin}${answer.next ? `, next ${answer.next.pin}` : ''}${answer.retiredPin ? `, retired ${answer.retiredPin}` : ''}` }) },
  );
}
