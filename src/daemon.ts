import type http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import type { DaemonConfig } from './config';
import { Dataplane } from './dataplane/dataplane';
import { detectUnderlay } from './dataplane/underlay';
import { HostRegistration, HostNameTakenError } from './driver/host-registration';
import { loadOrCreateInstanceId } from './driver/host-identity';
import { DEFAULT_LIVENESS } from './driver/host-liveness';
import { UnderlayProbe, type ProbeTarget } from './dataplane/underlay-probe';
import { IpamService } from './driver/ipam';
import { NetworkDriver } from './driver/network-driver';
import type { ReconcileTrigger } from './driver/peer-programmer';
import { PeerSync } from './driver/peer-sync';
import type { PeerSyncHooks } from './driver/local-overlays';
import type { NetworkRecord } from './driver/records';
import { NamesService } from './names/service';
import { RecordStore } from './driver/record-store';
import type { Logger } from './log';
import { Metrics, healthHandler, listenStatus, type HealthReport } from './metrics';
import { Startup, gateRoutes } from './protocol/gate';
import { InflightJournal } from './protocol/inflight';
import { pluginRoutes } from './protocol/routes';
import { createApp, listenUnix } from './protocol/server';
import { openStore } from './store/open';
import { StoreUnavailableError, type Store } from './store/store';
import { EncryptionController, EncryptionUnavailableError } from './crypto/controller';
import { EspManager } from './crypto/esp';
import { type HostKeyPair, loadHostKey, loadOrCreateHostKey } from './crypto/host-key';
import { type EspSupport, XfrmClient, probeEspSupport } from './dataplane/xfrm';
import type { EncryptionHooks } from './driver/local-overlays';
import { errorMessage } from './util/errors';
import { MallocTrimmer } from './util/malloc-trim';
import { Backoff, sleepUnref } from './util/retry';

/** How often freed C heap goes back to the kernel after start-up. */
const MALLOC_TRIM_INTERVAL_MS = 2_000;

export interface RunningDaemon {
  close(): Promise<void>;
}

/**
 * Wires the layers together: protocol → driver → store + dataplane.
 * Overlay namespaces are left in place on close: running containers keep their network
 * while the plugin restarts, and the next start reconciles them.
 */
export async function startDaemon(
  config: DaemonConfig,
  logger: Logger,
  /** A start-up that completes in the background (the store was down) can still fail for good. */
  onFatal: (err: Error) => void = (err) => {
    throw err;
  },
): Promise<RunningDaemon> {
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
  let instance: string;
  try {
    instance = loadOrCreateInstanceId(config.stateDir);
  } catch (err) {
    await store.close();
    dataplane.close();
    throw new Error(`cannot read or make this host's instance id under --state-dir ${config.stateDir}: ${errorMessage(err)}`);
  }
  const identity = { hostName: host.name, vtep: host.vtep, leaseTtlSeconds: config.leaseTtlSeconds, instance };
  const registration = new HostRegistration(records, identity, logger);
  // Peers decide whether this host is alive by asking here when its registration lapses. Only a
  // cluster store has peers, so the embedded store opens no port. Not fatal: without it this host
  // is withdrawn everywhere as soon as its lease expires.
  const probe =
    config.probePort === 0 || config.store.startsWith('local:')
      ? undefined
      : await UnderlayProbe.listen(host.vtep, config.probePort, () => ({ name: host.name, instance }), logger).catch((err: unknown) => {
          logger.warn('cannot answer or send underlay probes: a host is withdrawn as soon as its store registration lapses', {
            address: `${host.vtep}:${config.probePort}`,
            error: errorMessage(err),
          });
          return undefined;
        });
  const peerSync = new PeerSync(
    records,
    dataplane,
    {
      ...identity,
      reconcileIntervalMs: config.reconcileIntervalSeconds * 1000,
      ...(probe ? { probe: (target: ProbeTarget) => probe.probe(target, config.probePort, DEFAULT_LIVENESS) } : {}),
    },
    logger,
    metrics,
    registration,
  );
  const closeProbes = (): void => probe?.close();
  const ipam = new IpamService(records, config.hostName, logger, { requestTimeoutMs: config.requestTimeoutSeconds * 1000 });
  const encryption = startEncryption(config, store, { name: host.name, instance, vtep: host.vtep }, metrics, logger);
  const names = config.dns.enabled
    ? new NamesService(
        records,
        { hostName: host.name, liveHosts: peerSync.liveHosts, endpoints: peerSync.endpoints, dockerSocket: config.dns.dockerSocket, registry: metrics.registry, ...(config.dns.upstreams ? { upstreams: config.dns.upstreams } : {}) },
        logger,
      )
    : undefined;
  const network = new NetworkDriver(records, dataplane, host, logger, names ? withNamesHooks(peerSync, names, dataplane) : peerSync, ipam, encryption.hooks, {
    requestTimeoutMs: config.requestTimeoutSeconds * 1000,
  });
  const health = (): HealthReport => {
    const h = peerSync.health();
    const problems = [
      ...(startup.ready ? [] : ['starting: waiting for the store']),
      ...registration.problems(),
      ...Object.entries(h.watchTrouble).map(([watch, error]) => `store watch ${watch}: ${error}`),
      ...h.unregisteredPeers.map((peer) => `host ${peer} lost its store registration; kept as a peer while it answers on the underlay`),
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
  const routes = gateRoutes(pluginRoutes({ network, ipam, recovery: network.recovery, scope: config.scope, logger }), {
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
    closeProbes();
    await store.close();
    dataplane.close();
    throw err;
  }
  logger.info('tsoverlay listening', { socket: config.socket, ...(config.socketGroup !== undefined ? { socketGroup: config.socketGroup } : {}) });

  let syncStarted = false;
  /** Idempotent, so that it can be retried from the top after the store failed half-way. */
  const initialise = async (): Promise<void> => {
    if (!syncStarted) {
      // Recovery withdraws endpoints and releases addresses by host name: not under a name
      // another live host holds (a cloned machine).
      await registration.checkName();
      // Before this host registers: no peer must see what a crash left behind.
      try {
        await network.recovery.recoverAfterCrash();
      } catch (err) {
        if (err instanceof StoreUnavailableError) throw err;
        logger.error('start-up sweep of leftovers failed; continuing', { error: errorMessage(err) });
      }
      registration.settledAt(network.recovery.settledRevision, network.recovery.settledIn);
      await peerSync.start();
      await encryption.start();
      // Before the overlays resume: their DNS listeners answer from a loaded view.
      await names?.start();
      syncStarted = true;
    }
    await network.recovery.resumeAfterRestart();
  };
  /** Stops everything a failed start-up opened; the overlay namespaces stay, as on close(). */
  const abandon = async (): Promise<void> => {
    startup.close();
    closeProbes();
    await closeServers();
    await names?.close();
    await peerSync.close().catch((e: unknown) =>
      logger.warn('cannot stop peer distribution cleanly; the host lease expires by itself', { error: errorMessage(e) }),
    );
    await encryption.close();
    await store.close();
    dataplane.close();
  };
  // Start-up's listing of every peer is the largest burst a daemon sees: its freed buffers are
  // handed back at once, later bursts' on the interval.
  const trimmer = new MallocTrimmer(logger);
  try {
    await initialise();
    startup.done();
    trimmer.start(MALLOC_TRIM_INTERVAL_MS);
  } catch (err) {
    if (!(err instanceof StoreUnavailableError)) {
      // Misconfiguration (credentials, certificates, a host name another live host holds…):
      // say so and stop rather than limp along.
      await abandon();
      throw err;
    }
    logger.warn('store unreachable at start: serving the socket and retrying', { store: store.description, error: errorMessage(err) });
    void (async () => {
      const backoff = new Backoff(500, 5_000);
      while (!startup.closed) {
        await sleepUnref(backoff.next());
        if (startup.closed) return;
        try {
          await initialise();
          startup.done();
          trimmer.start(MALLOC_TRIM_INTERVAL_MS);
          logger.info('tsoverlay serving', { store: store.description, host: host.name, vtep: host.vtep, storeWasUnreachable: true });
          return;
        } catch (e) {
          if (e instanceof HostNameTakenError) {
            logger.error('refusing to start', { error: e.message });
            await abandon();
            onFatal(e);
            return;
          }
          logger.warn('start-up still waiting for the store', { store: store.description, error: errorMessage(e) });
        }
      }
    })();
  }
  // Kernel drift (a device deleted by hand) is repaired on the reconcile interval; peers have
  // their own periodic comparison in peer-sync.
  const repairTimer = setInterval(() => {
    if (!startup.ready) return;
    network.overlays.repairAll().then(
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
      trimmer.close();
      closeProbes();
      await closeServers();
      await names?.close();
      // Keep the host's lease: a stopping daemon is a plugin restart, not a departure (see PeerSync.close).
      await peerSync.close(false);
      // The SAs stay in the kernel, like the overlays: a restart must not cut encrypted traffic.
      await encryption.close();
      dataplane.close();
      await store.close();
      logger.info('tsoverlay stopped');
    },
  };
}

/**
 * Encrypted networks (src/crypto): the host key under --state-dir, the IPsec tables of the host
 * namespace (where the VXLAN sockets live). A host whose kernel has no xfrm netlink interface
 * still serves plain networks; `-o encrypted` is then refused, saying why.
 */
function startEncryption(
  config: DaemonConfig,
  store: Store,
  host: { name: string; instance: string; vtep: string },
  metrics: Metrics,
  logger: Logger,
): { hooks: EncryptionHooks & { capability(): Promise<EspSupport> }; start(): Promise<void>; close(): Promise<void> } {
  const unavailable = (support: EspSupport): ReturnType<typeof startEncryption> => {
    logger.warn('encrypted networks unavailable on this host', { missing: support.missing });
    return {
      hooks: {
        port: config.encryptedVxlanPort,
        capability: async () => support,
        activate: async () => {
          throw new EncryptionUnavailableError(support);
        },
        deactivate: async () => undefined,
      },
      start: async () => undefined,
      close: async () => undefined,
    };
  };
  let xfrm: XfrmClient;
  try {
    xfrm = XfrmClient.open();
  } catch (err) {
    return unavailable({ ok: false, missing: ['xfrm_user (CONFIG_XFRM_USER: the kernel has no IPsec netlink interface)'], detail: errorMessage(err) });
  }
  let key: HostKeyPair;
  let ranBefore = false;
  try {
    ranBefore = loadHostKey(config.stateDir) !== undefined;
    key = loadOrCreateHostKey(config.stateDir);
  } catch (err) {
    xfrm.close();
    return unavailable({ ok: false, missing: [`a usable host key under --state-dir ${config.stateDir} (${errorMessage(err)})`] });
  }
  const controller = new EncryptionController({
    store,
    kernel: new EspManager(xfrm, config.encryptedVxlanPort),
    key,
    host,
    probe: () => probeEspSupport(),
    rotationIntervalSeconds: config.keyRotationIntervalSeconds,
    reconcileIntervalMs: config.reconcileIntervalSeconds * 1000,
    leaseTtlSeconds: config.leaseTtlSeconds,
    ranBefore,
    logger,
    observer: metrics,
  });
  return {
    hooks: {
      port: config.encryptedVxlanPort,
      capability: () => controller.capability(),
      activate: () => controller.activate(),
      deactivate: () => controller.deactivate(),
    },
    start: () => controller.start(),
    close: async () => {
      await controller.close().catch((e: unknown) => logger.warn('cannot stop encryption cleanly', { error: errorMessage(e) }));
      xfrm.close();
    },
  };
}

/**
 * The overlay life cycle as the names service needs it, beside the peer distribution: DNS
 * listeners on the network's gateways inside the overlay namespace while the overlay is up. Not
 * awaited: a Join neither waits for nor fails because of its network's DNS listener.
 */
function withNamesHooks(peerSync: PeerSync, names: NamesService, dataplane: Dataplane): PeerSyncHooks {
  const active = new Map<string, NetworkRecord>();
  const listen = (networkId: string, network: NetworkRecord): void => {
    const overlay = dataplane.findOverlay(networkId);
    // Each gateway the network has: a dual-stack container may be given either as its --dns.
    const addresses = [network.gateway, network.gateway6].filter((a): a is string => Boolean(a));
    if (overlay && addresses.length > 0) void names.overlayActive({ networkId, networkKey: network.key, netnsPath: overlay.netnsPath, addresses });
  };
  return {
    async networkActive(networkId, network) {
      await peerSync.networkActive(networkId, network);
      active.set(networkId, network);
      listen(networkId, network);
    },
    async networkInactive(networkId) {
      active.delete(networkId);
      void names.overlayReleased(networkId);
      await peerSync.networkInactive(networkId);
    },
    async resync(networkId: string, reason: ReconcileTrigger) {
      await peerSync.resync(networkId, reason);
      // A rebuilt namespace took the listener's sockets with it.
      const network = active.get(networkId);
      if (network) listen(networkId, network);
    },
  };
}
