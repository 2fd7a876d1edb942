/**
 * Embedded single-host store: a snapshot (`<dir>/store.json`) plus a write-ahead log
 * (`<dir>/store.log`). Every mutation is one line appended with a single write on an
 * O_APPEND|O_DSYNC descriptor, durable before the mutation resolves: one threadpool round trip
 * and one short line per call, where rewriting the whole snapshot took several round trips and
 * grew with the store. The snapshot is rewritten atomically only to compact: at open (so every
 * start begins with an empty log), at a clean close (so the snapshot alone is the state of a
 * stopped store), and when the log passes a bound — always in the mutation queue, never beside
 * an append. File formats, replay, crash safety and what open recovers: `local-wal.ts`; the lock: `local-lock.ts`.
 *
 * Mutations are serialised in-process; one global revision counter (persisted) stamps every
 * write, like etcd's store revision. Leases live in this process only: keys put with a lease
 * are removed on revoke, and at the next open (a lease never survives its process, so every
 * leased key found at open belongs to a dead holder).
 */

import { constants as fsc, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';

import type { Logger } from '../log';
import type { KVEntry, Lease, PutOptions, Store, Watch, WatchListener } from './store';
import { DEFAULT_PREFIX, SafeListener, assertKey, compareKeys, errorMessage } from './util';
import { LockFile } from './local-lock';
import {
  LOCAL_LOG_FILE,
  LOCAL_STORE_FILE,
  type Op,
  type StoredEntry,
  applyOps,
  encodeLogRecord,
  fsyncDir,
  recoverStoreDir,
  writeSnapshot,
} from './local-wal';
import { LocalLease, LocalWatches } from './local-watch';

export { LOCAL_LOCK_FILE, StoreLockedError } from './local-lock';
export { LOCAL_LOG_FILE, LOCAL_STORE_FILE, LOCAL_TORN_FILE_PREFIX, readLocalStoreSnapshot } from './local-wal';

/** Log size that triggers a compaction: replay at open stays short, the file stays small. */
const DEFAULT_LOG_LIMIT = { bytes: 4 * 1024 * 1024, records: 10_000 };

export interface LocalStoreOptions {
  /** State directory; created (mode 0700) if missing. */
  dir: string;
  prefix?: string;
  logger: Logger;
  /** @internal Compaction bound of the log (tests lower it). */
  logLimit?: { bytes?: number; records?: number };
}

interface Mutation<T> {
  ops: Op[];
  /** Called with the revision the ops were committed at (or the unchanged revision when ops is empty). */
  result(revision: number): T;
}

export class LocalStore implements Store {
  readonly distributed = false;
  readonly description: string;

  private readonly file: string;
  private readonly logFile: string;
  private readonly prefix: string;
  private readonly logger: Logger;
  private readonly logLimit: { bytes: number; records: number };
  private entries = new Map<string, StoredEntry>();
  private revision = 0;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly watches: LocalWatches;
  private readonly liveLeases = new Set<string>();
  private closed = false;
  private closing: Promise<void> | undefined;
  private log: FileHandle | undefined;
  private logBytes = 0;
  private logRecords = 0;
  /** An append failed: the log may end in torn bytes, so it must be truncated before the next append. */
  private logTainted = false;
  private compactionQueued = false;

  private constructor(
    readonly dir: string,
    prefix: string,
    logger: Logger,
    private readonly lock: LockFile,
    logLimit: LocalStoreOptions['logLimit'],
  ) {
    this.file = path.join(dir, LOCAL_STORE_FILE);
    this.logFile = path.join(dir, LOCAL_LOG_FILE);
    this.prefix = prefix;
    this.logger = logger;
    this.logLimit = { ...DEFAULT_LOG_LIMIT, ...logLimit };
    this.description = `local://${dir}`;
    this.watches = new LocalWatches(prefix);
  }

  static async open(options: LocalStoreOptions): Promise<LocalStore> {
    const dir = path.resolve(options.dir);
    const prefix = options.prefix ?? DEFAULT_PREFIX;
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const lock = await LockFile.acquire(dir, options.logger);
    const store = new LocalStore(dir, prefix, options.logger, lock, options.logLimit);
    try {
      await store.load();
    } catch (err) {
      await store.log?.close().catch(() => undefined);
      await lock.release();
      throw err;
    }
    return store;
  }

  private async load(): Promise<void> {
    const state = await recoverStoreDir(this.dir, this.logger);
    this.entries = state.entries;
    this.revision = state.revision;
    this.log = await fsp.open(this.logFile, fsc.O_WRONLY | fsc.O_APPEND | fsc.O_CREAT | fsc.O_DSYNC, 0o600);
    if ((state.logText ?? '').length > 0 || state.orphaned > 0) await this.compact();
    else if (state.logText === undefined) await fsyncDir(this.dir); // the new log's name must outlive a power loss too
    this.logger.debug('local store opened', { file: this.file, revision: this.revision, keys: this.entries.size });
  }

  // ---- reads (served from the committed in-memory state) ----

  get(key: string): Promise<KVEntry | undefined> {
    return this.guard(() => {
      assertKey(key);
      const e = this.entries.get(this.prefix + key);
      return e ? { key, value: e.value, revision: e.revision } : undefined;
    });
  }

  list(prefix: string): Promise<KVEntry[]> {
    return this.guard(() => this.snapshot(this.prefix + prefix));
  }

  private snapshot(fullPrefix: string): KVEntry[] {
    const out: KVEntry[] = [];
    for (const [k, e] of this.entries) {
      if (k.startsWith(fullPrefix)) out.push({ key: k.slice(this.prefix.length), value: e.value, revision: e.revision });
    }
    return out.sort((a, b) => compareKeys(a.key, b.key));
  }

  // ---- writes ----

  put(key: string, value: string, options?: PutOptions): Promise<number> {
    return this.write(key, options, (full, lease) => ({
      ops: [{ type: 'put', key: full, value, lease }],
      result: (rev) => rev,
    }));
  }

  create(key: string, value: string, options?: PutOptions): Promise<number | undefined> {
    return this.write(key, options, (full, lease) =>
      this.entries.has(full)
        ? { ops: [], result: () => undefined }
        : { ops: [{ type: 'put', key: full, value, lease }], result: (rev) => rev },
    );
  }

  /** `revision` 0 means "only if absent" (as etcd mod_revision 0 and Consul cas=0). */
  compareAndSet(key: string, value: string, revision: number, options?: PutOptions): Promise<number | undefined> {
    return this.write(key, options, (full, lease) => {
      const current = this.entries.get(full)?.revision ?? 0;
      return current === revision
        ? { ops: [{ type: 'put', key: full, value, lease }], result: (rev) => rev }
        : { ops: [], result: () => undefined };
    });
  }

  delete(key: string): Promise<void> {
    assertKey(key);
    const full = this.prefix + key;
    return this.mutate(() => ({
      ops: this.entries.has(full) ? [{ type: 'delete', key: full }] : [],
      result: () => undefined,
    }));
  }

  compareAndDelete(key: string, revision: number): Promise<boolean> {
    assertKey(key);
    const full = this.prefix + key;
    return this.mutate(() => {
      const e = this.entries.get(full);
      return e !== undefined && e.revision === revision
        ? { ops: [{ type: 'delete', key: full }], result: () => true }
        : { ops: [], result: () => false };
    });
  }

  deletePrefix(prefix: string): Promise<void> {
    const full = this.prefix + prefix;
    return this.mutate(() => ({
      ops: [...this.entries.keys()].filter((k) => k.startsWith(full)).map((key) => ({ type: 'delete' as const, key })),
      result: () => undefined,
    }));
  }

  // ---- leases ----

  grantLease(ttlSeconds: number): Promise<Lease> {
    return this.guard(() => {
      if (!(ttlSeconds > 0)) throw new RangeError(`lease TTL must be positive, got ${ttlSeconds}`);
      const lease = new LocalLease(this, ttlSeconds);
      this.liveLeases.add(lease.id);
      return lease;
    });
  }

  /** @internal used by LocalLease */
  revokeLease(lease: LocalLease): Promise<void> {
    return this.mutate(() => {
      this.liveLeases.delete(lease.id);
      return {
        ops: [...this.entries].filter(([, e]) => e.lease === lease.id).map(([key]) => ({ type: 'delete' as const, key })),
        result: () => undefined,
      };
    });
  }

  // ---- watches ----

  watch(prefix: string, listener: WatchListener): Watch {
    const full = this.prefix + prefix;
    const safe = new SafeListener(listener, this.logger, `${this.description} ${prefix}`);
    // Snapshot now (a commit boundary): every later commit is enqueued after its reset.
    return this.watches.add(full, safe, this.closed ? undefined : this.snapshot(full), this.revision);
  }

  // ---- lifecycle ----

  close(): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        this.closed = true;
        // Let accepted mutations finish, and the compactions they queue (which extend the queue).
        for (let tail = this.queue; ; tail = this.queue) {
          await tail.catch(() => undefined);
          if (tail === this.queue) break;
        }
        await this.watches.closeAll();
        this.liveLeases.clear();
        if (this.logRecords > 0 || this.logTainted) {
          // A stopped store is its snapshot alone (readable by hand, or by an older version).
          await this.compact().catch((err: unknown) =>
            this.logger.warn('local store: compaction at close failed; the log is replayed at the next open', {
              error: errorMessage(err),
            }),
          );
        }
        await this.log?.close().catch(() => undefined);
        this.log = undefined;
        await this.lock.release();
      })();
    }
    return this.closing;
  }

  // ---- internals ----

  private guard<T>(fn: () => T): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`${this.description}: store is closed`));
    try {
      return Promise.resolve(fn());
    } catch (err) {
      return Promise.reject(err);
    }
  }

  private write<T>(
    key: string,
    options: PutOptions | undefined,
    build: (fullKey: string, lease: string | undefined) => Mutation<T>,
  ): Promise<T> {
    try {
      assertKey(key);
    } catch (err) {
      return Promise.reject(err);
    }
    const lease = options?.lease;
    return this.mutate(() => {
      if (lease !== undefined && !(lease instanceof LocalLease && this.liveLeases.has(lease.id))) {
        throw new Error(`${this.description}: lease ${lease.id} is not a live lease of this store`);
      }
      return build(this.prefix + key, lease?.id);
    });
  }

  /**
   * Serialises mutations: each one sees the state left by the previous, its record is durable
   * in the log before it is applied in memory, then watchers are notified.
   */
  private mutate<T>(plan: () => Mutation<T>): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`${this.description}: store is closed`));
    const run = async (): Promise<T> => {
      const m = plan();
      if (m.ops.length === 0) return m.result(this.revision);
      if (this.logTainted) await this.compact();
      const rev = this.revision + 1;
      const record = Buffer.from(encodeLogRecord(rev, m.ops) + '\n');
      await this.append(record);
      const events = applyOps(this.entries, m.ops, rev);
      this.revision = rev;
      this.watches.notify(events);
      if (this.logBytes >= this.logLimit.bytes || this.logRecords >= this.logLimit.records) this.queueCompaction();
      return m.result(rev);
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  /** One write syscall; O_DSYNC makes it durable when it returns. */
  private async append(record: Buffer): Promise<void> {
    const log = this.log;
    if (!log) throw new Error(`${this.description}: store is closed`);
    try {
      const { bytesWritten } = await log.write(record, 0, record.length, null);
      if (bytesWritten !== record.length) {
        throw new Error(`short write to ${this.logFile} (${bytesWritten} of ${record.length} bytes)`);
      }
    } catch (err) {
      // Possibly torn bytes at the end of the log, and possibly even a whole record that was not
      // acknowledged: truncate now (the snapshot holds exactly the acknowledged state), or
      // before the next append if that fails too.
      this.logTainted = true;
      await this.compact().catch((e: unknown) =>
        this.logger.warn('local store: compaction after a failed append failed; retried before the next write', {
          error: errorMessage(e),
        }),
      );
      throw err;
    }
    this.logBytes += record.length;
    this.logRecords += 1;
  }

  /** Runs in the mutation queue, after the mutation that passed the bound has resolved. */
  private queueCompaction(): void {
    if (this.compactionQueued) return;
    this.compactionQueued = true;
    const run = async (): Promise<void> => {
      this.compactionQueued = false;
      if (this.logBytes < this.logLimit.bytes && this.logRecords < this.logLimit.records) return;
      await this.compact().catch((err: unknown) =>
        this.logger.warn('local store: log compaction failed; retried at the next write', { error: errorMessage(err) }),
      );
    };
    this.queue = this.queue.then(run, run);
  }

  /**
   * Snapshot of the in-memory state (atomically: temp file, fsync, rename, fsync dir), then the
   * log truncated. Only called from the mutation queue (or before/after it runs), so no append
   * is in flight and the state does not change underneath.
   */
  private async compact(): Promise<void> {
    await writeSnapshot(this.dir, this.revision, this.entries);
    // Only now may the log go: until the rename is durable, it is what holds these records.
    const log = this.log;
    if (!log) throw new Error(`${this.description}: store is closed`);
    await log.truncate(0);
    await log.sync();
    this.logBytes = 0;
    this.logRecords = 0;
    this.logTainted = false;
  }
}

export function openLocalStore(options: LocalStoreOptions): Promise<LocalStore> {
  return LocalStore.open(options);
}
