/**
 * The local store's write-ahead log while the store is open: one O_APPEND|O_DSYNC descriptor, so
 * that each record is one write that is durable when it returns; what it holds, counted against
 * the bound that triggers a compaction; and the taint a failed append leaves (the file may end in
 * torn bytes), which only truncation clears. The record format and replay are local-wal.ts's.
 */
import { constants as fsc, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

export interface LogLimit {
  bytes: number;
  records: number;
}

export class WriteAheadLog {
  private bytes = 0;
  private records = 0;
  private torn = false;

  private constructor(
    private readonly handle: FileHandle,
    readonly file: string,
    private readonly limit: LogLimit,
  ) {}

  static async open(file: string, limit: LogLimit): Promise<WriteAheadLog> {
    return new WriteAheadLog(await fsp.open(file, fsc.O_WRONLY | fsc.O_APPEND | fsc.O_CREAT | fsc.O_DSYNC, 0o600), file, limit);
  }

  /** An append failed: the log may end in torn bytes, so it must be truncated before the next append. */
  get tainted(): boolean {
    return this.torn;
  }

  /** Nothing appended since the last truncation, and nothing torn. */
  get clean(): boolean {
    return this.records === 0 && !this.torn;
  }

  /** The log has passed its bound: time to compact. */
  get full(): boolean {
    return this.bytes >= this.limit.bytes || this.records >= this.limit.records;
  }

  /** One write syscall; O_DSYNC makes it durable when it returns. A failure taints the log. */
  async append(record: Buffer): Promise<void> {
    try {
      const { bytesWritten } = await this.handle.write(record, 0, record.length, null);
      if (bytesWritten !== record.length) {
        throw new Error(`short write to ${this.file} (${bytesWritten} of ${record.length} bytes)`);
      }
    } catch (err) {
      this.torn = true;
      throw err;
    }
    this.bytes += record.length;
    this.records += 1;
  }

  /** Empties the log, durably: only once a snapshot holds everything it recorded. */
  async truncate(): Promise<void> {
    await this.handle.truncate(0);
    await this.handle.sync();
    this.bytes = 0;
    this.records = 0;
    this.torn = false;
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}
