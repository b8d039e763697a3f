import { chmod, mkdir, stat } from 'node:fs/promises';
import type { Server as HttpServer } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import { createLogger, setLogLevel, type Logger } from '../util/logger.js';
import { applyReloadable, type ReloadChange, type ReloadTargets } from './reload.js';
import { AdminClient } from '../admin-api/client.js';
import { startAdminServer } from './admin.js';
import { registerCoreAdminRoutes } from './operator/core-routes.js';
import { registerCaRotationRoutes } from './operator/ca-routes.js';
import { loadOrCreateCa, type CertificateAuthority } from './ca.js';
import { CaRing } from './ca-rotation.js';
import { isLegacySealed } from './ca-key-crypto.js';
import { openKeyFile } from './key-file.js';
import { adminSocketPath, storeLocation, type ServerConfig } from './config.js';
import { redactUrl } from './store/location.js';
import { ConnectionRegistry } from './connections.js';
import { EnrollmentService } from './enroll.js';
import { createGateway, type Gateway, type GatewayLoad, type GatewayTimeouts } from './gateway.js';
import { Presence } from './presence.js';
import { publicUrlOf, resolvePublicAddress } from './public-address.js';
import { PublicRoutes } from './public-routes.js';
import { AuditLog } from './audit-log.js';
import type { GatewayHooks } from './hooks.js';
import { META_CA_PIN, META_PUBLIC_URL, type LiveParts } from './nodes.js';
import { TokenBuckets } from '../util/token-bucket.js';
import { RevocationList } from './revocation.js';
import { CertificateSuccession } from './cert-succession.js';
import { Store } from './store/store.js';
import { SessionHost } from './session-host.js';
import { AdminRoutes } from './admin-routes.js';
import { createFeatureQuestions, type ServerFeature, type ServerFeatureContext, type ServerFeatureHandle } from './feature.js';
import { openServerStore, SERVER_FEATURES } from './features.js';
import { ClientAddresses } from './client-address.js';
import { MeshlinkError } from '../errors.js';

/**
 * Wires the control plane: store → CA → server certificate → gateway (+ admin socket). A restart on
 * the same data dir reuses the CA, nodes, tokens and revocations; the server TLS key is fresh.
 */

export interface StartServerOptions {
  hooks?: GatewayHooks;
  logger?: Logger;
  /** Defaults to MESHLINK_CA_PASSPHRASE; mixed with the key file (config.keyFile) into what seals the store's secrets. */
  passphrase?: string;
  timeouts?: Partial<GatewayTimeouts>;
  /** Features to start (default: SERVER_FEATURES); ignored when `hooks` replaces the session layer. */
  features?: readonly ServerFeature[];
  /**
   * The server can no longer serve and must stop (another server became the active one of its
   * PostgreSQL store). Default: it closes itself; the CLI also exits non-zero.
   */
  onFatal?: (err: Error) => void;
}

export interface RunningServer {
  readonly config: ServerConfig;
  readonly caPin: string;
  readonly caCertPem: string;
  /** `https://HOST:PORT` agents should use (stored in meta for `token create`). */
  readonly publicUrl: string;
  readonly adminSocketPath: string;
  readonly store: Store;
  /** The CA that issues now (the next one in a rotation's `issuing` phase). */
  readonly ca: CertificateAuthority;
  readonly ring: CaRing;
  readonly enrollment: EnrollmentService;
  readonly live: LiveParts;
  /** The session layer, unless the caller supplied its own hooks. */
  readonly sessions: SessionHost | null;
  address(): { host: string; port: number };
  /** Connections between accept and upgrade now, by stage. */
  gatewayLoad(): GatewayLoad;
  /**
   * Applies a newly parsed config (SIGHUP): its reloadable keys take effect now, the others are
   * reported as needing a restart (reload.ts). `config` is the config in effect afterwards.
   */
  reload(next: ServerConfig): ReloadChange[];
  close(): Promise<void>;
}

/** Server certificate rotation period (valid 90 days; must stay below setInterval's 2^31-1 ms ≈ 24.8 days). */
const SERVER_CERT_ROTATE_MS = 14 * 86_400_000;


export async function startServer(config: ServerConfig, options: StartServerOptions = {}): Promise<RunningServer> {
  const logger = options.logger ?? createLogger({ name: 'meshlink-server', level: config.logLevel });
  const passphrase = options.passphrase ?? process.env.MESHLINK_CA_PASSPHRASE ?? '';
  await prepareDataDir(config.dataDir, logger);
  const socketPath = adminSocketPath(config.dataDir);
  await refuseIfRunning(socketPath);

  if (config.store !== null && config.keyFile === null) {
    // Every replica must open the same sealed secrets: a key file made by each at its default place
    // would differ, and the second replica could not read the CA the first sealed (docs/CLUSTER.md).
    throw new MeshlinkError('ML_ERR_CONFIG', 'a PostgreSQL store needs --key-file (or MESHLINK_KEY_FILE): the same server key file on every replica, created at the first start of the first one');
  }
  // One active server per PostgreSQL store until replicas share the fleet (docs/CLUSTER.md): a second
  // one stands by here, not listening and not migrating, and takes over when the active one's
  // database session ends. Lost while this start is still under way, the start fails.
  let fatal: ((err: Error) => void) | null = null;
  let lostDuringStart: Error | null = null;
  const store = await openServerStore(storeLocation(config), {
    active: {
      onWaiting: () => logger.info({ store: redactUrl(storeLocation(config)) }, 'another server is active on this store: standing by until it stops'),
      onLost: (err) => {
        logger.error({ err: err.message }, 'no longer the active server of this store: stopping');
        if (fatal) fatal(err);
        else lostDuringStart = err;
      },
    },
  });
  let gateway: Gateway | undefined;
  const gatewayLoad = (): GatewayLoad => gateway?.load() ?? { awaitingFirstByte: 0, queued: 0, handshakesInFlight: 0 };
  let admin: HttpServer | undefined;
  let rotateTimer: NodeJS.Timeout | undefined;
  let certificates: CertificateSuccession | undefined;
  let sessions: SessionHost | null = null;
  const presence = new Presence(store, logger);
  const featureHandles: ServerFeatureHandle[] = [];
  try {
    // The key file may be created only for a store with nothing sealed by one yet (key-file.ts).
    const caRow = await store.getCa();
    const keyFile = await openKeyFile({ dataDir: config.dataDir, keyFile: config.keyFile, passphrase, mayCreate: !caRow || isLegacySealed(caRow.keyBlob), logger });
    const sealing = keyFile.secret;
    const { ca: rootCa, created, migrated } = await loadOrCreateCa(store, { keyType: config.caKeyType, secret: sealing });
    if (migrated) logger.warn({ keyFile: keyFile.path }, 're-sealed the CA key of an earlier release with the server key file (it was bound to the store path only)');
    logger.info({ caPin: rootCa.pin, created, keyFile: keyFile.path }, created ? 'created a new CA' : 'loaded the CA');
    // The CA, plus the next one while a rotation is under way (ca-rotation.ts): what issues and what is trusted.
    const ring = await CaRing.load(store, rootCa, sealing);
    if (ring.phase !== 'none') logger.info({ phase: ring.phase, pins: ring.trusted.map((c) => c.pin), issuer: ring.issuer.pin }, 'a CA rotation is under way');
    // The certificate names the configured public URL's host too; a derived URL needs the bound port.
    const publicAddress = await resolvePublicAddress(store, config);
    const serverCert = await ring.issueServerCertificate(publicAddress.certNames);

    const revocations = await RevocationList.load(store);
    const registry = new ConnectionRegistry(logger);
    const live: LiveParts = { registry, revocations, presence };
    certificates = new CertificateSuccession({ store, revocations, logger, renewGraceMs: config.renewGraceMs });
    certificates.start();
    const enrollFailures = new TokenBuckets({ perMinute: config.enrollFailuresPerMinute });
    // Behind a PROXY-protocol balancer, the client addresses its headers name (the gateway fills it).
    const clientAddresses = new ClientAddresses();
    const enrollment = new EnrollmentService({
      store,
      ca: ring,
      revocations,
      onRevoked: (serials) => registry.closeRevokedSerials(serials),
      limiter: enrollFailures,
      clientAddress: (socket) => clientAddresses.of(socket),
      logger,
      certLifetimeMs: config.certLifetimeMs,
      renewGraceMs: config.renewGraceMs,
    });
    // The session layer: handshake, heartbeats, presence, in-band renewal (tests may plug in their own).
    const sessionHost = options.hooks ? null : new SessionHost({
      config,
      store,
      enrollment,
      logger,
      presence,
      announcedServerUrl: publicAddress.configuredUrl,
      certificates,
      revocations,
    });
    sessions = sessionHost;
    sessionHost?.addWelcomeFields(() => ({ caBundle: ring.bundle() }));
    const audit = AuditLog.of(store);
    const adminRoutes = new AdminRoutes(audit);
    const questions = createFeatureQuestions();
    let listenAddress = '';
    registerCoreAdminRoutes(adminRoutes, { store, live, running: { startedAt: Date.now(), listen: () => listenAddress }, questions, logger });
    registerCaRotationRoutes(adminRoutes, { store, ring, keyType: config.caKeyType, secret: sealing, logger, closeSerials: (serials) => registry.closeRevokedSerials(serials) });
    const publicRoutes = new PublicRoutes();
    if (sessionHost) {
      const ctx: ServerFeatureContext = {
        config,
        store,
        sessions: sessionHost,
        presence,
        admin: adminRoutes,
        publicRoutes,
        audit,
        connections: { load: () => gatewayLoad(), onRefused: (fn) => registry.onRefused(fn), onRevoking: (fn) => registry.onRevoking(fn) },
        enrollment: { onCommit: (hook) => enrollment.onCommit(hook), addResponseFields: (fn) => enrollment.addResponseFields(fn) },
        questions,
        logger,
        sealing,
      };
      for (const feature of options.features ?? SERVER_FEATURES) {
        const handle = await feature(ctx);
        if (handle) featureHandles.push(handle);
      }
    }
    const gw = createGateway({
      tls: { key: serverCert.keyPem, certChain: serverCert.chainPem, caCert: ring.bundle() },
      auth: { store, ca: ring, revocations },
      enrollment,
      registry,
      hooks: options.hooks ?? sessionHost!,
      routes: publicRoutes,
      logger,
      timeouts: { clientHelloMs: config.clientHelloTimeoutMs, ...options.timeouts },
      onConnected: (nodeId) => presence.heard(nodeId),
      proxyProtocol: config.proxyProtocol,
      clientAddresses,
    });
    gateway = gw;
    const bound = await gw.listen(config.listen.port, config.listen.host);
    gw.on('error', (err) => logger.error({ err }, 'gateway error'));
    const publicUrl = publicUrlOf(publicAddress, config.listen.host, bound.port);
    await store.setMeta(META_PUBLIC_URL, publicUrl);
    await store.setMeta(META_CA_PIN, ring.issuer.pin);

    // A new server certificate (and trusted set) every SERVER_CERT_ROTATE_MS and at every CA rotation
    // phase: a phase change applies to new TLS connections; the open ones stay as they are.
    const reissue = (why: string): void => {
      ring.issueServerCertificate(publicAddress.certNames)
        .then((c) => {
          gw.setSecureContext({ key: c.keyPem, cert: c.chainPem, ca: ring.bundle() });
          logger.info({ notAfter: new Date(c.notAfter).toISOString(), issuer: ring.issuer.pin, why }, 'server certificate rotated');
        })
        .catch((err: unknown) => logger.error({ err }, 'server certificate rotation failed'));
    };
    rotateTimer = setInterval(() => reissue('periodic'), SERVER_CERT_ROTATE_MS);
    rotateTimer.unref();
    ring.onChange(() => reissue(`CA rotation: ${ring.phase === 'none' ? 'retired' : ring.phase}`));
    // Open sessions learn the new bundle at once (start adds the next CA, retire drops the old one):
    // an agent connected before `start` must trust the next CA before its next connection.
    ring.onChange(() => {
      if (!sessionHost) return;
      const caBundle = ring.bundle();
      for (const agent of sessionHost.snapshot()) sessionHost.send(agent, 'ca.bundle', { caBundle });
    });

    admin = await startAdminServer(socketPath, { logger, routes: adminRoutes });

    const address = { host: bound.address, port: bound.port };
    listenAddress = bound.address.includes(':') ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`;
    const featureFields = Object.assign({}, ...featureHandles.map((h) => h.readyFields?.() ?? {})) as Record<string, unknown>;
    logger.info({ ...featureFields, address: `${address.host}:${address.port}`, publicUrl, caPin: ring.issuer.pin, adminSocket: socketPath, store: store.path }, 'server ready');

    let closing: Promise<void> | undefined;
    const adminServer = admin;
    let effective = config;
    const reloadTargets: ReloadTargets = {
      logLevel: (level) => setLogLevel(logger, level),
      clientHelloTimeoutMs: (ms) => gw.setClientHelloTimeout(ms),
      certLifetimeMs: (ms) => enrollment.setCertLifetime(ms),
      enrollFailuresPerMinute: (perMinute) => enrollFailures.setRate(perMinute),
    };
    const running: RunningServer = {
      get config() {
        return effective;
      },
      reload: (next) => {
        const { config: now, changes } = applyReloadable(effective, next, reloadTargets);
        effective = now;
        return changes;
      },
      // The issuing CA: what GET /v1/ca serves and enrollments pin.
      get caPin() {
        return ring.issuer.pin;
      },
      get caCertPem() {
        return ring.issuer.certPem;
      },
      publicUrl,
      adminSocketPath: socketPath,
      store,
      get ca() {
        return ring.issuer;
      },
      ring,
      enrollment,
      live,
      sessions: sessionHost,
      address: () => address,
      gatewayLoad,
      close: () =>
        (closing ??= (async () => {
          clearInterval(rotateTimer);
          // Stop taking connections first: from here an upgrade still in its TLS handshake is refused
          // (otherwise it would open a session after the registry's shutdown and hold the listener open for good).
          const gatewayClosed = gw.close();
          certificates?.stop();
          sessionHost?.close();
          for (const h of featureHandles.reverse()) await h.close?.();
          registry.shutdown(1001, 'server shutting down');
          await Promise.all([gatewayClosed, closeServer(adminServer)]);
          await presence.close();
          await store.close();
          logger.info('server stopped');
        })()),
    };
    fatal = (err) => {
      if (options.onFatal) options.onFatal(err);
      else running.close().catch((closeErr: unknown) => logger.error({ err: closeErr }, 'error during shutdown'));
    };
    if (lostDuringStart) {
      await running.close();
      throw lostDuringStart;
    }
    return running;
  } catch (err) {
    clearInterval(rotateTimer);
    certificates?.stop();
    sessions?.close();
    for (const h of featureHandles.reverse()) await Promise.resolve(h.close?.()).catch(() => {});
    if (gateway) await gateway.close().catch(() => {});
    if (admin) await closeServer(admin).catch(() => {});
    await presence.close().catch(() => {});
    await store.close().catch(() => {});
    throw err;
  }
}

async function prepareDataDir(dir: string, logger: Logger): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await stat(dir);
  if ((st.mode & 0o077) !== 0) {
    // The admin socket's only protection is this directory and its own mode.
    await chmod(dir, 0o700);
    logger.warn({ dataDir: dir }, 'data dir was group/other accessible; set to 0700');
  }
}

async function refuseIfRunning(socketPath: string): Promise<void> {
  try {
    await new AdminClient(socketPath).request('GET', '/v1/health', undefined, undefined, 2_000);
  } catch (err) {
    if (err instanceof MeshlinkError && err.code === 'ML_ERR_SERVER_NOT_RUNNING') return; // stale or absent socket: ours to replace
    throw new MeshlinkError('ML_ERR_SERVER_RUNNING', `the admin socket ${socketPath} exists and does not behave like an idle leftover: ${(err as Error).message}`);
  }
  throw new MeshlinkError('ML_ERR_SERVER_RUNNING', `a meshlink server is already running on this data dir (${socketPath})`);
}


function closeServer(server: HttpServer | HttpsServer): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
