import type { Logger } from '../log';
import type { Lease } from '../store/store';
import { errorMessage } from '../util/errors';
import { Backoff } from '../util/retry';
import { nowIso, type RecordStore } from './record-store';
import { keys, type HostRecord } from './records';

export interface HostRegistrationOptions {
  hostName: string;
  vtep: string;
  leaseTtlSeconds: number;
}

/**
 * This host's identity in the store: `hosts/<name>` with its VTEP, held under a lease. Other
 * hosts program this host's containers only while the key exists, so a host that dies without
 * a goodbye drops out everywhere when its lease expires; a lease lost while this host lives
 * (the store was unreachable for longer than the TTL) is taken again at once.
 */
export class HostRegistration {
  private lease?: Lease;
  private closed = false;

  constructor(
    private readonly records: RecordStore,
    private readonly options: HostRegistrationOptions,
    private readonly logger: Logger,
  ) {}

  /** The host record is held under a live lease (for /healthz). */
  get registered(): boolean {
    return this.lease !== undefined && !this.closed;
  }

  /** Registers once; throws when the store refuses (the caller's start-up retries). */
  async start(): Promise<void> {
    const lease = await this.records.store.grantLease(this.options.leaseTtlSeconds);
    lease.onLost(() => {
      if (this.closed) return;
      this.logger.warn('store lease lost: registering this host again');
      this.registerUntilDone(new Backoff(200, this.retryCapMs()));
    });
    const record: HostRecord = { name: this.options.hostName, vtep: this.options.vtep, started: nowIso() };
    try {
      await this.records.put(keys.host(this.options.hostName), record, lease);
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
    this.logger.info('host registered', { host: record.name, vtep: record.vtep, ttl: lease.ttlSeconds });
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

  /** Capped well below the TTL: the old lease (refreshed when etcd restarts) must not expire first. */
  private retryCapMs(): number {
    return Math.min(5_000, (this.options.leaseTtlSeconds * 1000) / 4);
  }

  /**
   * After a lost lease: register again, retrying with backoff until the store answers. Giving up
   * would leave this host's key to expire, and every other host would drop its running containers.
   */
  private registerUntilDone(backoff: Backoff): void {
    if (this.closed) return;
    this.start().catch((err: unknown) => {
      if (this.closed) return;
      const retryInMs = backoff.next();
      this.logger.warn('host registration failed; retrying', { error: errorMessage(err), retryInMs });
      setTimeout(() => this.registerUntilDone(backoff), retryInMs).unref();
    });
  }
}
