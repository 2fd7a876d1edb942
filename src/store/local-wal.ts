/**
 * The embedded store's files: the snapshot (`store.json`) and the write-ahead log
 * (`store.log`, one line `{"rev":N,"ops":[...],"crc":"…"}` per mutation), their formats, and
 * replaying them.
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
 */

import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { crc32 } from 'node:zlib';
import { z } from 'zod';

import type { Logger } from '../log';
import type { KVEntry, WatchEvent } from './store';
import { DEFAULT_PREFIX, compareKeys, errorMessage } from './util';

export const LOCAL_STORE_FILE = 'store.json';
export const LOCAL_LOG_FILE = 'store.log';
/** Where an unterminated last log line (a torn append) is kept when open drops it. */
export const LOCAL_TORN_FILE_PREFIX = 'store.log.torn-';

const storedEntrySchema = z.object({
  value: z.string(),
  revision: z.number().int().positive(),
  createRevision: z.number().int().positive(),
  lease: z.string().optional(),
});
export type StoredEntry = z.infer<typeof storedEntrySchema>;

const storeFileSchema = z.object({
  format: z.literal('tsoverlay-local-store'),
  version: z.literal(1),
  revision: z.number().int().nonnegative(),
  entries: z.record(storedEntrySchema),
});
export type StoreFile = z.infer<typeof storeFileSchema>;

const opSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('put'), key: z.string().min(1), value: z.string(), lease: z.string().optional() }),
  z.object({ type: z.literal('delete'), key: z.string().min(1) }),
]);
export type Op = z.infer<typeof opSchema>;

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
export function encodeLogRecord(rev: number, ops: readonly Op[]): string {
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
export class CorruptStoreError extends Error {}

export function parseSnapshot(file: string, text: string): StoreFile {
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
export function applyOps(entries: Map<string, StoredEntry>, ops: readonly Op[], rev: number): WatchEvent[] {
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
export function replayLog(file: string, text: string, entries: Map<string, StoredEntry>, revision: number): ReplayResult {
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

export function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

export async function fsyncDir(dir: string): Promise<void> {
  const dh = await fsp.open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

export async function readIfExists(file: string): Promise<string | undefined> {
  try {
    return await fsp.readFile(file, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Replaces the snapshot atomically (temp file, fsync, rename, fsync dir). The caller may
 * truncate the log only after this resolves: until the rename is durable, the log is what
 * holds the records.
 */
export async function writeSnapshot(dir: string, revision: number, entries: ReadonlyMap<string, StoredEntry>): Promise<void> {
  const file = path.join(dir, LOCAL_STORE_FILE);
  const data: StoreFile = {
    format: 'tsoverlay-local-store',
    version: 1,
    revision,
    entries: Object.fromEntries([...entries].sort(([a], [b]) => compareKeys(a, b))),
  };
  const tmp = `${file}.tmp-${process.pid}`;
  const fh = await fsp.open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(JSON.stringify(data, null, 1) + '\n');
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, file);
  await fsyncDir(dir);
}

/** Writes a dropped unterminated log tail beside the log; returns where. */
export async function keepTornTail(dir: string, tail: string): Promise<string> {
  const kept = path.join(dir, `${LOCAL_TORN_FILE_PREFIX}${new Date().toISOString().replace(/[:.]/g, '-')}`);
  await fsp.writeFile(kept, tail, { mode: 0o600 });
  return kept;
}

/** Leftovers of a crash between write and rename are never the committed state. */
export async function removeSnapshotDrafts(dir: string): Promise<void> {
  for (const name of await fsp.readdir(dir)) {
    if (name.startsWith(`${LOCAL_STORE_FILE}.tmp-`)) {
      await fsp.rm(path.join(dir, name), { force: true });
    }
  }
}


/** What a store directory held at open, with what recovering it changed. */
export interface RecoveredState {
  entries: Map<string, StoredEntry>;
  revision: number;
  /** The log as found (undefined: there was none); anything in it is compacted away at open. */
  logText: string | undefined;
  /** Leased keys removed (in memory only: the compaction at open makes it durable). */
  orphaned: number;
}

/**
 * Reads a store directory the store holds the lock of: snapshot drafts removed, the snapshot
 * read and the log replayed onto it, a torn last line dropped (and kept beside the log), and the
 * keys of leases that ended with the previous process removed.
 */
export async function recoverStoreDir(dir: string, logger: Logger): Promise<RecoveredState> {
  const file = path.join(dir, LOCAL_STORE_FILE);
  const logFile = path.join(dir, LOCAL_LOG_FILE);
  await removeSnapshotDrafts(dir);
  let entries = new Map<string, StoredEntry>();
  let revision = 0;
  const text = await readIfExists(file);
  if (text !== undefined) {
    const data = parseSnapshot(file, text);
    revision = data.revision;
    entries = new Map(Object.entries(data.entries));
  }
  const logText = await readIfExists(logFile);
  const replay = replayLog(logFile, logText ?? '', entries, revision);
  revision = replay.revision;
  if (replay.tornTail.length > 0) {
    // Never acknowledged, so safe to drop; kept for a person to look at all the same.
    const kept = await keepTornTail(dir, replay.tornTail);
    logger.warn('local store: dropped an unterminated last log line (a write cut off by a crash; it was never acknowledged)', {
      log: logFile,
      bytes: Buffer.byteLength(replay.tornTail),
      keptIn: kept,
    });
  }
  // No lease survives its process: every leased key here belongs to a dead holder. Removed in
  // memory and made durable by the compaction at open (a crash before it just redoes this).
  const orphaned = [...entries].filter(([, e]) => e.lease !== undefined).map(([k]) => k);
  if (orphaned.length > 0) {
    revision += 1;
    applyOps(entries, orphaned.map((key) => ({ type: 'delete' as const, key })), revision);
    logger.info('local store: removed keys whose lease ended with the previous process', {
      count: orphaned.length,
    });
  }
  return { entries, revision, logText, orphaned: orphaned.length };
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
