/**
 * Encryption on one host: the owner of the host key, the key ring's store records and the
 * host's IPsec tables. The daemon gives it the live hosts (from the hosts watch) and tells it
 * when the first encrypted overlay on this host comes up and the last one goes; it keeps the
 * kernel equal to "SAs with every live host that publishes a key, at the ring's epoch".
 *
 * - The ring record is watched always (one key): every host reports the epoch it applied, also
 *   while it has no encrypted network (it would program that epoch when one comes), so idle
 *   hosts never hold a rotation up.
 * - Kernel state is only touched while active; going inactive removes all of it.
 * - Scheduled rotation: every host checks the schedule; compare-and-set makes one step, and only
 *   once every live host applied the current epoch (ring-store.ts).
 * - A restart finds its SAs in the kernel and the same keys on disk: the first reconcile is a
 *   no-op, so traffic never stops.
 */
import type { Logger } from '../log';
import type { Lease, Store, Watch } from '../store/store';
import type { EspSupport } from '../dataplane/xfrm';
import type { ApplyResult, EspPeer, EspSelf } from './esp';
import type { HostIdentity } from './derive';
import type { HostKeyPair } from './host-key';
import { type RingRecord, ringRecordSchema } from './ring';
import { type RotateOutcome, encryptionKeys, ensureRing, reportApplied, rotateOnce } from './ring-store';

/** A host as the hosts watch knows it. */
export interface EncryptionHost {
  name: string;
  instance: string;
  vtep: string;
  /** Absent for hosts that do not take part (older versions). */
  publicKey?: string;
}

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
  /** The host's store lease (the applied-epoch record goes with the host). */
  lease?: () => Lease | undefined;
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
  private hosts: EncryptionHost[] = [];
  private ring: RingRecord | undefined;
  private active = false;
  private support: EspSupport | undefined;
  private watch: Watch | undefined;
  private timer: NodeJS.Timeout | undefined;
  private reported: { epoch: number; lease: string | undefined } | undefined;
  private pending: Promise<void> = Promise.resolve();
  private dirty = false;
  private closed = false;

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
    return this.hosts
      .filter((h) => h.publicKey !== undefined && h.name !== this.o.host.name)
      .map((h) => ({ identity: { name: h.name, instance: h.instance, publicKey: h.publicKey! }, vtep: h.vtep }));
  }

  /** Watches the ring record and starts the periodic reconcile. */
  start(): void {
    this.watch = this.o.store.watch(encryptionKeys.ring(), {
      onReset: (entries) => this.onRing(entries.find((e) => e.key === encryptionKeys.ring())?.value),
      onEvents: (events) => {
        for (const ev of events) if (ev.key === encryptionKeys.ring()) this.onRing(ev.type === 'put' ? ev.value : undefined);
      },
      onError: (err) => this.o.logger.warn('encryption: key ring watch trouble', { error: err.message }),
    });
    this.timer = setInterval(() => this.tick(), this.o.reconcileIntervalMs);
    this.timer.unref();
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
      this.o.logger.info('encryption: no encrypted network left on this host; IPsec state removed', { steps: n });
    });
  }

  /** The live hosts changed (hosts watch). */
  setHosts(hosts: readonly EncryptionHost[]): void {
    this.hosts = [...hosts];
    if (this.active) void this.sync('hosts changed').catch(() => undefined);
  }

  /** Desired versus kernel, as text (empty: in sync). */
  async check(): Promise<string[]> {
    if (!this.active || !this.ring) return [];
    return this.o.kernel.check(this.self, this.peers(), this.ring.epoch);
  }

  /** One rotation step now (tsoverlay rotate-keys goes through the store the same way). */
  async rotateNow(by: string): Promise<RotateOutcome> {
    const r = await rotateOnce(this.o.store, { by, liveHosts: this.liveNames() });
    if (r.rotated) this.onRing(JSON.stringify(r.record));
    return r;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.watch?.close();
    await this.pending.catch(() => undefined);
  }

  private liveNames(): string[] {
    return this.hosts.filter((h) => h.publicKey !== undefined).map((h) => h.name);
  }

  private onRing(value: string | undefined): void {
    if (value === undefined) return;
    let rec: RingRecord;
    try {
      rec = ringRecordSchema.parse(JSON.parse(value));
    } catch (e) {
      this.o.logger.error('encryption: malformed key ring record ignored', { error: (e as Error).message });
      return;
    }
    const changed = this.ring?.epoch !== rec.epoch;
    this.ring = rec;
    if (changed) {
      this.o.logger.info('encryption: key epoch', { epoch: rec.epoch, by: rec.by });
      this.o.observer?.rotated?.(rec.epoch);
    }
    void this.sync(changed ? 'key epoch changed' : 'ring record').catch(() => undefined);
  }

  private tick(): void {
    if (this.closed) return;
    void this.sync('periodic')
      .then(async () => {
        if (!this.ring) return;
        const r = await rotateOnce(this.o.store, {
          by: this.o.host.name,
          liveHosts: this.liveNames(),
          ifDueAfterSeconds: this.o.rotationIntervalSeconds,
        });
        if (r.rotated) this.onRing(JSON.stringify(r.record));
        else if (r.blockers) this.o.logger.debug('encryption: scheduled rotation waits', { reason: r.reason });
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
    const lease = this.o.lease?.();
    if (this.reported?.epoch !== epoch || this.reported.lease !== lease?.id) {
      await reportApplied(this.o.store, this.o.host.name, epoch, lease);
      this.reported = { epoch, lease: lease?.id };
    }
  }

  private serial(fn: () => Promise<void>): Promise<void> {
    const r = this.pending.then(fn, fn);
    this.pending = r.catch(() => undefined);
    return r;
  }
}
