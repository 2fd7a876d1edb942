/**
 * Names across hosts, as one piece the daemon wires in: the Docker-side publisher of this
 * host's container names, the store-side view of every host's names, and a DNS listener per
 * local overlay (started and stopped with the overlay).
 */
import type Dockerode from 'dockerode';
import type { Registry } from 'prom-client';
import { DnsListeners, type OverlayDns } from '../dns/listeners';
import { DnsMetrics } from '../dns/metrics';
import { Forwarder, hostResolvers, type Upstream } from '../dns/upstream';
import type { JoinedEndpoints } from '../driver/endpoint-feed';
import type { LiveHosts } from '../driver/peer-view';
import type { RecordStore } from '../driver/record-store';
import type { Logger } from '../log';
import { errorMessage } from '../util/errors';
import { DockerNames } from './docker-names';
import { NamesView, type ServedName } from './view';

export interface NamesServiceOptions {
  hostName: string;
  /** Which hosts are alive for the data plane: peer distribution's (PeerSync.liveHosts). */
  liveHosts: LiveHosts;
  /** The endpoints of the followed networks: peer distribution's (PeerSync.endpoints). */
  endpoints: JoinedEndpoints;
  /** Docker's API socket (the engine this host's containers run on). */
  dockerSocket: string;
  /** Resolvers for names outside the networks; default: the host's resolv.conf, read per query batch. */
  upstreams?: Upstream[];
  /** Port of the listeners (53; tests may use another). */
  port?: number;
  registry?: Registry;
}

/** How long a resolv.conf read is reused: a changed file is picked up within this time. */
const RESOLV_CONF_TTL_MS = 5_000;

export class NamesService {
  readonly view: NamesView;
  private publisher: DockerNames | undefined;
  private readonly records: RecordStore;
  private readonly listeners: DnsListeners;
  private readonly forwarder: Forwarder;
  /** Network key of each local overlay whose names are followed, by Docker network id. */
  private readonly followed = new Map<string, string>();

  constructor(
    records: RecordStore,
    private readonly options: NamesServiceOptions,
    private readonly logger: Logger,
  ) {
    this.records = records;
    this.view = new NamesView(records.store, logger, options.liveHosts, options.endpoints);
    let cached: { at: number; upstreams: Upstream[] } | undefined;
    const upstreams = (): Upstream[] => {
      if (options.upstreams) return options.upstreams;
      const now = Date.now();
      if (!cached || now - cached.at > RESOLV_CONF_TTL_MS) cached = { at: now, upstreams: hostResolvers() };
      return cached.upstreams;
    };
    this.forwarder = new Forwarder({ upstreams });
    const metrics = options.registry ? new DnsMetrics(options.registry) : undefined;
    this.listeners = new DnsListeners({
      zone: (networkKey) => this.view.zone(networkKey),
      forwarder: this.forwarder,
      logger,
      ...(metrics ? { observer: metrics } : {}),
      ...(options.port !== undefined ? { port: options.port } : {}),
    });
  }

  /** Starts the store view (waits for its first state) and, in the background, the Docker side. */
  async start(): Promise<void> {
    await this.view.start();
    // Loaded here, not with the daemon: with --dns off the Docker client is never loaded.
    const { default: Docker } = (await import('dockerode')) as { default: new (opts: { socketPath: string }) => Dockerode };
    this.publisher = new DockerNames(new Docker({ socketPath: this.options.dockerSocket }), this.records, { hostName: this.options.hostName }, this.logger);
    this.publisher.start();
    this.logger.info('names service started', {
      dockerSocket: this.options.dockerSocket,
      upstreams: (this.options.upstreams ?? hostResolvers()).map((u) => `${u.address}:${u.port}`),
    });
  }

  /** An overlay is up on this host: serve its names on its gateway. Never throws. */
  async overlayActive(spec: OverlayDns): Promise<void> {
    if (!this.followed.has(spec.networkId)) {
      this.followed.set(spec.networkId, spec.networkKey);
      await this.view.follow(spec.networkKey).catch((err: unknown) => this.logger.warn('names of a network not followed', { networkKey: spec.networkKey, error: errorMessage(err) }));
    }
    await this.listeners.activate(spec).catch((err: unknown) => this.logger.error('DNS listener activation failed', { networkId: spec.networkId, error: errorMessage(err) }));
  }

  async overlayReleased(networkId: string): Promise<void> {
    await this.listeners.release(networkId).catch(() => undefined);
    const networkKey = this.followed.get(networkId);
    if (networkKey === undefined) return;
    this.followed.delete(networkId);
    this.view.unfollow(networkKey);
  }

  listening(): OverlayDns[] {
    return this.listeners.list();
  }

  served(networkKey?: string): ServedName[] {
    return this.view.served(networkKey);
  }

  async close(): Promise<void> {
    await this.listeners.close();
    await this.publisher?.close();
    await this.view.close();
    this.forwarder.close();
  }
}
