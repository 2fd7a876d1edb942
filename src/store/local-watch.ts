/**
 * Leases and watches of the embedded store. A lease lives in this process only; watch
 * deliveries are queued per watch so they arrive in commit order, outside the mutation.
 */

import { randomBytes } from 'node:crypto';

import type { KVEntry, Lease, Watch, WatchEvent } from './store';
import type { SafeListener } from './util';

/** What a lease needs of its store. */
export interface LeaseOwner {
  revokeLease(lease: LocalLease): Promise<void>;
}

export class LocalLease implements Lease {
  readonly id: string;
  constructor(
    private readonly store: LeaseOwner,
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

export class LocalWatch implements Watch {
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

/** The open watches of one store: registration, delivery of committed events, closing. */
export class LocalWatches {
  private readonly open = new Set<LocalWatch>();

  /** @param prefix the store's key prefix, stripped from the keys watchers see */
  constructor(private readonly prefix: string) {}

  /**
   * `initial` undefined means the store is closed: nothing will ever be delivered, but the
   * watch is still returned (the interface stays non-throwing like the network backends).
   */
  add(fullPrefix: string, listener: SafeListener, initial: KVEntry[] | undefined, revision: number): Watch {
    const w = new LocalWatch(fullPrefix, listener, (x) => this.open.delete(x));
    if (initial === undefined) {
      w.closed = true;
      return w;
    }
    this.open.add(w);
    w.enqueue(() => w.listener.reset(initial, revision));
    return w;
  }

  notify(events: readonly WatchEvent[]): void {
    for (const w of this.open) {
      const mine: WatchEvent[] = [];
      for (const ev of events) {
        if (!ev.key.startsWith(w.fullPrefix)) continue;
        mine.push({ ...ev, key: ev.key.slice(this.prefix.length) });
      }
      if (mine.length > 0) w.enqueue(() => w.listener.events(mine));
    }
  }

  async closeAll(): Promise<void> {
    for (const w of [...this.open]) await w.close();
  }
}
