/**
 * The daemon's Prometheus metrics (prom-client, one registry per daemon) and the small TCP
 * listener that serves `/metrics` and `/healthz` on `--metrics-address` when configured.
 * The plugin socket serves the same two paths (src/protocol/server.ts, AppOptions.get).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ListenAddress } from './config';
import type { EncryptionObserver } from './crypto/controller';
import type { ApplyResult } from './crypto/esp';
import type { Miss } from './dataplane/peers';
import type { MissOutcome } from './driver/miss-responder';
import type { ReconcileTrigger } from './driver/peer-programmer';
import type { PeerSyncObserver, WatchName } from './driver/peer-sync';
import type { Logger } from './log';
import { createLimitedServer, type GetHandler } from './protocol/server';
import { errorMessage } from './util/errors';

/** Plugin requests are fast (store + netlink); Docker gives up after 30 s of retries. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** Label value for a network: the short id Docker itself prints (12 characters). */
export function networkLabel(networkId: string): string {
  return networkId.slice(0, 12);
}

type TriggerLabel = 'periodic' | 'watch_reset' | 'network_active' | 'other';

/** Reconcile triggers as labels: a fixed, small set. */
const TRIGGER_LABELS: Record<ReconcileTrigger, TriggerLabel> = {
  periodic: 'periodic',
  'endpoint watch reset': 'watch_reset',
  'host watch reset': 'watch_reset',
  'network active': 'network_active',
  'overlay repaired': 'other',
};

/** The label of a reconcile trigger; a trigger this version does not know counts as `other`. */
export function triggerLabel(trigger: string): TriggerLabel {
  return Object.hasOwn(TRIGGER_LABELS, trigger) ? TRIGGER_LABELS[trigger as ReconcileTrigger] : 'other';
}

export class Metrics implements PeerSyncObserver, EncryptionObserver {
  readonly registry = new Registry();
  private readonly requests: Counter<'method' | 'code'>;
  private readonly requestErrors: Counter<'method'>;
  private readonly requestSeconds: Histogram<'method'>;
  private readonly peers: Gauge<'network'>;
  private readonly peerChanges: Counter<'op'>;
  private readonly reconcileRuns: Counter<'trigger'>;
  private readonly reconcileRepairs: Counter<'trigger'>;
  private readonly watchResets: Counter<'watch'>;
  private readonly watchReconnects: Counter<'watch'>;
  private readonly watchErrors: Counter<'watch'>;
  private readonly misses: Counter<'kind' | 'outcome'>;
  private readonly watchEventCount: Counter<'watch' | 'network'>;
  // Encrypted networks (src/crypto): kept apart from the peer metrics above.
  private readonly ipsecSas: Gauge;
  private readonly ipsecPolicies: Gauge;
  private readonly keyEpoch: Gauge;
  private readonly keyRotations: Counter;
  private readonly ipsecErrors: Counter;

  constructor(options: { processMetrics?: boolean } = {}) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: 'tsoverlay_plugin_requests_total',
      help: 'Plugin API requests answered, by method and HTTP status code.',
      labelNames: ['method', 'code'],
      registers,
    });
    this.requestErrors = new Counter({
      name: 'tsoverlay_plugin_request_errors_total',
      help: 'Plugin API requests answered with an error ({"Err": ...}), by method.',
      labelNames: ['method'],
      registers,
    });
    this.requestSeconds = new Histogram({
      name: 'tsoverlay_plugin_request_duration_seconds',
      help: 'Time to answer a plugin API request, by method.',
      labelNames: ['method'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.peers = new Gauge({
      name: 'tsoverlay_peers_programmed',
      help: 'Remote containers programmed as neighbour + FDB entries, by network (short Docker id).',
      labelNames: ['network'],
      registers,
    });
    this.peerChanges = new Counter({
      name: 'tsoverlay_peer_changes_total',
      help: 'Peer entries added to or removed from overlay namespaces.',
      labelNames: ['op'],
      registers,
    });
    this.reconcileRuns = new Counter({
      name: 'tsoverlay_reconcile_runs_total',
      help: 'Kernel-vs-store comparisons of one network, by trigger.',
      labelNames: ['trigger'],
      registers,
    });
    this.reconcileRepairs = new Counter({
      name: 'tsoverlay_reconcile_repairs_total',
      help: 'Peer entries a kernel-vs-store comparison had to add or remove (drift repaired), by trigger.',
      labelNames: ['trigger'],
      registers,
    });
    this.watchResets = new Counter({
      name: 'tsoverlay_store_watch_resets_total',
      help: 'Full-state deliveries of a store watch (the first one and one per reconnect).',
      labelNames: ['watch'],
      registers,
    });
    this.watchReconnects = new Counter({
      name: 'tsoverlay_store_watch_reconnects_total',
      help: 'Store watch reconnects (or history compactions) after which the full state was read again.',
      labelNames: ['watch'],
      registers,
    });
    this.watchErrors = new Counter({
      name: 'tsoverlay_store_watch_errors_total',
      help: 'Store watch connection errors (the watch retries by itself).',
      labelNames: ['watch'],
      registers,
    });
    this.misses = new Counter({
      name: 'tsoverlay_vxlan_misses_total',
      help: 'L2/L3 miss notifications of vxlan devices in mode=miss, by kind and outcome.',
      labelNames: ['kind', 'outcome'],
      registers,
    });
    this.watchEventCount = new Counter({
      name: 'tsoverlay_store_watch_events_total',
      help: 'Store watch events received; endpoint events by whether their network has local containers (network="used") or not ("unused").',
      labelNames: ['watch', 'network'],
      registers,
    });
    this.ipsecSas = new Gauge({ name: 'tsoverlay_ipsec_sas', help: 'IPsec SAs of encrypted networks in this host\'s kernel.', registers });
    this.ipsecPolicies = new Gauge({ name: 'tsoverlay_ipsec_policies', help: 'IPsec policies of encrypted networks in this host\'s kernel.', registers });
    this.keyEpoch = new Gauge({ name: 'tsoverlay_key_epoch', help: 'Key epoch encrypted networks send with (the key ring\'s primary epoch).', registers });
    this.keyRotations = new Counter({ name: 'tsoverlay_key_rotations_total', help: 'Key rotations this host applied.', registers });
    this.ipsecErrors = new Counter({ name: 'tsoverlay_ipsec_errors_total', help: 'Failed attempts to program IPsec state (retried on the reconcile interval).', registers });
    // Families present (at 0) from the start, so that rate() has a baseline.
    for (const op of ['add', 'remove']) this.peerChanges.inc({ op }, 0);
    for (const watch of ['endpoints', 'hosts']) {
      this.watchResets.inc({ watch }, 0);
      this.watchReconnects.inc({ watch }, 0);
      this.watchErrors.inc({ watch }, 0);
    }
    for (const network of ['used', 'unused']) this.watchEventCount.inc({ watch: 'endpoints', network }, 0);
    this.watchEventCount.inc({ watch: 'hosts', network: 'used' }, 0);
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  /** One answered plugin request (the server's onRequest hook). */
  applied(r: ApplyResult, epoch: number): void {
    this.ipsecSas.set(r.sas);
    this.ipsecPolicies.set(r.policies);
    this.keyEpoch.set(epoch);
  }

  rotated(epoch: number): void {
    this.keyRotations.inc();
    this.keyEpoch.set(epoch);
  }

  applyFailed(): void {
    this.ipsecErrors.inc();
  }

  /** The last encrypted network on this host went: no IPsec state left. */
  ipsecRemoved(): void {
    this.ipsecSas.set(0);
    this.ipsecPolicies.set(0);
  }

  observeRequest(method: string, status: number, seconds: number): void {
    this.requests.inc({ method, code: String(status) });
    if (status >= 300) this.requestErrors.inc({ method });
    this.requestSeconds.observe({ method }, seconds);
  }

  peersProgrammed(networkId: string, count: number): void {
    this.peers.set({ network: networkLabel(networkId) }, count);
  }

  peersChanged(added: number, removed: number): void {
    if (added) this.peerChanges.inc({ op: 'add' }, added);
    if (removed) this.peerChanges.inc({ op: 'remove' }, removed);
  }

  reconciled(trigger: ReconcileTrigger, repairs: number): void {
    const label = triggerLabel(trigger);
    this.reconcileRuns.inc({ trigger: label });
    this.reconcileRepairs.inc({ trigger: label }, repairs);
  }

  watchReset(watch: WatchName, reconnect: boolean): void {
    this.watchResets.inc({ watch });
    if (reconnect) this.watchReconnects.inc({ watch });
  }

  watchError(watch: WatchName): void {
    this.watchErrors.inc({ watch });
  }

  watchEvents(watch: WatchName, used: number, unused: number): void {
    if (used) this.watchEventCount.inc({ watch, network: 'used' }, used);
    if (unused) this.watchEventCount.inc({ watch, network: 'unused' }, unused);
  }

  miss(kind: Miss['kind'], outcome: MissOutcome): void {
    this.misses.inc({ kind, outcome });
  }

  /** `GET /metrics`: the Prometheus text exposition format. */
  readonly metricsHandler: GetHandler = async () => ({
    contentType: this.registry.contentType,
    body: await this.registry.metrics(),
  });
}

export interface HealthReport {
  status: 'ok' | 'degraded';
  host: string;
  store: string;
  uptimeSeconds: number;
  /** Why the status is degraded (empty when ok). */
  problems: string[];
}

/** `GET /healthz`: 200 with `{"status":"ok",…}` when healthy, 503 with the problems otherwise. */
export function healthHandler(report: () => HealthReport): GetHandler {
  return async () => {
    const r = report();
    return { status: r.status === 'ok' ? 200 : 503, contentType: 'application/json', body: `${JSON.stringify(r)}\n` };
  };
}

/**
 * Serves only the GET handlers (never the plugin methods: whoever reaches those can rewire
 * every container's network) over TCP.
 */
export async function listenStatus(address: ListenAddress, handlers: Record<string, GetHandler>, logger: Logger): Promise<http.Server> {
  const server = createLimitedServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const handler = Object.hasOwn(handlers, path) ? handlers[path] : undefined;
    if (!handler || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(handler ? 405 : 404, { 'Content-Type': 'text/plain' }).end(handler ? 'GET only\n' : 'not found\n');
      return;
    }
    handler().then(
      (r) => {
        res.writeHead(r.status ?? 200, { 'Content-Type': r.contentType });
        res.end(req.method === 'HEAD' ? undefined : r.body);
      },
      (err: unknown) => {
        logger.warn('status request failed', { path, error: errorMessage(err) });
        res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${errorMessage(err)}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  logger.info('metrics listening', { address: `${bound.address}:${bound.port}` });
  return server;
}
