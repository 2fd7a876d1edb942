/**
 * etcd v3 backend (package `etcd3`).
 *
 * - every key is stored as `<prefix><key>`; revision = the key's mod_revision
 *   (the store-wide revision of its last write, so revisions are globally monotonic);
 * - create = txn `create_revision(key) == 0` (creates issued together share one txn,
 *   `etcd-batch.ts`), compareAndSet = txn `mod_revision(key) == rev`
 *   (rev 0 therefore means "absent"), compareAndDelete likewise;
 * - leases = etcd leases kept alive by the client (`etcd-lease.ts`); `close()` stops
 *   renewing without revoking, so a closed/dead holder's keys vanish after the TTL;
 * - watch = a range read at one revision, then a watch from the next (`etcd-watch.ts`);
 * - every unary call carries a gRPC deadline and is raced against the same deadline;
 *   connectivity failures surface as StoreUnavailableError.
 */

import * as tls from 'node:tls';
import { noop } from 'cockatiel';
import { Etcd3, EtcdLeaseInvalidError, GRPCDeadlineExceededError, IKeyValue, IOptions, Range, isRecoverableError } from 'etcd3';

import type { Logger } from '../log';
import { KVEntry, Lease, PutOptions, Store, StoreUnavailableError, Watch, WatchListener } from './store';
import { DEFAULT_PREFIX, DEFAULT_TIMEOUT_MS, logIfSlow, openTrackedWatch, assertKey, toError, withDeadline } from './util';
import { EtcdLease } from './etcd-lease';
import { CreateBatcher } from './etcd-batch';
import { EtcdWatch } from './etcd-watch';

export interface EtcdTlsOptions {
  /** PEM CA bundle; system roots when omitted. */
  ca?: Buffer;
  /** PEM client certificate (with `key`) for mutual TLS. */
  cert?: Buffer;
  key?: Buffer;
}

export interface EtcdAuthOptions {
  username: string;
  password: string;
}

export interface EtcdStoreOptions {
  /** `host:port` (or `http(s)://host:port`) of one or more cluster members. */
  endpoints: string[];
  /** Use TLS (implied when `tls` is given or an endpoint starts with https://). */
  secure?: boolean;
  tls?: EtcdTlsOptions;
  auth?: EtcdAuthOptions;
  /** Key prefix, default `tsoverlay/v1/`. */
  prefix?: string;
  /** Deadline for each call, default DEFAULT_TIMEOUT_MS (10 s). */
  timeoutMs?: number;
  logger: Logger;
}

const PAGE_SIZE = 1000;

function isUnavailable(err: Error): boolean {
  return (
    isRecoverableError(err) ||
    err instanceof GRPCDeadlineExceededError ||
    'isBrokenCircuitError' in err ||
    /UNAVAILABLE|ECONNREFUSED|No connection established|deadline/i.test(err.message)
  );
}

export class EtcdStore implements Store {
  readonly distributed = true;
  readonly description: string;
  readonly prefix: string;
  private readonly prefixBytes: Buffer;
  readonly timeoutMs: number;
  /** @internal */
  readonly client: Etcd3;

  private readonly logger: Logger;
  private readonly leases = new Set<EtcdLease>();
  private readonly watches = new Set<EtcdWatch>();
  private readonly creates: CreateBatcher;
  private closed = false;

  constructor(options: EtcdStoreOptions) {
    if (options.endpoints.length === 0) throw new Error('etcd store: at least one endpoint is required');
    this.logger = options.logger;
    this.prefix = options.prefix ?? DEFAULT_PREFIX;
    this.prefixBytes = Buffer.from(this.prefix);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const secure =
      options.secure === true || options.tls !== undefined || options.endpoints.some((e) => e.startsWith('https://'));
    const bare = options.endpoints.map((e) => e.replace(/^https?:\/\//, ''));
    this.description = `${secure ? 'etcds' : 'etcd'}://${bare.join(',')}`;

    const clientOptions: IOptions = {
      hosts: bare.map((h) => `${secure ? 'https' : 'http'}://${h}`),
      dialTimeout: this.timeoutMs,
      // gRPC's own deadline only ends calls that our deadline (in call()) has already given up on.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + this.timeoutMs + 1000 }),
      // gRPC's default reconnect backoff grows to 120 s: after an outage of tens of seconds the
      // channel would stay down long after etcd is back. Retry the connection at least every 2 s.
      grpcOptions: { 'grpc.initial_reconnect_backoff_ms': 250, 'grpc.max_reconnect_backoff_ms': 2000 },
      // No circuit breaker: etcd3's default one refuses every call for 5 s after three failures,
      // which delays recovery after an outage by up to 5 s (as long as a short lease TTL: a host
      // could miss re-registering before its old lease expires). Without it every call still
      // ends within its deadline, and fails at once while the connection is refused.
      faultHandling: { host: () => noop },
    };
    if (options.tls) {
      const { ca, cert, key } = options.tls;
      if ((cert === undefined) !== (key === undefined)) {
        throw new Error('etcd store: a TLS client certificate and its key must be given together');
      }
      clientOptions.credentials = {
        rootCertificate: ca ?? Buffer.from(tls.rootCertificates.join('\n')),
        ...(cert && key ? { certChain: cert, privateKey: key } : {}),
      };
    }
    if (options.auth) {
      clientOptions.auth = {
        username: options.auth.username,
        password: options.auth.password,
        callOptions: () => ({ deadline: Date.now() + this.timeoutMs }),
      };
    }
    this.client = new Etcd3(clientOptions);
    this.creates = new CreateBatcher(
      this.client,
      (what, fn) => this.call(what, fn),
      (full, value) => {
        const key = full.slice(this.prefix.length);
        return this.conditionalPut(`create ${key}`, key, value, 'Create', 0, undefined);
      },
    );
  }

  // ---- plumbing ----

  /** @internal Runs one etcd call under the deadline, mapping connectivity errors. */
  async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new Error(`${this.description}: store is closed`);
    const started = performance.now();
    try {
      return await withDeadline(fn(), this.timeoutMs, () => `${this.description}: ${what}`);
    } catch (err) {
      if (err instanceof StoreUnavailableError) throw err;
      const e = toError(err);
      if ('isBrokenCircuitError' in e) {
        throw new StoreUnavailableError(
          `${this.description}: ${what} not attempted: etcd unreachable (recent calls failed; the client backs off for 5 s)`,
        );
      }
      if (isUnavailable(e)) {
        throw new StoreUnavailableError(`${this.description}: ${what} failed, etcd unreachable: ${e.message}`);
      }
      throw new Error(`${this.description}: ${what} failed: ${e.message}`, { cause: e });
    } finally {
      logIfSlow(this.logger, this.description, what, started);
    }
  }

  /** @internal Strips the store prefix; undefined for keys outside it. */
  relKey(key: Buffer | string): string | undefined {
    if (typeof key === 'string') return key.startsWith(this.prefix) ? key.slice(this.prefix.length) : undefined;
    // Decoded from behind the prefix: a slice of the whole decoded key would keep the whole key
    // alive for as long as the relative key is held (peer-sync holds one per remote endpoint).
    const n = this.prefixBytes.length;
    return key.length >= n && key.compare(this.prefixBytes, 0, n, 0, n) === 0 ? key.toString('utf8', n) : undefined;
  }

  private entry(kv: IKeyValue): KVEntry | undefined {
    const key = this.relKey(kv.key);
    return key === undefined ? undefined : { key, value: kv.value.toString('utf8'), revision: Number(kv.mod_revision) };
  }

  private leaseId(options: PutOptions | undefined): EtcdLease | undefined {
    const lease = options?.lease;
    if (lease === undefined) return undefined;
    if (!(lease instanceof EtcdLease) || lease.store !== this) {
      throw new Error(`${this.description}: lease ${lease.id} was not granted by this store`);
    }
    return lease;
  }

  private async withLease<T>(lease: EtcdLease | undefined, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (lease && err instanceof Error && err.cause instanceof EtcdLeaseInvalidError) {
        this.forgetLease(lease);
        lease.lost.fire('etcd: requested lease not found');
      }
      throw err;
    }
  }

  /** @internal */
  forgetLease(lease: EtcdLease): void {
    this.leases.delete(lease);
  }

  /** @internal Consistent multi-page read of `<prefix><relPrefix>*` at one revision. */
  async rangeAll(relPrefix: string): Promise<{ entries: KVEntry[]; revision: number }> {
    const range = Range.prefix(this.prefix + relPrefix);
    let start = range.start;
    let revision: number | undefined;
    const entries: KVEntry[] = [];
    for (;;) {
      const builder = this.client.getAll().inRange({ start, end: range.end }).limit(PAGE_SIZE);
      if (revision !== undefined) builder.revision(revision);
      const res = await this.call(`list ${relPrefix || '(all)'}`, () => builder.exec());
      revision ??= Number(res.header.revision);
      for (const kv of res.kvs) {
        const e = this.entry(kv);
        if (e) entries.push(e);
      }
      const last = res.kvs[res.kvs.length - 1];
      if (!res.more || last === undefined) break;
      start = Buffer.concat([last.key, Buffer.from([0])]);
    }
    return { entries, revision };
  }

  // ---- Store ----

  async get(key: string): Promise<KVEntry | undefined> {
    assertKey(key);
    const res = await this.call(`get ${key}`, () => this.client.get(this.prefix + key).exec());
    const kv = res.kvs[0];
    return kv ? this.entry(kv) : undefined;
  }

  async list(prefix: string): Promise<KVEntry[]> {
    return (await this.rangeAll(prefix)).entries;
  }

  async put(key: string, value: string, options?: PutOptions): Promise<number> {
    assertKey(key);
    const lease = this.leaseId(options);
    return this.withLease(lease, async () => {
      const b = this.client.put(this.prefix + key).value(value);
      if (lease) b.lease(lease.id);
      const res = await this.call(`put ${key}`, () => b.exec());
      return Number(res.header.revision);
    });
  }

  create(key: string, value: string, options?: PutOptions): Promise<number | undefined> {
    if (options?.lease !== undefined) return this.conditionalPut(`create ${key}`, key, value, 'Create', 0, options);
    assertKey(key);
    if (this.closed) return Promise.reject(new Error(`${this.description}: store is closed`));
    return this.creates.create(this.prefix + key, value);
  }

  compareAndSet(key: string, value: string, revision: number, options?: PutOptions): Promise<number | undefined> {
    return this.conditionalPut(`compare-and-set ${key}@${revision}`, key, value, 'Mod', revision, options);
  }

  private async conditionalPut(
    what: string,
    key: string,
    value: string,
    column: 'Create' | 'Mod',
    revision: number,
    options: PutOptions | undefined,
  ): Promise<number | undefined> {
    assertKey(key);
    const lease = this.leaseId(options);
    const full = this.prefix + key;
    return this.withLease(lease, async () => {
      const put = this.client.put(full).value(value);
      if (lease) put.lease(lease.id);
      const res = await this.call(what, () => this.client.if(full, column, '==', revision).then(put).commit());
      return res.succeeded ? Number(res.header.revision) : undefined;
    });
  }

  async delete(key: string): Promise<void> {
    assertKey(key);
    await this.call(`delete ${key}`, () => this.client.delete().key(this.prefix + key).exec());
  }

  async compareAndDelete(key: string, revision: number): Promise<boolean> {
    assertKey(key);
    const full = this.prefix + key;
    const res = await this.call(`compare-and-delete ${key}@${revision}`, () =>
      this.client.if(full, 'Mod', '==', revision).then(this.client.delete().key(full)).commit(),
    );
    return res.succeeded && (res.responses[0]?.response_delete_range?.deleted ?? '0') !== '0';
  }

  async deletePrefix(prefix: string): Promise<void> {
    await this.call(`delete prefix ${prefix}`, () => this.client.delete().prefix(this.prefix + prefix).exec());
  }

  watch(prefix: string, listener: WatchListener): Watch {
    const { closed, description, logger, watches } = this;
    return openTrackedWatch({ closed, description, prefix, listener, logger, watches }, (safe) => new EtcdWatch(this, prefix, safe, logger));
  }

  async grantLease(ttlSeconds: number): Promise<Lease> {
    if (!(ttlSeconds >= 1)) throw new RangeError(`etcd lease TTL must be at least 1 s, got ${ttlSeconds}`);
    if (this.closed) throw new Error(`${this.description}: store is closed`);
    const ttl = Math.ceil(ttlSeconds);
    const inner = this.client.lease(ttl);
    let id: string;
    try {
      id = await this.call(`grant lease (TTL ${ttl} s)`, () => inner.grant());
    } catch (err) {
      inner.release(); // if the grant lands later, no keepalive starts and it expires on its own
      throw err;
    }
    const lease = new EtcdLease(this, inner, id, ttl, this.logger);
    this.leases.add(lease);
    return lease;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.watches].map((w) => w.close()));
    this.watches.clear();
    // Stop renewing without revoking: like a crashed holder, its keys expire after the TTL.
    for (const lease of this.leases) {
      lease.lost.disarm();
      lease.inner.release();
    }
    this.leases.clear();
    this.client.close();
  }
}

export function openEtcdStore(options: EtcdStoreOptions): EtcdStore {
  return new EtcdStore(options);
}
