/**
 * The embedded store's lock file: only one process may open a store directory at a time,
 * enforced by `<dir>/store.lock` (O_EXCL, holder pid + start time, stale-lock takeover; a holder
 * that has exited but is not yet reaped, a zombie, is dead).
 */

import { promises as fsp, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { z } from 'zod';

import type { Logger } from '../log';
import { errnoCode, fsyncDir } from './local-wal';

export const LOCAL_LOCK_FILE = 'store.lock';

/** Thrown when another live process (or this one) already holds the store directory. */
export class StoreLockedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreLockedError';
  }
}

const lockInfoSchema = z.object({
  pid: z.number().int().positive(),
  startTime: z.string().optional(),
  hostname: z.string().optional(),
});
type LockInfo = z.infer<typeof lockInfoSchema>;

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

export class LockFile {
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
