/**
 * Encryption on one host: the owner of the host key, encryption's store records and the host's
 * IPsec tables. The daemon tells it when the first encrypted overlay on this host comes up and
 * the last one goes; it keeps the kernel equal to "SAs with every host that publishes an
 * encryption record, at the ring's epoch".
 *
 * - Each host publishes `encryption/hosts/<name>` (public key, instance, VTEP, applied epoch)
 *   under a lease of its own, and watches `encryption/` (the ring and every host's record): a
 *   host that joins gets SAs as soon as its record arrives, one that dies loses them when its
 *   lease expires — the same watch-and-lease path as its peer entries.
 * - Every host reports the epoch it applied, also while it has no encrypted network (it would
 *   program that epoch when one comes), so idle hosts never hold a rotation up.
 * - Kernel state is only touched while active; going inactive removes all of it.
 * - Scheduled rotation: every host checks the schedule; compare-and-set makes one step, and only
 *   once every live host applied the current epoch (ring-store.ts).
 * - A restart finds its SAs in the kernel and the same keys on disk: the first reconcile is a
 *   no-op, so traffic never stops.
 */
import type { Logger } from '../log';
import type { KVEntry, Lease, Store, Watch, WatchEvent } from '../store/store';
import type { EspSupport } from '../dataplane/xfrm';
import type { ApplyResult, EspPeer, EspSelf } from './esp';
import type { HostIdentity } from './derive';
import type { HostKeyPair } from './host-key';
import { type RingRecord, ringRecordSchema } from './ring';
import {
  type EncryptionHostRecord,
  type RotateOutcome,
  decode,
  encryptionHostSchema,
  encryptionKeys,
  ensureRing,
  publishHost,
  rotateOnce,
} from './ring-store';

/** The kernel side: EspManager in production. */
export interface EspKernel {
  apply(self: EspSelf, peers: readonly EspPeer[], primary: number): Promise<ApplyResult>;
  check(self: EspSelf, peers: readonly EspPeer[], primary: number): Promise<string[]>;
  removeAll(): Promise<number>;
}

export interface EncryptionObserver {
  applied?(r: ApplyResult, epoch: number): void;
  rotated?(epoch: number): void;
  applyFailed?(err: Error): void;
  ipsecRemoved?(): void;
}

export interface EncryptionControllerOptions {
  store: Store;
  kernel: EspKernel;
  key: HostKeyPair;
  host: { name: string; instance: string; vtep: string };
  probe: () => Promise<EspSupport>;
  rotationIntervalSeconds: number;
  /** How often the kernel is compared with the desired state, and the schedule looked at. */
  reconcileIntervalMs: number;
  /** TTL of this host's encryption record: how long after its death peers drop its SAs. */
  leaseTtlSeconds: number;
  /**
   * This host ran before with the same key (the key file existed at start): its kernel may hold
   * SAs of that run, whose replay windows outlive a record that expired meanwhile.
   */
  ranBefore?: boolean;
  logger: Logger;
  observer?: EncryptionObserver;
}

export class EncryptionUnavailableError extends Error {
  constructor(readonly support: EspSupport) {
    super(`encrypted networks need kernel support this host lacks: ${support.missing.join('; ')}`);
    this.name = 'EncryptionUnavailableError';
  }
}

export class EncryptionController {
  private readonly hosts = new Map<string, EncryptionHostRecord>();
  private ring: RingRecord | undefined;
  private lease: Lease | undefined;
  private published: string | undefined;
  private active = false;
  private support: EspSupport | undefined;
  private watch: Watch | undefined;
  private timer: NodeJS.Timeout | undefined;
  private pending: Promise<void> = Promise.resolve();
  private dirty = false;
  private closed = false;
  /** This host came back after its record expired: a rotation past this epoch is owed (see publish). */
  private rotationOwed: { after: number | undefined } | undefined;
  private leasedBefore = false;

  constructor(private readonly o: EncryptionControllerOptions) {}

  get publicKey(): string {
    return this.o.key.publicText;
  }

  get isActive(): boolean {
    return this.active;
  }

  get epoch(): number | undefined {
    return this.ring?.epoch;
  }

  private get self(): EspSelf {
    const identity: HostIdentity = { name: this.o.host.name, instance: this.o.host.instance, publicKey: this.o.key.publicText };
    return { identity, key: this.o.key, vtep: this.o.host.vtep };
  }

  private peers(): EspPeer[] {
    return [...this.hosts.values()]
      .filter((h) => h.name !== this.o.host.name)
      .map((h) => ({ identity: { name: h.name, instance: h.instance, publicKey: h.publicKey }, vtep: h.vtep }));
  }

  /** Names of the hosts taking part (those with a live encryption record). */
  participants(): string[] {
    return [...this.hosts.keys()].sort();
  }

  /**
   * Publishes this host's record, watches `encryption/` and starts the periodic reconcile. The
   * first apply after a restart finds the SAs of before in the kernel: nothing changes.
   */
  async start(): Promise<void> {
    if (this.watch) return;
    await this.publish(null);
    this.watch = this.o.store.watch(encryptionKeys.prefix(), {
      onReset: (entries) => this.onReset(entries),
      onEvents: (events) => this.onEvents(events),
      onError: (err) => this.o.logger.warn('encryption: store watch trouble', { error: err.message }),
    });
    this.timer = setInterval(() => this.tick(), this.o.reconcileIntervalMs);
    this.timer.unref();
  }

  private async publish(applied: number | null): Promise<void> {
    if (!this.lease) {
      // Peers that dropped this host's expired record re-create their SAs with it, sending from
      // sequence number 1, while this host's kernel may keep its receive SAs of before with their
      // replay windows: it would drop everything they send until the next epoch. A rotation gives
      // every pair fresh SAs, make-before-break; a restart within the TTL finds the record and
      // owes nothing.
      if ((this.leasedBefore || this.o.ranBefore) && (await this.o.store.get(encryptionKeys.host(this.o.host.name))) === undefined) {
        this.rotationOwed = { after: this.ring?.epoch };
        this.o.logger.info('encryption: this host is back after its record expired; a key rotation follows');
      }
      this.leasedBefore = true;
      const lease = await this.o.store.grantLease(this.o.leaseTtlSeconds);
      lease.onLost(() => {
        if (this.lease !== lease) return;
        this.o.logger.warn('encryption: store lease lost; publishing this host again');
        this.lease = undefined;
        this.published = undefined;
        void this.sync('lease lost').catch(() => undefined);
      });
      this.lease = lease;
    }
    const rec: EncryptionHostRecord = {
      name: this.o.host.name,
      instance: this.o.host.instance,
      publicKey: this.o.key.publicText,
      vtep: this.o.host.vtep,
      applied,
      at: new Date().toISOString(),
    };
    const id = JSON.stringify({ ...rec, at: undefined, lease: this.lease.id });
    if (id === this.published) return;
    await publishHost(this.o.store, rec, this.lease);
    this.published = id;
  }

  private onReset(entries: KVEntry[]): void {
    this.hosts.clear();
    for (const e of entries) this.take(e.key, e.value);
    this.changed('watch reset');
  }

  private onEvents(events: WatchEvent[]): void {
    for (const ev of events) this.take(ev.key, ev.type === 'put' ? ev.value : undefined);
    this.changed('store change');
  }

  private take(key: string, value: string | undefined): void {
    if (key === encryptionKeys.ring()) {
      if (value !== undefined) this.onRing(value);
      return;
    }
    const name = encryptionKeys.hostOf(key);
    if (name === undefined) return;
    if (value === undefined) {
      this.hosts.delete(name);
      return;
    }
    try {
      const rec = decode(encryptionHostSchema, value, key);
      if (rec.name !== name) throw new Error(`names host ${rec.name}`);
      this.hosts.set(name, rec);
    } catch (e) {
      this.hosts.delete(name);
      this.o.logger.error('encryption: host record ignored', { key, error: (e as Error).message });
    }
  }

  private changed(why: string): void {
    void this.sync(why).catch(() => undefined);
  }

  /** Whether the kernel can do encrypted networks (probed once). */
  async capability(): Promise<EspSupport> {
    this.support ??= await this.o.probe();
    return this.support;
  }

  /**
   * The first encrypted overlay on this host: refuses at once if the kernel cannot, makes the
   * ring record if this is the cluster's first, and programs the SAs before returning.
   */
  async activate(): Promise<void> {
    if (this.active) return;
    const support = await this.capability();
    if (!support.ok) throw new EncryptionUnavailableError(support);
    this.ring ??= await ensureRing(this.o.store, this.o.host.name);
    this.active = true;
    await this.serial(() => this.applyNow('activate'));
  }

  /** The last encrypted overlay on this host went away: remove every SA and policy. */
  async deactivate(): Promise<void> {
    this.active = false;
    await this.serial(async () => {
      const n = await this.o.kernel.removeAll();
      this.o.observer?.ipsecRemoved?.();
      this.o.logger.info('encryption: no encrypted network left on this host; IPsec state removed', { steps: n });
    });
  }

  /** Desired versus kernel, as text (empty: in sync). */
  async check(): Promise<string[]> {
    if (!this.active || !this.ring) return [];
    return this.o.kernel.check(this.self, this.peers(), this.ring.epoch);
  }

  /** One rotation step now (tsoverlay rotate-keys goes through the store the same way). */
  async rotateNow(by: string): Promise<RotateOutcome> {
    const r = await rotateOnce(this.o.store, { by });
    if (r.rotated) {
      this.onRing(JSON.stringify(r.record));
      await this.sync('rotated');
    }
    return r;
  }

  /**
   * Stops watching. The kernel state stays (a daemon restart must not cut traffic). With
   * `leave`, the record is withdrawn at once (the lease revoked) and peers drop this host's SAs
   * as after its death; without, a restart within the lease TTL re-publishes it unnoticed.
   */
  async close(leave = false): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.watch?.close();
    await this.pending.catch(() => undefined);
    if (leave) await this.lease?.revoke().catch(() => undefined);
  }

  private onRing(value: string): void {
    let rec: RingRecord;
    try {
      rec = ringRecordSchema.parse(JSON.parse(value));
    } catch (e) {
      this.o.logger.error('encryption: malformed key ring record ignored', { error: (e as Error).message });
      return;
    }
    const before = this.ring?.epoch;
    this.ring = rec;
    if (before !== rec.epoch) {
      this.o.logger.info('encryption: key epoch', { epoch: rec.epoch, by: rec.by });
      if (before !== undefined) this.o.observer?.rotated?.(rec.epoch);
    }
  }

  private tick(): void {
    if (this.closed) return;
    void this.sync('periodic')
      .then(async () => {
        if (!this.ring) return;
        const r = await rotateOnce(this.o.store, { by: this.o.host.name, ifDueAfterSeconds: this.o.rotationIntervalSeconds });
        if (r.rotated) {
          this.onRing(JSON.stringify(r.record));
          this.changed('scheduled rotation');
        } else if (r.blockers) this.o.logger.debug('encryption: scheduled rotation waits', { reason: r.reason });
      })
      .catch((e: unknown) => this.o.logger.warn('encryption: periodic work failed', { error: (e as Error).message }));
  }

  /** Coalesces requests: one apply runs at a time, and one more after it if anything asked meanwhile. */
  private sync(why: string): Promise<void> {
    if (this.dirty) return this.pending;
    this.dirty = true;
    return this.serial(async () => {
      this.dirty = false;
      await this.applyNow(why);
    });
  }

  private async applyNow(why: string): Promise<void> {
    if (this.closed || !this.ring) return;
    const epoch = this.ring.epoch;
    if (this.active) {
      try {
        const r = await this.o.kernel.apply(this.self, this.peers(), epoch);
        for (const err of r.errors) this.o.logger.error('encryption: peer skipped', { error: err });
        if (r.steps > 0) this.o.logger.info('encryption: IPsec state updated', { why, epoch, steps: r.steps, sas: r.sas, policies: r.policies });
        this.o.observer?.applied?.(r, epoch);
      } catch (e) {
        this.o.observer?.applyFailed?.(e as Error);
        this.o.logger.error('encryption: programming IPsec state failed', { why, epoch, error: (e as Error).message });
        throw e;
      }
    }
    await this.publish(epoch);
    if (this.rotationOwed) await this.payOwedRotation(this.rotationOwed.after ?? epoch);
  }

  /** Runs inside serial(): the new epoch is applied by the next sync, not awaited here. */
  private async payOwedRotation(after: number): Promise<void> {
    if (this.ring && this.ring.epoch > after) {
      this.rotationOwed = undefined;
      return;
    }
    try {
      const r = await rotateOnce(this.o.store, { by: this.o.host.name });
      if (r.rotated) this.onRing(JSON.stringify(r.record));
      // No ring means no encrypted network anywhere; a ring that moved on is as good as ours.
      if (r.rotated || !r.record || r.record.epoch > after) {
        this.rotationOwed = undefined;
        if (r.rotated) this.changed('rotation after this host came back');
      } else {
        this.o.logger.debug('encryption: rotation after return waits', { reason: r.reason });
      }
    } catch (e) {
      this.o.logger.warn('encryption: rotation after return failed; retried', { error: (e as Error).message });
    }
  }

  private serial(fn: () => Promise<void>): Promise<void> {
    const r = this.pending.then(fn, fn);
    this.pending = r.catch(() => undefined);
    return r;
  }
}
