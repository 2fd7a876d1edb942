import type net from 'node:net';
import type { DaemonConfig } from './config';
import { Dataplane } from './dataplane/dataplane';
import { detectUnderlay } from './dataplane/underlay';
import { IpamService } from './driver/ipam';
import { NetworkDriver } from './driver/network-driver';
import { PeerSync } from './driver/peer-sync';
import { RecordStore } from './driver/record-store';
import type { Logger } from './log';
import { pluginRoutes } from './protocol/routes';
import { createApp, listenUnix } from './protocol/server';
import { openStore } from './store/open';

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
  const store = await openStore(config.store, { prefix: config.storePrefix, logger });
  const dataplane = new Dataplane({ netnsDir: config.netnsDir, logger });
  const records = new RecordStore(store);
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
  );
  const network = new NetworkDriver(records, dataplane, host, logger, peerSync);
  const ipam = new IpamService(records, config.hostName, logger);
  const app = createApp(pluginRoutes({ network, ipam, scope: config.scope, logger }), logger);
  let server: net.Server;
  try {
    await peerSync.start();
    await network.resumeAfterRestart();
    server = await listenUnix(app, config.socket);
  } catch (err) {
    await peerSync.close().catch(() => undefined);
    await store.close();
    dataplane.close();
    throw err;
  }
  logger.info('tsoverlay serving', {
    socket: config.socket,
    store: store.description,
    host: host.name,
    vtep: host.vtep,
    underlay: underlay.interfaceName,
    underlayMtu: host.underlayMtu,
    scope: config.scope,
  });
  return {
    async close() {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await peerSync.close();
      dataplane.close();
      await store.close();
      logger.info('tsoverlay stopped');
    },
  };
}
