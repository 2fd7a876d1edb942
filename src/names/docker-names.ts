/**
 * Learns the names of this host's containers on tsoverlay networks from the Docker engine and
 * publishes them to the store (`names/<networkKey>/<endpointId>`), so every host can answer them.
 *
 * Docker never tells a network driver a container's name or aliases; the engine's API does.
 * This runs beside the plugin's request path, never inside a request handler: dockerd calls
 * the plugin while holding its own locks (and at its start-up before its API serves), so a
 * handler waiting on the API could deadlock it. Events (`network connect`/`disconnect`,
 * container `start`/`die`/`rename`/`destroy`) trigger a re-read of that one container; a full
 * re-read runs at start, after the event stream reconnects and periodically, and removes what
 * this host published for containers that are gone.
 *
 * Swarm-scoped networks are left alone: Docker distributes their names itself.
 */
import type Dockerode from 'dockerode';
import { keys, networkIdRecordSchema } from '../driver/records';
import { RecordStore, nowIso } from '../driver/record-store';
import type { Logger } from '../log';
import { StoreUnavailableError } from '../store/store';
import { errorMessage } from '../util/errors';
import { KeyedMutex } from '../util/keyed-mutex';
import { namesKeys, namesRecordSchema, parseNamesKey, type NamesRecord } from './records';

export interface DockerNamesOptions {
  hostName: string;
  /** Full re-read interval: catches anything the event stream missed. */
  resyncIntervalMs?: number;
}

/** What a container publishes on one network, before the time stamp. */
type Published = Omit<NamesRecord, 'updated'>;

export interface DockerNamesObserver {
  published(count: number): void;
  /** The engine or the store could not be read; retried. */
  trouble(reason: string): void;
}

const EVENT_FILTERS: NonNullable<Dockerode.GetEventsOptions['filters']> = {
  type: ['container', 'network'],
  event: ['start', 'die', 'rename', 'destroy', 'connect', 'disconnect'],
};

export class DockerNames {
  private readonly mutex = new KeyedMutex();
  private readonly queued = new Set<string>();
  /** What this host has in the store, by container, then by store key. */
  private readonly published = new Map<string, Map<string, Published>>();
  /** Docker network id → store network key, or null for networks that are not ours (or swarm). */
  private readonly networks = new Map<string, string | null>();
  private stream: NodeJS.ReadableStream | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private running: Promise<void> | undefined;
  /** Resolves once the first full read has completed (tests, start-up logs). */
  readonly firstSync: Promise<void>;
  private firstSyncDone: () => void = () => undefined;

  constructor(
    private readonly docker: Dockerode,
    private readonly records: RecordStore,
    private readonly options: DockerNamesOptions,
    private readonly logger: Logger,
    private readonly observer?: DockerNamesObserver,
  ) {
    this.firstSync = new Promise((resolve) => (this.firstSyncDone = resolve));
  }

  start(): void {
    this.running = this.run();
    this.resyncTimer = setInterval(() => {
      if (!this.closed) void this.syncAll('periodic');
    }, this.options.resyncIntervalMs ?? 60_000);
    this.resyncTimer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    destroyStream(this.stream);
    await this.running?.catch(() => undefined);
  }

  /** Names this host publishes (`tsoverlay inspect`, logs). */
  publishedCount(): number {
    let n = 0;
    for (const m of this.published.values()) n += m.size;
    return n;
  }

  /** Event stream with reconnects; every (re)connect is followed by a full re-read. */
  private async run(): Promise<void> {
    for (let delay = 250; !this.closed; ) {
      try {
        const stream = await this.docker.getEvents({ filters: EVENT_FILTERS });
        if (this.closed) {
          destroyStream(stream);
          return;
        }
        this.stream = stream;
        const ended = this.consume(stream);
        // Subscribed before reading, so that nothing between the read and the stream is lost.
        await this.syncAll('event stream connected');
        this.firstSyncDone();
        delay = 250;
        await ended;
        if (!this.closed) this.logger.info('Docker event stream ended; reconnecting');
      } catch (err) {
        if (this.closed) return;
        this.observer?.trouble('docker');
        this.logger.warn('cannot read Docker events (container names are not published until it can)', { error: errorMessage(err), retryMs: delay });
        await sleep(delay);
        delay = Math.min(delay * 2, 10_000);
      }
    }
  }

  private consume(stream: NodeJS.ReadableStream): Promise<void> {
    return new Promise((resolve) => {
      let rest = '';
      stream.on('data', (chunk: Buffer | string) => {
        rest += chunk.toString();
        let nl: number;
        while ((nl = rest.indexOf('\n')) >= 0) {
          const line = rest.slice(0, nl).trim();
          rest = rest.slice(nl + 1);
          if (line) this.onEvent(line);
        }
      });
      stream.on('end', () => resolve());
      stream.on('close', () => resolve());
      stream.on('error', () => resolve());
    });
  }

  private onEvent(line: string): void {
    let ev: { Type?: unknown; Action?: unknown; Actor?: { ID?: unknown; Attributes?: Record<string, unknown> } };
    try {
      ev = JSON.parse(line) as typeof ev;
    } catch {
      return;
    }
    const container = ev.Type === 'network' ? ev.Actor?.Attributes?.container : ev.Type === 'container' ? ev.Actor?.ID : undefined;
    if (typeof container === 'string' && /^[0-9a-f]{12,64}$/.test(container)) this.schedule(container);
  }

  /** One re-read per container at a time; events arriving meanwhile fold into one more. */
  private schedule(containerId: string): void {
    if (this.queued.has(containerId)) return;
    this.queued.add(containerId);
    void this.mutex.run(containerId, async () => {
      this.queued.delete(containerId);
      if (this.closed) return;
      try {
        await this.syncContainer(containerId);
      } catch (err) {
        this.observer?.trouble(err instanceof StoreUnavailableError ? 'store' : 'docker');
        this.logger.warn('container names not published; the next full re-read retries', { container: containerId.slice(0, 12), error: errorMessage(err) });
      }
    });
  }

  /** Reads every running container, then removes this host's records nothing accounts for. */
  async syncAll(reason: string): Promise<void> {
    try {
      const containers = await this.docker.listContainers({ all: false });
      const alive = new Set(containers.map((c) => c.Id));
      // What the store holds for this host (a previous run's records included).
      const mine = new Map<string, Map<string, Published>>();
      for (const entry of await this.records.list(namesRecordSchema, namesKeys.all())) {
        if (entry.value.host !== this.options.hostName || !parseNamesKey(entry.key)) continue;
        const { updated: _updated, ...published } = entry.value;
        mapOf(mine, entry.value.containerId).set(entry.key, published);
      }
      for (const [id, m] of mine) {
        if (!this.published.has(id)) this.published.set(id, m);
      }
      // A container missing from the list is inspected, not assumed gone: one started after the
      // list was read may already have been published by its event, and must stay.
      for (const id of new Set([...alive, ...mine.keys(), ...this.published.keys()])) {
        await this.mutex.run(id, () => this.syncContainer(id));
      }
      this.logger.debug('container names re-read', { reason, containers: alive.size, published: this.publishedCount() });
    } catch (err) {
      this.observer?.trouble(err instanceof StoreUnavailableError ? 'store' : 'docker');
      this.logger.warn('full re-read of container names failed; will retry', { reason, error: errorMessage(err) });
    }
  }

  private async syncContainer(containerId: string): Promise<void> {
    const desired = await this.desired(containerId);
    const before = this.published.get(containerId) ?? new Map<string, Published>();
    for (const [key, rec] of desired) {
      const old = before.get(key);
      if (old && JSON.stringify(old) === JSON.stringify(rec)) continue;
      await this.records.put(key, { ...rec, updated: nowIso() });
    }
    for (const key of before.keys()) {
      if (desired.has(key)) continue;
      // Only our own record for this container: the endpoint id could have moved on.
      await this.records.update(namesRecordSchema, key, (cur) =>
        cur && cur.host === this.options.hostName && cur.containerId === containerId ? null : undefined,
      );
    }
    if (desired.size > 0) this.published.set(containerId, desired);
    else this.published.delete(containerId);
    const changed = [...desired].filter(([key, rec]) => JSON.stringify(before.get(key)) !== JSON.stringify(rec));
    const removed = [...before.keys()].filter((key) => !desired.has(key));
    if (changed.length > 0 || removed.length > 0) {
      this.logger.info('container names published', {
        container: containerId.slice(0, 12),
        names: changed.map(([, rec]) => `${rec.networkName ?? rec.networkId.slice(0, 12)}: ${rec.names.join(',')}`),
        removed: removed.length,
      });
    }
    if (desired.size > 0 || before.size > 0) this.observer?.published(this.publishedCount());
  }

  private async desired(containerId: string): Promise<Map<string, Published>> {
    const out = new Map<string, Published>();
    let info: Dockerode.ContainerInspectInfo;
    try {
      info = await this.docker.getContainer(containerId).inspect();
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return out;
      throw err;
    }
    if (!info.State?.Running) return out;
    const container = info.Name.replace(/^\//, '');
    for (const [networkName, ep] of Object.entries(info.NetworkSettings?.Networks ?? {})) {
      if (!ep.NetworkID || !ep.EndpointID) continue;
      const networkKey = await this.networkKey(ep.NetworkID);
      if (!networkKey) continue;
      const dnsNames = (ep as { DNSNames?: unknown }).DNSNames;
      const names = uniq([container, ...(ep.Aliases ?? []), ...(Array.isArray(dnsNames) ? dnsNames.filter((n): n is string => typeof n === 'string') : [])]);
      out.set(namesKeys.endpoint(networkKey, ep.EndpointID), {
        endpointId: ep.EndpointID,
        networkId: ep.NetworkID,
        networkName,
        host: this.options.hostName,
        containerId: info.Id,
        container,
        names,
      });
    }
    return out;
  }

  /** The store key of a Docker network if it is a tsoverlay network outside swarm, else null. */
  private async networkKey(networkId: string): Promise<string | null> {
    const known = this.networks.get(networkId);
    if (known !== undefined) return known;
    const mapping = await this.records.get(networkIdRecordSchema, keys.networkId(networkId));
    let key: string | null = mapping?.value.networkKey ?? null;
    if (key) {
      const net = (await this.docker.getNetwork(networkId).inspect()) as { Scope?: string };
      if (net.Scope === 'swarm') key = null;
    }
    // Only tsoverlay writes netids records, and a network id never changes driver or scope.
    if (this.networks.size > 10_000) this.networks.clear();
    this.networks.set(networkId, key);
    return key;
  }
}

function uniq(names: string[]): string[] {
  return [...new Set(names.filter((n) => n.length > 0))];
}

function mapOf<V>(outer: Map<string, Map<string, V>>, key: string): Map<string, V> {
  let inner = outer.get(key);
  if (!inner) {
    inner = new Map();
    outer.set(key, inner);
  }
  return inner;
}

function destroyStream(stream: NodeJS.ReadableStream | undefined): void {
  const s = stream as { destroy?: () => void } | undefined;
  s?.destroy?.();
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
