/**
 * Embedded single-host store: a snapshot (`<dir>/store.json`) plus a write-ahead log
 * (`<dir>/store.log`). Every mutation is one line `{"rev":N,"ops":[...],"crc":"…"}` appended with a
 * single write on an O_APPEND|O_DSYNC descriptor, durable before the mutation resolves: one
 * threadpool round trip and one short line per call, where rewriting the whole snapshot
 * (temp file, fsync, rename, fsync dir) took several round trips and grew with the store. The
 * snapshot is rewritten atomically only to compact: at open (so every start begins with an
 * empty log), at a clean close (so the snapshot alone is the state of a stopped store), and when
 * the log passes a bound — always in the mutation queue, never beside an append.
 *
 * Crash safety: the snapshot is replaced by rename and the log truncated only after that rename
 * is durable, so a crash mid-compaction leaves a complete snapshot and log records the loader
 * skips (revision not above the snapshot's). A crash mid-append leaves an unterminated last
 * line: its write never returned, so it was never acknowledged, and it is dropped (a copy is
 * kept beside the log). Every terminated line was acknowledged: each carries a CRC-32 of its
 * record, and one that cannot be read or does not match — the last one included — stops open
 * with an error naming the file and line; the log is then left untouched (no compaction) until
 * a person decides. A failed append may have left torn bytes, so nothing is appended after one
 * until a compaction has truncated the log.
 *
 * Mutations are serialised in-process; one global revision counter (persisted) stamps every
 * write, like etcd's store revision. Leases live in this process only: keys put with a lease
 * are removed on revoke, and at the next open (a lease never survives its process, so every
 * leased key found at open belongs to a dead holder). Only one process may open a store
 * directory at a time, enforced by `<dir>/store.lock` (O_EXCL, holder pid + start time,
 * stale-lock takeover; a holder that has exited but is not yet reaped, a zombie, is dead).
 */

import { constants as fsc, promises as fsp, readFileSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { z } from 'zod';

import type { Logger } from '../log';
import type { KVEntry, Lease, PutOptions, Store, Watch, WatchEvent, WatchListener } from './store';
import { DEFAULT_PREFIX, SafeListener, assertKey, compareKeys, errorMessage } from './util';

export const LOCAL_STORE_FILE = 'store.json';
export const LOCAL_LOG_FILE = 'store.log';
export const LOCAL_LOCK_FILE = 'store.lock';
/** Where an unterminated last log line (a torn append) is kept when open drops it. */
export const LOCAL_TORN_FILE_PREFIX = 'store.log.torn-';

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

/** Thrown when another live process (or this one) already holds the store directory. */
export class StoreLockedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreLockedError';
  }
}

const storedEntrySchema = z.object({
  value: z.string(),
  revision: z.number().int().positive(),
  createRevision: z.number().int().positive(),
  lease: z.string().optional(),
});
type StoredEntry = z.infer<typeof storedEntrySchema>;

const storeFileSchema = z.object({
  format: z.literal('tsoverlay-local-store'),
  version: z.literal(1),
  revision: z.number().int().nonnegative(),
  entries: z.record(storedEntrySchema),
});
type StoreFile = z.infer<typeof storeFileSchema>;

const lockInfoSchema = z.object({
  pid: z.number().int().positive(),
  startTime: z.string().optional(),
  hostname: z.string().optional(),
});
type LockInfo = z.infer<typeof lockInfoSchema>;

const opSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('put'), key: z.string().min(1), value: z.string(), lease: z.string().optional() }),
  z.object({ type: z.literal('delete'), key: z.string().min(1) }),
]);
type Op = z.infer<typeof opSchema>;

const logRecordSchema = z
  .object({
    rev: z.number().int().positive(),
    ops: z.array(opSchema).min(1),
    /** CRC-32 of `{"rev":…,"ops":…}` as written; absent only in logs of versions before it. */
    crc: z.string().regex(/^[0-9a-f]{8}$/).optional(),
  })
  .strict();
type LogRecord = z.infer<typeof logRecordSchema>;

function recordCrc(body: string): string {
  return crc32(body).toString(16).padStart(8, '0');
}

/** One log line (without its newline) for a record: the record and the CRC of its text. */
function encodeLogRecord(rev: number, ops: readonly Op[]): string {
  const body = JSON.stringify({ rev, ops });
  return `${body.slice(0, -1)},"crc":"${recordCrc(body)}"}`;
}

/** A log line back to its record; throws with the reason it cannot be trusted. */
function decodeLogRecord(line: string): LogRecord {
  const record = logRecordSchema.parse(JSON.parse(line));
  if (record.crc !== undefined) {
    // Re-encoding what was parsed gives back the written text exactly (JSON.stringify is
    // canonical for these plain records), so any changed byte shows as a mismatch.
    const body = JSON.stringify({ rev: record.rev, ops: record.ops });
    if (recordCrc(body) !== record.crc || `${body.slice(0, -1)},"crc":"${record.crc}"}` !== line) {
      throw new Error(`checksum mismatch (the line was changed after it was written)`);
    }
  }
  return record;
}

/** A log (or snapshot) the loader cannot trust; open refuses rather than start from partial state. */
class CorruptStoreError extends Error {}

function parseSnapshot(file: string, text: string): StoreFile {
  try {
    return storeFileSchema.parse(JSON.parse(text));
  } catch (err) {
    throw new CorruptStoreError(
      `local store file ${file} is corrupt or of an unknown format (${errorMessage(err).slice(0, 300)}); ` +
        'refusing to start with empty state — move it aside to start over',
    );
  }
}

/**
 * Applies one committed record in place. Shared by the live path and replay, so a replayed
 * store is exactly the one that was running (revisions, createRevision included).
 */
function applyOps(entries: Map<string, StoredEntry>, ops: readonly Op[], rev: number): WatchEvent[] {
  const events: WatchEvent[] = [];
  for (const op of ops) {
    if (op.type === 'put') {
      const prev = entries.get(op.key);
      const entry: StoredEntry = { value: op.value, revision: rev, createRevision: prev?.createRevision ?? rev };
      if (op.lease !== undefined) entry.lease = op.lease;
      entries.set(op.key, entry);
      events.push({ type: 'put', key: op.key, value: op.value, revision: rev });
    } else if (entries.delete(op.key)) {
      events.push({ type: 'delete', key: op.key, revision: rev });
    }
  }
  return events;
}

export interface ReplayResult {
  revision: number;
  /** Bytes after the last newline: an append cut off by a crash (never acknowledged), dropped. */
  tornTail: string;
}

/**
 * Replays the log's records above `revision` onto `entries`. Only an unterminated tail is the
 * trace of a crash mid-append (its write never returned, so nobody was told it succeeded) and
 * is left out. Every newline-terminated line was acknowledged: one that cannot be read, the
 * last one included, is corruption — skipping it could hand out again an address or VNI that
 * a container holds. Records at or below `revision` are already in the snapshot (a crash
 * between its rename and the log's truncation).
 */
function replayLog(file: string, text: string, entries: Map<string, StoredEntry>, revision: number): ReplayResult {
  const end = text.lastIndexOf('\n');
  const lines = end < 0 ? [] : text.slice(0, end).split('\n');
  const snapshotRevision = revision;
  const corrupt = (line: number, why: string): CorruptStoreError =>
    new CorruptStoreError(
      `local store log ${file} is corrupt at line ${line} of ${lines.length} (${why.slice(0, 300)}); ` +
        'refusing to start with partial state: that line holds an acknowledged write (an address, network or ' +
        'endpoint someone was told exists), and starting without it could hand the same thing out twice. ' +
        'The log is left exactly as it is. To decide: look at the line ' +
        `(sed -n ${line}p ${file}); to start from the writes before it, keep a copy and cut the log there ` +
        `(cp ${file} ${file}.damaged && head -n ${line - 1} ${file}.damaged > ${file}), then check the ` +
        `containers of the lost writes by hand; moving the log aside starts from the snapshot (revision ${snapshotRevision}). ` +
        'See docs/reliability.md, "Embedded store".',
    );
  for (let i = 0; i < lines.length; i++) {
    let record: LogRecord;
    try {
      record = decodeLogRecord(lines[i]!);
    } catch (err) {
      throw corrupt(i + 1, errorMessage(err));
    }
    if (record.rev <= revision) continue;
    if (record.rev !== revision + 1) throw corrupt(i + 1, `revision ${record.rev} follows ${revision}`);
    applyOps(entries, record.ops, record.rev);
    revision = record.rev;
  }
  return { revision, tornTail: text.slice(end + 1) };
}

interface Mutation<T> {
  ops: Op[];
  /** Called with the revision the ops were committed at (or the unchanged revision when ops is empty). */
  result(revision: number): T;
}

/** Process start time from /proc (field 22), to tell a live lock holder from a reused pid. */
function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19]; // field 22 overall; fields[0] is field 3 (state)
  } catch {
    return undefined;
  }
}

/** Process state letter from /proc (field 3), undefined when the process is gone. */
function processState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

/**
 * Whether the process can still be using the store. A zombie (exited, not yet reaped by its
 * parent) still answers kill(pid, 0), but its descriptors and memory are gone: it holds nothing.
 */
function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const state = processState(pid);
  return state !== 'Z' && state !== 'X';
}

function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

async function fsyncDir(dir: string): Promise<void> {
  const dh = await fsp.open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

class LockFile {
  private constructor(
    readonly path: string,
    private readonly info: LockInfo,
  ) {}

  static async acquire(dir: string, logger: Logger): Promise<LockFile> {
    const lockPath = path.join(dir, LOCAL_LOCK_FILE);
    const info: LockInfo = { pid: process.pid, startTime: processStartTime(process.pid), hostname: os.hostname() };
    await LockFile.removeDeadDrafts(dir);
    for (let attempt = 0; attempt < 3; attempt++) {
      // Written in full under a private name, then linked into place: the lock file appears
      // with its content or not at all. (Created empty and then written, a crash in between
      // left an unreadable lock that blocked every restart until it was old enough to be taken over.)
      const draft = `${lockPath}.${process.pid}.${randomBytes(4).toString('hex')}`;
      try {
        const fh = await fsp.open(draft, 'wx', 0o644);
        try {
          await fh.writeFile(JSON.stringify(info) + '\n');
          await fh.sync();
        } finally {
          await fh.close();
        }
        await fsp.link(draft, lockPath);
        await fsyncDir(dir);
        return new LockFile(lockPath, info);
      } catch (err) {
        if (errnoCode(err) !== 'EEXIST') throw err;
      } finally {
        await fsp.rm(draft, { force: true });
      }
      const verdict = await LockFile.inspect(lockPath);
      if (verdict.kind === 'live') {
        throw new StoreLockedError(
          `local store ${dir} is already open in ${verdict.holder} (lock file ${lockPath}); ` +
            'only one process may use a local store at a time — stop the other tsoverlay instance or use a different state directory',
        );
      }
      if (verdict.kind === 'stale') {
        logger.warn('removing stale local store lock', { lock: lockPath, reason: verdict.reason });
        try {
          await fsp.unlink(lockPath);
        } catch (err) {
          if (errnoCode(err) !== 'ENOENT') throw err;
        }
      }
      // 'gone': the holder released it between our attempts; just retry.
    }
    throw new StoreLockedError(`local store ${dir}: could not acquire lock file ${lockPath} (kept changing hands)`);
  }

  /** Drafts (`store.lock.<pid>.<random>`) of processes that died before linking them. */
  private static async removeDeadDrafts(dir: string): Promise<void> {
    for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
      const m = new RegExp(`^${LOCAL_LOCK_FILE.replace(/\./g, '\\.')}\\.(\\d+)\\.[0-9a-f]+$`).exec(name);
      if (m && !pidAlive(Number(m[1]))) await fsp.rm(path.join(dir, name), { force: true });
    }
  }

  private static async inspect(
    lockPath: string,
  ): Promise<{ kind: 'live'; holder: string } | { kind: 'stale'; reason: string } | { kind: 'gone' }> {
    let text: string;
    let mtimeMs: number;
    try {
      text = await fsp.readFile(lockPath, 'utf8');
      mtimeMs = (await fsp.stat(lockPath)).mtimeMs;
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return { kind: 'gone' };
      throw err;
    }
    let holder: LockInfo;
    try {
      holder = lockInfoSchema.parse(JSON.parse(text));
    } catch {
      // Empty or partial: either a holder is writing it right now, or it crashed mid-write.
      if (Date.now() - mtimeMs > 10_000) return { kind: 'stale', reason: 'unreadable lock file older than 10 s' };
      return { kind: 'live', holder: 'another process (lock file being written)' };
    }
    const desc = `process ${holder.pid}${holder.hostname ? ` on ${holder.hostname}` : ''}`;
    if (holder.hostname && holder.hostname !== os.hostname()) {
      // Cannot check a pid on another machine (shared state directory): never steal.
      return { kind: 'live', holder: desc };
    }
    if (holder.pid === process.pid && holder.startTime === processStartTime(process.pid)) {
      return { kind: 'live', holder: `this process (pid ${process.pid}); close the other LocalStore first` };
    }
    if (!pidAlive(holder.pid)) {
      const zombie = processState(holder.pid) === 'Z' ? ' (it has exited; its parent has not reaped it yet)' : '';
      return { kind: 'stale', reason: `holder pid ${holder.pid} is not running${zombie}` };
    }
    if (holder.startTime !== undefined) {
      const current = processStartTime(holder.pid);
      if (current !== undefined && current !== holder.startTime) {
        return { kind: 'stale', reason: `pid ${holder.pid} was reused by another process` };
      }
    }
    return { kind: 'live', holder: desc };
  }

  async release(): Promise<void> {
    try {
      const holder = lockInfoSchema.parse(JSON.parse(await fsp.readFile(this.path, 'utf8')));
      if (holder.pid !== this.info.pid || holder.startTime !== this.info.startTime) return; // not ours any more
      await fsp.unlink(this.path);
    } catch {
      // Missing or unreadable: nothing of ours to remove.
    }
  }
}

class LocalLease implements Lease {
  readonly id: string;
  constructor(
    private readonly store: LocalStore,
    readonly ttlSeconds: number,
  ) {
    this.id = `${process.pid}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  }

  /** The lease cannot be lost while this process lives; listeners are accepted and never fire. */
  onLost(_listener: () => void): void {}

  revoke(): Promise<void> {
    return this.store.revokeLease(this);
  }
}

class LocalWatch implements Watch {
  private readonly pending: Array<() => void> = [];
  private scheduled = false;
  closed = false;

  constructor(
    readonly fullPrefix: string,
    readonly listener: SafeListener,
    private readonly onClose: (w: LocalWatch) => void,
  ) {}

  /** Deliveries run in order, in a microtask, never inside the mutation that caused them. */
  enqueue(fn: () => void): void {
    if (this.closed) return;
    this.pending.push(fn);
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.drain());
    }
  }

  private drain(): void {
    this.scheduled = false;
    while (this.pending.length > 0 && !this.closed) {
      const fn = this.pending.shift();
      if (fn) fn();
    }
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.pending.length = 0;
      this.onClose(this);
    }
    return Promise.resolve();
  }
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
  private readonly watches = new Set<LocalWatch>();
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
    // Leftovers of a crash between write and rename are never the committed state.
    for (const name of await fsp.readdir(this.dir)) {
      if (name.startsWith(`${LOCAL_STORE_FILE}.tmp-`)) {
        await fsp.rm(path.join(this.dir, name), { force: true });
      }
    }
    const text = await readIfExists(this.file);
    if (text !== undefined) {
      const data = parseSnapshot(this.file, text);
      this.revision = data.revision;
      this.entries = new Map(Object.entries(data.entries));
    }
    const logText = await readIfExists(this.logFile);
    const replay = replayLog(this.logFile, logText ?? '', this.entries, this.revision);
    this.revision = replay.revision;
    if (replay.tornTail.length > 0) {
      // Never acknowledged, so safe to drop; kept for a person to look at all the same.
      const kept = path.join(this.dir, `${LOCAL_TORN_FILE_PREFIX}${new Date().toISOString().replace(/[:.]/g, '-')}`);
      await fsp.writeFile(kept, replay.tornTail, { mode: 0o600 });
      this.logger.warn('local store: dropped an unterminated last log line (a write cut off by a crash; it was never acknowledged)', {
        log: this.logFile,
        bytes: Buffer.byteLength(replay.tornTail),
        keptIn: kept,
      });
    }
    // No lease survives its process: every leased key here belongs to a dead holder. Removed in
    // memory and made durable by the compaction below (a crash before it just redoes this).
    const orphaned = [...this.entries].filter(([, e]) => e.lease !== undefined).map(([k]) => k);
    if (orphaned.length > 0) {
      this.revision += 1;
      applyOps(this.entries, orphaned.map((key) => ({ type: 'delete' as const, key })), this.revision);
      this.logger.info('local store: removed keys whose lease ended with the previous process', {
        count: orphaned.length,
      });
    }
    this.log = await fsp.open(this.logFile, fsc.O_WRONLY | fsc.O_APPEND | fsc.O_CREAT | fsc.O_DSYNC, 0o600);
    if ((logText ?? '').length > 0 || orphaned.length > 0) await this.compact();
    else if (logText === undefined) await fsyncDir(this.dir); // the new log's name must outlive a power loss too
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
    const w = new LocalWatch(full, new SafeListener(listener, this.logger, `${this.description} ${prefix}`), (x) =>
      this.watches.delete(x),
    );
    if (this.closed) {
      // Nothing will ever be delivered; keep the interface non-throwing like the network backends.
      w.closed = true;
      return w;
    }
    // Snapshot now (a commit boundary): every later commit is enqueued after this reset.
    const initial = this.snapshot(full);
    this.watches.add(w);
    w.enqueue(() => w.listener.reset(initial));
    return w;
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
        for (const w of [...this.watches]) await w.close();
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
      this.notify(events);
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

  private notify(events: WatchEvent[]): void {
    for (const w of this.watches) {
      const mine: WatchEvent[] = [];
      for (const ev of events) {
        if (!ev.key.startsWith(w.fullPrefix)) continue;
        mine.push({ ...ev, key: ev.key.slice(this.prefix.length) });
      }
      if (mine.length > 0) w.enqueue(() => w.listener.events(mine));
    }
  }

  /**
   * Snapshot of the in-memory state (atomically: temp file, fsync, rename, fsync dir), then the
   * log truncated. Only called from the mutation queue (or before/after it runs), so no append
   * is in flight and the state does not change underneath.
   */
  private async compact(): Promise<void> {
    const data: StoreFile = {
      format: 'tsoverlay-local-store',
      version: 1,
      revision: this.revision,
      entries: Object.fromEntries([...this.entries].sort(([a], [b]) => compareKeys(a, b))),
    };
    const tmp = `${this.file}.tmp-${process.pid}`;
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify(data, null, 1) + '\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, this.file);
    await fsyncDir(this.dir);
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

async function readIfExists(file: string): Promise<string | undefined> {
  try {
    return await fsp.readFile(file, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * The committed state of a local store directory (snapshot + log), read without taking its
 * lock: for `tsoverlay inspect` beside a running daemon. Entries under `prefix`, keys relative
 * to it, sorted; a missing directory is an empty store. A compaction between reading the
 * snapshot and reading the log would pair a snapshot with a log that does not continue it:
 * the snapshot file is held open meanwhile and the read is retried if it was replaced.
 */
export async function readLocalStoreSnapshot(dir: string, prefix: string = DEFAULT_PREFIX): Promise<KVEntry[]> {
  const file = path.join(path.resolve(dir), LOCAL_STORE_FILE);
  const logFile = path.join(path.resolve(dir), LOCAL_LOG_FILE);
  for (let attempt = 1; ; attempt++) {
    let fh: FileHandle | undefined;
    try {
      fh = await fsp.open(file, 'r');
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT') throw err;
    }
    let entries: Map<string, StoredEntry>;
    try {
      const ino = fh ? (await fh.stat()).ino : undefined;
      const text = fh ? await fh.readFile('utf8') : undefined;
      const logText = (await readIfExists(logFile)) ?? '';
      const after = await fsp.stat(file).then(
        (st) => st.ino,
        (err: unknown) => {
          if (errnoCode(err) === 'ENOENT') return undefined;
          throw err;
        },
      );
      if (after !== ino) {
        if (attempt < 20) continue; // compacted meanwhile
        throw new Error(`local store ${dir}: ${LOCAL_STORE_FILE} kept being replaced while it was read; try again`);
      }
      const data = text !== undefined ? parseSnapshot(file, text) : undefined;
      entries = new Map(Object.entries(data?.entries ?? {}));
      try {
        replayLog(logFile, logText, entries, data?.revision ?? 0);
      } catch (err) {
        // A truncation racing the log read can mix old and new bytes; a real corruption persists.
        if (attempt < 20) continue;
        throw err;
      }
    } finally {
      await fh?.close();
    }
    return [...entries]
      .filter(([k]) => k.startsWith(prefix))
      .map(([k, e]) => ({ key: k.slice(prefix.length), value: e.value, revision: e.revision }))
      .sort((a, b) => compareKeys(a.key, b.key));
  }
}
