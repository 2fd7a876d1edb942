/**
 * Consul backend (package `consul`), KV + sessions + transactions.
 *
 * - every key is stored as `<prefix><key>`; revision = the key's ModifyIndex (a Raft index,
 *   so revisions are monotonic across keys);
 * - all writes go through `/v1/txn` so that the new ModifyIndex comes back with the write:
 *   put = `set`, create = `cas` index 0, compareAndSet = `cas` index=rev (rev 0 = absent),
 *   compareAndDelete = `check-index` + `delete-cas`, deletePrefix = `delete-tree`;
 *   with a lease, put = `lock` (acquire), create/CAS = `check-not-exists`/`check-index` + `lock`
 *   (the KV endpoint ignores `cas` when `acquire` is present, a transaction does not);
 * - leases = sessions (`behavior: delete`, TTL ≥ 10 s as Consul requires, lock-delay 0, no
 *   health checks) renewed every TTL/2; `onLost` when Consul says the session is gone (an
 *   unreachable Consul is retried: its own outage ends no session); `close()` stops renewing
 *   without destroying;
 * - watch = blocking queries on the prefix (`recurse`, `index`, `wait`); consecutive results
 *   are diffed into events; a first result, an index that goes backwards or is 0, or any
 *   error restarts from index 0 and delivers onReset;
 * - every read that does not block on an index is `consistent`: a server that has just been
 *   elected answers default-mode reads from its state machine before it has replayed its log
 *   (hashicorp/consul#2644), so a listing right after a restart could lack keys that exist, and
 *   a watch re-listed then would delete them from every host's tables until its next answer.
 *   etcd's reads are linearizable by default; this gives Consul reads the same guarantee. A
 *   blocking query continues from an index such a read returned, so it never goes back;
 * - every call has a deadline (papi request timeout, raced as well); timeouts, connection
 *   errors and 5xx answers surface as StoreUnavailableError (consul-calls.ts, which also moves
 *   calls to the next address given when one stops answering).
 *
 * A put or compare-and-set with a lease on a key another session holds (a restarted host's
 * previous session, alive until its TTL ends) releases that hold and takes the key in one
 * transaction, as etcd moves a key to the lease of the latest put. Known difference: a put
 * without lease on a key held by a session keeps that session's hold; etcd detaches.
 */
import type { Logger } from '../log';
import {
  ConsulConflictError,
  b64,
  kvHolderSchema,
  kvListSchema,
  sessionCreateSchema,
  txnResultSchema,
  type TxnOp,
} from './consul-api';
import { ConsulCalls } from './consul-calls';
import { ConsulLease } from './consul-lease';
import { ConsulWatch } from './consul-watch';
import { KVEntry, Lease, PutOptions, Store, Watch, WatchListener } from './store';
import { DEFAULT_PREFIX, DEFAULT_TIMEOUT_MS, openTrackedWatch, assertKey, sortEntries } from './util';

export interface ConsulStoreOptions {
  host: string;
  port: number;
  /** More agents or servers, used in turn when the current one does not answer. */
  fallbacks?: Array<{ host: string; port: number }>;
  /** HTTPS (system CA store; add a private CA with NODE_EXTRA_CA_CERTS). */
  secure?: boolean;
  /** ACL token; defaults to nothing (the agent's default token applies). */
  token?: string;
  prefix?: string;
  /** Deadline for each call, default DEFAULT_TIMEOUT_MS (10 s). */
  timeoutMs?: number;
  /** Blocking-query wait for watches, default 30 s. */
  watchWaitSeconds?: number;
  logger: Logger;
}

/** Consul refuses session TTLs below 10 s. */
export const CONSUL_MIN_TTL_SECONDS = 10;

export class ConsulStore implements Store {
  readonly distributed = true;
  readonly description: string;
  readonly prefix: string;
  readonly timeoutMs: number;
  readonly watchWaitSeconds: number;

  /** @internal Every call to Consul goes through it (the watches' and leases' too). */
  readonly calls: ConsulCalls;
  private readonly logger: Logger;
  private readonly leases = new Set<ConsulLease>();
  private readonly watches = new Set<ConsulWatch>();
  private closed = false;

  constructor(options: ConsulStoreOptions) {
    this.logger = options.logger;
    this.prefix = options.prefix ?? DEFAULT_PREFIX;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.watchWaitSeconds = options.watchWaitSeconds ?? 30;
    if (this.prefix.startsWith('/')) throw new Error('consul store: the key prefix must not start with "/"');
    const targets = [{ host: options.host, port: options.port }, ...(options.fallbacks ?? [])];
    this.calls = new ConsulCalls(targets, options, this.timeoutMs, this.logger, () => this.closed);
    this.description = this.calls.description;
  }

  // ---- plumbing ----

  /** @internal */
  toEntries(body: unknown): KVEntry[] {
    if (body === undefined || body === null) return [];
    const items = kvListSchema.parse(Array.isArray(body) ? body : [body]);
    const out: KVEntry[] = [];
    for (const it of items) {
      if (!it.Key.startsWith(this.prefix)) continue;
      out.push({ key: it.Key.slice(this.prefix.length), value: it.Value ?? '', revision: it.ModifyIndex });
    }
    return sortEntries(out);
  }

  /** @internal */
  forgetLease(lease: ConsulLease): void {
    this.leases.delete(lease);
  }

  private lease(options: PutOptions | undefined): ConsulLease | undefined {
    const lease = options?.lease;
    if (lease === undefined) return undefined;
    if (!(lease instanceof ConsulLease) || lease.store !== this) {
      throw new Error(`${this.description}: lease ${lease.id} was not granted by this store`);
    }
    if (!lease.active) throw new Error(`${this.description}: session ${lease.id} is no longer renewed (revoked, lost or closed)`);
    return lease;
  }

  /**
   * Runs a transaction. Returns the ModifyIndex of the written key, `undefined` when one of
   * the `conditionOps` (by position) failed; any other failure throws.
   */
  private async txn(what: string, ops: TxnOp[], conditionOps: number[], lease?: ConsulLease): Promise<number | undefined | null> {
    try {
      const res = txnResultSchema.parse(await this.calls.request(what, (api, o) => api.transaction.create(ops, o)));
      const written = (res.Results ?? []).map((r) => r.KV?.ModifyIndex).filter((i): i is number => i !== undefined);
      return written.length > 0 ? Math.max(...written) : null;
    } catch (err) {
      if (err instanceof ConsulConflictError) {
        // Consul evaluates every op and reports each failure; a failed condition decides.
        if (err.errors.some((e) => conditionOps.includes(e.OpIndex))) return undefined;
        if (lease && err.errors.some((e) => /session/i.test(e.What))) lease.markLost(err.message);
      }
      throw err;
    }
  }

  private writeOps(full: string, value: string, lease: ConsulLease | undefined, condition?: TxnOp): TxnOp[] {
    const write: TxnOp = lease
      ? { KV: { Verb: 'lock', Key: full, Value: b64(value), Session: lease.id } }
      : { KV: { Verb: 'set', Key: full, Value: b64(value) } };
    return condition ? [condition, write] : [write];
  }

  private static written(what: string, rev: number | undefined | null): number | undefined {
    if (rev === null) throw new Error(`${what}: Consul returned no index for the write`);
    return rev;
  }

  // ---- Store ----

  async get(key: string): Promise<KVEntry | undefined> {
    assertKey(key);
    const body = await this.calls.request(`get ${key}`, (api, o) => api.kv.get({ key: this.prefix + key, consistent: true, ...o }));
    return this.toEntries(body)[0];
  }

  async list(prefix: string): Promise<KVEntry[]> {
    const body = await this.calls.request(`list ${prefix || '(all)'}`, (api, o) =>
      api.kv.get({ key: this.prefix + prefix, recurse: true, consistent: true, ...o }),
    );
    return this.toEntries(body);
  }

  async put(key: string, value: string, options?: PutOptions): Promise<number> {
    assertKey(key);
    const lease = this.lease(options);
    const what = `put ${key}`;
    const full = this.prefix + key;
    try {
      const rev = ConsulStore.written(what, await this.txn(what, this.writeOps(full, value, lease), [], lease));
      if (rev === undefined) throw new Error(`${this.description}: ${what}: refused by Consul`);
      return rev;
    } catch (err) {
      if (!lease || !ConsulStore.heldByAnother(err)) throw err;
    }
    // Another session holds the key (this host's previous run, whose session lives until its
    // TTL): move the key to ours, as etcd moves a key to the lease of the latest put.
    for (let attempt = 0; attempt < 8; attempt++) {
      const holder = await this.holder(full);
      const rev = await this.takeOver(what, full, value, lease, holder);
      if (rev !== undefined) return rev;
    }
    throw new Error(`${this.description}: ${what}: the key kept changing hands, try again`);
  }

  /** A lock refused because another session holds the key. */
  private static heldByAnother(err: unknown): boolean {
    return err instanceof ConsulConflictError && err.errors.some((e) => /already held/i.test(e.What));
  }

  /** The key's ModifyIndex and the session holding it, if any. */
  private async holder(full: string): Promise<{ index: number; session: string | undefined }> {
    const body = await this.calls.request(`read holder of ${full.slice(this.prefix.length)}`, (api, o) => api.kv.get({ key: full, consistent: true, ...o }));
    const item = body === undefined || body === null ? undefined : kvHolderSchema.parse(Array.isArray(body) ? body : [body])[0];
    return { index: item?.ModifyIndex ?? 0, session: item?.Session };
  }

  /**
   * Writes `full` under `lease` if it is still at `holder.index` (0: absent), releasing the
   * holder's lock in the same transaction. undefined when the key changed meanwhile.
   */
  private async takeOver(
    what: string,
    full: string,
    value: string,
    lease: ConsulLease,
    holder: { index: number; session: string | undefined },
  ): Promise<number | undefined> {
    const condition: TxnOp =
      holder.index === 0 ? { KV: { Verb: 'check-not-exists', Key: full } } : { KV: { Verb: 'check-index', Key: full, Index: holder.index } };
    const release: TxnOp[] =
      holder.session && holder.session !== lease.id ? [{ KV: { Verb: 'unlock', Key: full, Session: holder.session } }] : [];
    const ops = [condition, ...release, ...this.writeOps(full, value, lease)];
    const rev = await this.txn(what, ops, release.length > 0 ? [0, 1] : [0], lease);
    return rev === undefined ? undefined : ConsulStore.written(what, rev);
  }

  async create(key: string, value: string, options?: PutOptions): Promise<number | undefined> {
    assertKey(key);
    const lease = this.lease(options);
    const full = this.prefix + key;
    const what = `create ${key}`;
    const ops = lease
      ? this.writeOps(full, value, lease, { KV: { Verb: 'check-not-exists', Key: full } })
      : [{ KV: { Verb: 'cas' as const, Key: full, Value: b64(value), Index: 0 } }];
    return ConsulStore.written(what, await this.txn(what, ops, [0], lease));
  }

  async compareAndSet(key: string, value: string, revision: number, options?: PutOptions): Promise<number | undefined> {
    assertKey(key);
    const lease = this.lease(options);
    const full = this.prefix + key;
    const what = `compare-and-set ${key}@${revision}`;
    let ops: TxnOp[];
    if (!lease) {
      ops = [{ KV: { Verb: 'cas', Key: full, Value: b64(value), Index: revision } }];
    } else if (revision === 0) {
      ops = this.writeOps(full, value, lease, { KV: { Verb: 'check-not-exists', Key: full } });
    } else {
      ops = this.writeOps(full, value, lease, { KV: { Verb: 'check-index', Key: full, Index: revision } });
    }
    try {
      return ConsulStore.written(what, await this.txn(what, ops, [0], lease));
    } catch (err) {
      if (!lease || revision === 0 || !ConsulStore.heldByAnother(err)) throw err;
    }
    // At the expected revision but held by another session: take it over, as put does.
    const holder = await this.holder(full);
    if (holder.index !== revision) return undefined;
    return this.takeOver(what, full, value, lease, holder);
  }

  async delete(key: string): Promise<void> {
    assertKey(key);
    await this.txn(`delete ${key}`, [{ KV: { Verb: 'delete', Key: this.prefix + key } }], []);
  }

  async compareAndDelete(key: string, revision: number): Promise<boolean> {
    assertKey(key);
    const full = this.prefix + key;
    // delete-cas alone succeeds on a missing key; check-index makes "missing" a failure.
    const res = await this.txn(
      `compare-and-delete ${key}@${revision}`,
      [
        { KV: { Verb: 'check-index', Key: full, Index: revision } },
        { KV: { Verb: 'delete-cas', Key: full, Index: revision } },
      ],
      [0, 1],
    );
    return res !== undefined;
  }

  async deletePrefix(prefix: string): Promise<void> {
    await this.txn(`delete prefix ${prefix}`, [{ KV: { Verb: 'delete-tree', Key: this.prefix + prefix } }], []);
  }

  watch(prefix: string, listener: WatchListener): Watch {
    const { closed, description, logger, watches } = this;
    return openTrackedWatch({ closed, description, prefix, listener, logger, watches }, (safe) => new ConsulWatch(this, prefix, safe, logger));
  }

  async grantLease(ttlSeconds: number): Promise<Lease> {
    if (!(ttlSeconds > 0)) throw new RangeError(`lease TTL must be positive, got ${ttlSeconds}`);
    const ttl = Math.max(CONSUL_MIN_TTL_SECONDS, Math.ceil(ttlSeconds));
    if (ttl !== ttlSeconds) {
      this.logger.debug('consul session TTL adjusted', { requested: ttlSeconds, ttl });
    }
    const res = await this.calls.request(`create session (TTL ${ttl} s)`, (api, o) =>
      api.session.create({ name: 'tsoverlay', ttl: `${ttl}s`, behavior: 'delete', lockdelay: '0s', checks: [], ...o }),
    );
    const lease = new ConsulLease(this, sessionCreateSchema.parse(res).ID, ttl, this.logger);
    this.leases.add(lease);
    return lease;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    const watches = [...this.watches];
    this.watches.clear();
    await Promise.all(watches.map((w) => w.close()));
    this.closed = true;
    // Stop renewing without destroying: like a crashed holder, its keys go after the TTL.
    for (const lease of this.leases) {
      lease.lost.disarm();
      lease.stop();
    }
    this.leases.clear();
    this.calls.destroy();
  }
}

export function openConsulStore(options: ConsulStoreOptions): ConsulStore {
  return new ConsulStore(options);
}
