import type { Logger } from '../log';
import type { KVEntry, Lease, WatchEvent } from '../store/store';
import { errorMessage } from '../util/errors';
import { Backoff } from '../util/retry';
import { claimName } from './host-identity';
import { nowIso, type RecordStore } from './record-store';
import { decodeRecord, hostRecordSchema, keys, type HostRecord } from './records';

export interface HostRegistrationOptions {
  hostName: string;
  vtep: string;
  leaseTtlSeconds: number;
  /** This machine's instance id (host-identity.ts): the name is only a label. */
  instance: string;
}

/** Another live host holds this host's name: nothing of that name's records may be touched. */
export class HostNameTakenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HostNameTakenError';
  }
}

/**
 * This host's identity in the store: `hosts/<name>` with its VTEP and instance id, held under a
 * lease. Other hosts program this host's containers only while the key exists (or while this host
 * still answers their underlay probes), so a host that dies without a goodbye drops out everywhere
 * once its lease expires. A registration lost while this host lives (the store was unreachable for
 * longer than the TTL, the key was deleted by hand) is taken again at once; a name held by another
 * live host is never taken over.
 */
export class HostRegistration {
  private lease?: Lease;
  private closed = false;
  private registering = false;
  /** Why this host is not registered, when it is not for a reason a person must fix. */
  private blocked?: string;
  private settled?: number;
  private settledIn?: Record<string, number>;

  constructor(
    private readonly records: RecordStore,
    private readonly options: HostRegistrationOptions,
    private readonly logger: Logger,
  ) {}

  /** The host record is held under a live lease (for /healthz). */
  get registered(): boolean {
    return this.lease !== undefined && !this.closed;
  }

  /** What /healthz should say about the registration (empty when registered). */
  problems(): string[] {
    if (this.registered) return [];
    return [this.blocked ? `this host is not registered in the store: ${this.blocked}` : 'this host is not registered in the store'];
  }

  /**
   * Start-up, before anything touches the records of this host's name (crash recovery withdraws
   * endpoints and releases addresses by host name): refuses a name another live host holds.
   */
  async checkName(): Promise<void> {
    const existing = await this.records.get(hostRecordSchema, keys.host(this.options.hostName));
    const claim = claimName(existing?.value, this.me());
    if (claim.kind === 'taken') throw new HostNameTakenError(claim.message);
  }

  /** The revision of the last endpoint crash recovery withdrew: published so that peers wait for it (HostRecord.settled). */
  settledAt(revision: number | undefined, byNetwork?: Record<string, number>): void {
    this.settled = revision;
    this.settledIn = byNetwork && Object.keys(byNetwork).length > 0 ? { ...byNetwork } : undefined;
  }

  /** Registers once; throws when the store refuses or the name is taken (the caller's start-up decides). */
  async start(): Promise<void> {
    const lease = await this.records.store.grantLease(this.options.leaseTtlSeconds);
    lease.onLost(() => {
      if (this.lease === lease) this.lease = undefined;
      if (this.closed) return;
      this.logger.warn('store lease lost: registering this host again');
      this.registerUntilDone();
    });
    const record: HostRecord = {
      name: this.options.hostName,
      vtep: this.options.vtep,
      instance: this.options.instance,
      ...(this.settled !== undefined ? { settled: this.settled } : {}),
      ...(this.settledIn !== undefined ? { settledIn: this.settledIn } : {}),
      started: nowIso(),
    };
    try {
      await this.claim(record, lease);
    } catch (err) {
      await lease.revoke().catch((e: unknown) =>
        this.logger.warn('cannot revoke the lease of a failed registration; it expires by itself', {
          ttlSeconds: lease.ttlSeconds,
          error: errorMessage(e),
        }),
      );
      throw err;
    }
    this.lease = lease;
    this.blocked = undefined;
    this.logger.info('host registered', { host: record.name, vtep: record.vtep, instance: record.instance, ttl: lease.ttlSeconds });
  }

  /** The host watch's full state: is our registration still there? */
  noticeHosts(entries: KVEntry[]): void {
    const key = keys.host(this.options.hostName);
    const mine = entries.find((e) => e.key === key);
    this.check(mine ? this.decode(mine.key, mine.value) : undefined);
  }

  /** Host watch events: our own key deleted (or rewritten by someone else) means we must register again. */
  noticeHostEvents(events: WatchEvent[]): void {
    const key = keys.host(this.options.hostName);
    for (const ev of events) {
      if (ev.key !== key) continue;
      this.check(ev.type === 'delete' ? undefined : this.decode(ev.key, ev.value));
    }
  }

  /**
   * `revoke` announces our departure at once: peers drop our containers' entries. A plugin
   * restart (the daemon stopping on SIGTERM) keeps the lease instead, so that peers keep
   * reaching the containers that stay; if this host does not come back, the lease expires
   * after the TTL as after a crash.
   */
  async close(revoke: boolean): Promise<void> {
    this.closed = true;
    if (!revoke || !this.lease) return;
    await this.lease.revoke().catch((err: unknown) =>
      this.logger.warn('cannot revoke the host lease; peers drop this host when it expires', {
        ttlSeconds: this.lease?.ttlSeconds,
        error: errorMessage(err),
      }),
    );
  }

  private me(): { name: string; instance: string; vtep: string } {
    return { name: this.options.hostName, instance: this.options.instance, vtep: this.options.vtep };
  }

  /** Creates the record, or replaces our own earlier one, by compare-and-set: never another live host's. */
  private async claim(record: HostRecord, lease: Lease): Promise<void> {
    const key = keys.host(record.name);
    for (let attempt = 0; attempt < 10; attempt++) {
      const existing = await this.records.get(hostRecordSchema, key);
      const claim = claimName(existing?.value, this.me());
      if (claim.kind === 'taken') throw new HostNameTakenError(claim.message);
      const done = existing ? await this.records.compareAndSet(existing, record, lease) : await this.records.create(key, record, lease);
      if (done) return;
    }
    throw new Error(`the registration ${key} kept changing while this host registered; try again`);
  }

  private decode(key: string, value: string): HostRecord | undefined {
    try {
      return decodeRecord(hostRecordSchema, value, key);
    } catch {
      return undefined;
    }
  }

  private check(current: HostRecord | undefined): void {
    if (this.closed || !this.lease || this.registering) return;
    if (current && current.instance === this.options.instance && current.vtep === this.options.vtep) return;
    this.logger.warn(current ? 'this host\'s registration was rewritten by another host: registering again' : 'this host\'s registration disappeared from the store: registering again', {
      host: this.options.hostName,
      ...(current ? { otherVtep: current.vtep, otherInstance: current.instance } : {}),
    });
    const old = this.lease;
    this.lease = undefined;
    // The old lease may still hold other keys of ours; it is no longer what proves us live.
    void old.revoke().catch(() => undefined);
    this.registerUntilDone();
  }

  /** Capped well below the TTL: the old lease (refreshed when etcd restarts) must not expire first. */
  private retryCapMs(): number {
    return Math.min(5_000, (this.options.leaseTtlSeconds * 1000) / 4);
  }

  /**
   * Register again, retrying with backoff until the store answers. Giving up would leave this host
   * unregistered, and every other host would eventually drop its running containers. A name taken
   * by another live host meanwhile is reported (/healthz) and retried: that host may go away.
   */
  private registerUntilDone(backoff = new Backoff(200, this.retryCapMs())): void {
    if (this.closed || this.registering) return;
    this.registering = true;
    this.start().then(
      () => {
        this.registering = false;
      },
      (err: unknown) => {
        this.registering = false;
        if (this.closed) return;
        const retryInMs = backoff.next();
        if (err instanceof HostNameTakenError) {
          this.blocked = err.message;
          this.logger.error('cannot register this host again: its name is held by another live host', { error: err.message, retryInMs });
        } else {
          this.logger.warn('host registration failed; retrying', { error: errorMessage(err), retryInMs });
        }
        setTimeout(() => this.registerUntilDone(backoff), retryInMs).unref();
      },
    );
  }
}
