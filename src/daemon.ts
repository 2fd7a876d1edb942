import type http from 'node:http';
import type net from 'node:net';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import type { DaemonConfig } from './config';
import { Dataplane } from './dataplane/dataplane';
import { detectUnderlay } from './dataplane/underlay';
import { IpamService, REQUEST_ID_OPTION } from './driver/ipam';
import { NetworkDriver } from './driver/network-driver';
import { PeerSync } from './driver/peer-sync';
import { RecordStore } from './driver/record-store';
import type { Logger } from './log';
import { Metrics, healthHandler, listenStatus, type HealthReport } from './metrics';
import { InflightJournal } from './protocol/inflight';
import { pluginRoutes } from './protocol/routes';
import { createApp, listenUnix, type Route } from './protocol/server';
import { openStore } from './store/open';
import { StoreUnavailableError } from './store/store';
import { PluginError, errorMessage } from './util/errors';

export interface RunningDaemon {
  close(): Promise<void>;
}

/**
 * Wires the layers together: protocol → driver → store + dataplane.
 * Overlay namespaces are left in place on close: running containers keep their network
 * while the plugin restarts, and the next start reconciles them.
 */
export async function startDaemon(config: DaemonConfig, logger: Logger): Promise<RunningDaemon> {
  const underlay = await detectUnderlay(config.vtep);
  const tls = config.etcdTls;
  const auth = config.etcdAuth;
  const etcd =
    tls || auth ? { ...(tls ? { caFile: tls.ca, certFile: tls.cert, keyFile: tls.key } : {}), ...(auth ?? {}) } : undefined;
  const store = await openStore(config.store, {
    prefix: config.storePrefix,
    logger,
    timeoutMs: config.storeTimeoutSeconds * 1000,
    ...(etcd ? { etcd } : {}),
  });
  const dataplane = new Dataplane({ netnsDir: config.netnsDir, logger });
  const records = new RecordStore(store);
  const metrics = new Metrics();
  const started = Date.now();
  const host = { name: config.hostName, vtep: underlay.address, underlayMtu: config.underlayMtu ?? underlay.mtu };
  const peerSync = new PeerSync(
    records,
    dataplane,
    {
      hostName: host.name,
      vtep: host.vtep,
      leaseTtlSeconds: config.leaseTtlSeconds,
      reconcileIntervalMs: config.reconcileIntervalSeconds * 1000,
    },
    logger,
    metrics,
  );
  const ipam = new IpamService(records, config.hostName, logger, { requestTimeoutMs: config.storeTimeoutSeconds * 1000 });
  const network = new NetworkDriver(records, dataplane, host, logger, peerSync, ipam);
  const health = (): HealthReport => {
    const h = peerSync.health();
    const problems = [
      ...(startup.ready ? [] : ['starting: waiting for the store']),
      ...(h.registered ? [] : ['this host is not registered in the store']),
      ...Object.entries(h.watchTrouble).map(([watch, error]) => `store watch ${watch}: ${error}`),
    ];
    return {
      status: problems.length === 0 ? 'ok' : 'degraded',
      host: host.name,
      store: store.description,
      uptimeSeconds: Math.round((Date.now() - started) / 1000),
      problems,
    };
  };
  const status = { '/metrics': metrics.metricsHandler, '/healthz': healthHandler(health) };
  const startup = new Startup();
  // Beside the netns directory (default /run/tsoverlay/inflight): cleared by a reboot, like Docker's retries.
  const journal = new InflightJournal(path.join(path.dirname(path.resolve(config.netnsDir)), 'inflight'), logger);
  journal.recover();
  const routes = answerOnceReady(pluginRoutes({ network, ipam, scope: config.scope, logger }), {
    startup,
    journal,
    logger,
    store: () => store.description,
  });
  const app = createApp(routes, logger, {
    onRequest: (method, code, seconds) => metrics.observeRequest(method, code, seconds),
    get: status,
  });
  let server: net.Server;
  let statusServer: http.Server | undefined;
  const closeServers = async (): Promise<void> => {
    if (statusServer) await new Promise<void>((resolve) => statusServer!.close(() => resolve()));
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  try {
    // The socket first: Docker gives up on (a managed plugin: disables) a plugin whose socket does
    // not answer soon after it starts. Requests that need state wait for the start-up below.
    server = await listenUnix(app, config.socket, 0o600, config.socketGroup);
    if (config.metricsAddress) {
      statusServer = await listenStatus(config.metricsAddress, status, logger).catch(async (err: unknown) => {
        await new Promise<void>((resolve) => server.close(() => resolve()));
        throw err;
      });
    }
  } catch (err) {
    await store.close();
    dataplane.close();
    throw err;
  }
  logger.info('tsoverlay listening', { socket: config.socket, ...(config.socketGroup !== undefined ? { socketGroup: config.socketGroup } : {}) });

  let syncStarted = false;
  /** Idempotent, so that it can be retried from the top after the store failed half-way. */
  const initialise = async (): Promise<void> => {
    if (!syncStarted) {
      // Before this host registers: no peer must see what a crash left behind.
      try {
        await network.recoverAfterCrash();
      } catch (err) {
        if (err instanceof StoreUnavailableError) throw err;
        logger.error('start-up sweep of leftovers failed; continuing', { error: errorMessage(err) });
      }
      await peerSync.start();
      syncStarted = true;
    }
    await network.resumeAfterRestart();
  };
  try {
    await initialise();
    startup.done();
  } catch (err) {
    if (!(err instanceof StoreUnavailableError)) {
      // Misconfiguration (credentials, certificates…): say so and stop rather than limp along.
      await closeServers();
      await peerSync.close().catch(() => undefined);
      await store.close();
      dataplane.close();
      throw err;
    }
    logger.warn('store unreachable at start: serving the socket and retrying', { store: store.description, error: errorMessage(err) });
    void (async () => {
      for (let delay = 500; !startup.closed; delay = Math.min(delay * 2, 5_000)) {
        await sleepUnref(delay);
        if (startup.closed) return;
        try {
          await initialise();
          startup.done();
          logger.info('tsoverlay serving', { store: store.description, host: host.name, vtep: host.vtep, storeWasUnreachable: true });
          return;
        } catch (e) {
          logger.warn('start-up still waiting for the store', { store: store.description, error: errorMessage(e) });
        }
      }
    })();
  }
  // Kernel drift (a device deleted by hand) is repaired on the reconcile interval; peers have
  // their own periodic comparison in peer-sync.
  const repairTimer = setInterval(() => {
    if (!startup.ready) return;
    network.repairOverlays().then(
      (repaired) => {
        if (repaired.length > 0) logger.warn('overlay devices repaired', { networks: repaired });
      },
      (err: unknown) => logger.warn('overlay repair failed; will retry', { error: errorMessage(err) }),
    );
  }, config.reconcileIntervalSeconds * 1000);
  repairTimer.unref();
  if (startup.ready) logger.info('tsoverlay serving', {
    socket: config.socket,
    store: store.description,
    host: host.name,
    vtep: host.vtep,
    underlay: underlay.interfaceName,
    underlayMtu: host.underlayMtu,
    scope: config.scope,
    ...(config.metricsAddress ? { metrics: `${config.metricsAddress.host}:${config.metricsAddress.port}` } : {}),
  });
  return {
    async close() {
      startup.close();
      clearInterval(repairTimer);
      await closeServers();
      // Keep the host's lease: a stopping daemon is a plugin restart, not a departure (see PeerSync.close).
      await peerSync.close(false);
      dataplane.close();
      await store.close();
      logger.info('tsoverlay stopped');
    },
  };
}

function sleepUnref(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Start-up state: requests that need the store and the kernel state wait for `done()`. */
class Startup {
  ready = false;
  closed = false;
  private resolve: () => void = () => undefined;
  readonly whenReady = new Promise<void>((resolve) => (this.resolve = resolve));
  done(): void {
    this.ready = true;
    this.resolve();
  }
  close(): void {
    this.closed = true;
  }
}

/** Answered at once even while starting: they need neither the store nor the kernel. */
const STATELESS_METHODS = new Set([
  'Plugin.Activate',
  'NetworkDriver.GetCapabilities',
  'IpamDriver.GetCapabilities',
  'IpamDriver.GetDefaultAddressSpaces',
]);
/** How long a request waits for a start-up that cannot reach the store before it is refused. */
const STARTUP_WAIT_MS = 10_000;

interface GateDeps {
  startup: Startup;
  journal: InflightJournal;
  logger: Logger;
  store: () => string;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Tags a RequestAddress with an id of its own (journaled with it), so that running it again
 * after a crash returns the address the first run allocated (see IpamService). Only a body
 * replayed from the journal keeps the id it carries: one a caller sent could name another
 * request and so claim its address.
 */
function withRequestId(body: unknown, fromJournal: boolean): unknown {
  if (!isPlainObject(body)) return body;
  const options = body.Options ?? {};
  if (!isPlainObject(options)) return body;
  if (fromJournal && typeof options[REQUEST_ID_OPTION] === 'string') return body;
  return { ...body, Options: { ...options, [REQUEST_ID_OPTION]: randomUUID() } };
}

function isEmptyBody(body: unknown): boolean {
  return typeof body === 'object' && body !== null && !Array.isArray(body) && Object.keys(body).length === 0;
}

/**
 * Stateful methods wait for the start-up (bounded), are journaled while they run, and an empty
 * body right after a crash gets the body Docker's retry lost (see protocol/inflight.ts).
 */
function answerOnceReady(routes: Record<string, Route>, { startup, journal, logger, store }: GateDeps): Record<string, Route> {
  const gated: Record<string, Route> = {};
  for (const [method, route] of Object.entries(routes)) {
    gated[method] = STATELESS_METHODS.has(method)
      ? route
      : {
          async run(body: unknown): Promise<unknown> {
            if (!startup.ready) {
              await Promise.race([startup.whenReady, sleepUnref(STARTUP_WAIT_MS)]);
              if (!startup.ready) throw new PluginError(`tsoverlay is still starting: the store (${store()}) is not reachable yet; try again`, 503);
            }
            let effective = body;
            if (isEmptyBody(body)) {
              const lost = journal.lostBody(method);
              if (lost !== undefined) {
                logger.warn('empty request body after a crash: running the request the previous run was cut off in', { method });
                effective = lost;
              } else {
                // Most likely Docker's retry of a request the previous run died before reading.
                logger.warn('empty request body and nothing to replay: the request is lost', { method });
              }
            }
            if (method === 'IpamDriver.RequestAddress') effective = withRequestId(effective, effective !== body);
            const done = journal.begin(method, effective);
            try {
              return await route.run(effective);
            } finally {
              done();
            }
          },
        };
  }
  return gated;
}
