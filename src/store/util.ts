/** Small helpers shared by the store backends (no backend-specific imports here). */

import { KVEntry, PutOptions, Store, StoreUnavailableError, Watch, WatchEvent, WatchListener } from './store';
import type { Logger } from '../log';
import { errorMessage } from '../util/errors';

export const DEFAULT_PREFIX = 'tsoverlay/v1/';
/**
 * Longer than etcd's own request timeout (5 s + 2 election timeouts = 7 s by default): a
 * store that is slow but working answers, with its result or its own error, before we give up
 * and leave the outcome unknown. An unreachable store fails at once, not after this.
 */
export const DEFAULT_TIMEOUT_MS = 10_000;

/** Byte-order-ish key comparison (UTF-16 code units; identical to etcd/Consul order for ASCII keys). */
export function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function sortEntries(entries: KVEntry[]): KVEntry[] {
  return entries.sort((x, y) => compareKeys(x.key, y.key));
}

export function assertKey(key: string): void {
  if (typeof key !== 'string' || key.length === 0) {
    throw new TypeError('store key must be a non-empty string');
  }
}

export { errorMessage };
export { Backoff, sleep } from '../util/retry';

export function toError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/**
 * Race `work` against a timer. On expiry the promise rejects with StoreUnavailableError;
 * the underlying request may still complete later (its outcome is then unknown to the caller).
 */
export function withDeadline<T>(work: Promise<T>, ms: number, what: () => string): Promise<T> {
  return new Deadline(ms).race(work, () => new StoreUnavailableError(`${what()}: no answer within ${ms} ms (outcome unknown)`));
}

/**
 * The time one request may take in all: its waits for locks and every store call made for it.
 * Each store backend bounds a single call, but a request queued behind others, or making several
 * calls, would otherwise add those bounds up and answer long after the timeout it was given.
 */
export class Deadline {
  private readonly at: number;

  constructor(
    readonly ms: number,
    now: number = performance.now(),
  ) {
    this.at = now + ms;
  }

  remaining(): number {
    return Math.max(0, this.at - performance.now());
  }

  get expired(): boolean {
    return this.remaining() <= 0;
  }

  /**
   * `work` raced against what is left of the deadline, rejecting with `onExpiry()` once it has
   * passed (at once if it already has). An answer that is already waiting when the timer runs wins.
   */
  race<T>(work: Promise<T>, onExpiry: () => Error): Promise<T> {
    const left = this.remaining();
    if (left <= 0) {
      work.catch(() => undefined); // abandoned: its rejection is nobody's to handle
      return Promise.reject(onExpiry());
    }
    return new Promise<T>((resolve, reject) => {
      // Node runs expired timers before it reads sockets: after the process was starved of CPU
      // an answer may already be waiting. setImmediate runs after that read, so the answer wins.
      const timer = setTimeout(() => setImmediate(() => reject(onExpiry())), left);
      work.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (e: unknown) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
  }
}

/** A create whose outcome the caller never learnt (no answer before the deadline, or an error). */
export interface UncertainCreate {
  key: string;
  value: string;
}

/**
 * `store` seen through one request's deadline: every call is raced against what is left of it,
 * and none is started once it has passed. Creates that did not answer are reported to
 * `onUncertainCreate`, because the store may still apply them after the request has failed.
 */
export function storeWithDeadline(store: Store, deadline: Deadline, onUncertainCreate?: (c: UncertainCreate) => void): Store {
  const bound = <T>(what: string, call: () => Promise<T>): Promise<T> => {
    const expired = (): Error =>
      new StoreUnavailableError(`${store.description}: ${what}: the request's ${deadline.ms} ms deadline passed (outcome unknown)`);
    if (deadline.expired) return Promise.reject(expired());
    return deadline.race(call(), expired);
  };
  return {
    get description() {
      return store.description;
    },
    get distributed() {
      return store.distributed;
    },
    get: (key) => bound(`get ${key}`, () => store.get(key)),
    list: (prefix) => bound(`list ${prefix}`, () => store.list(prefix)),
    put: (key, value, options?: PutOptions) => bound(`put ${key}`, () => store.put(key, value, options)),
    create: async (key, value, options?: PutOptions) => {
      const started = !deadline.expired;
      try {
        return await bound(`create ${key}`, () => store.create(key, value, options));
      } catch (err) {
        if (started) onUncertainCreate?.({ key, value });
        throw err;
      }
    },
    compareAndSet: (key, value, revision, options?: PutOptions) =>
      bound(`compare-and-set ${key}`, () => store.compareAndSet(key, value, revision, options)),
    delete: (key) => bound(`delete ${key}`, () => store.delete(key)),
    compareAndDelete: (key, revision) => bound(`compare-and-delete ${key}`, () => store.compareAndDelete(key, revision)),
    deletePrefix: (prefix) => bound(`delete ${prefix}*`, () => store.deletePrefix(prefix)),
    watch: (prefix, listener) => store.watch(prefix, listener),
    grantLease: (ttl) => bound('grant lease', () => store.grantLease(ttl)),
    close: () => store.close(),
  };
}

/** A store call this slow is logged: a request that then fails or lags shows where the time went. */
export const SLOW_CALL_MS = 1000;

export function logIfSlow(logger: Logger, store: string, what: string, startedMs: number): void {
  const ms = performance.now() - startedMs;
  if (ms >= SLOW_CALL_MS) logger.warn('slow store call', { store, call: what, ms: Math.round(ms) });
}

/**
 * Calls a WatchListener defensively: a throwing listener is logged and does not break
 * the backend's watch loop (or, for etcd, crash the process from inside an emitter).
 */
export class SafeListener {
  constructor(
    private readonly listener: WatchListener,
    private readonly logger: Logger,
    private readonly what: string,
  ) {}

  reset(entries: KVEntry[], revision: number): void {
    try {
      this.listener.onReset(entries, revision);
    } catch (err) {
      this.logger.error('store watch listener onReset threw', { watch: this.what, error: errorMessage(err) });
    }
  }

  events(events: WatchEvent[]): void {
    if (events.length === 0) return;
    try {
      this.listener.onEvents(events);
    } catch (err) {
      this.logger.error('store watch listener onEvents threw', { watch: this.what, error: errorMessage(err) });
    }
  }

  error(err: Error): void {
    if (!this.listener.onError) return;
    try {
      this.listener.onError(err);
    } catch (e) {
      this.logger.error('store watch listener onError threw', { watch: this.what, error: errorMessage(e) });
    }
  }
}

/** Lease-lost listeners that fire at most once, including for late registrations. */
export class LostSignal {
  private readonly listeners: Array<() => void> = [];
  private fired = false;
  private disarmed = false;

  constructor(
    private readonly logger: Logger,
    private readonly what: string,
  ) {}

  get isFired(): boolean {
    return this.fired;
  }

  add(listener: () => void): void {
    if (this.fired) {
      queueMicrotask(() => this.invoke(listener));
      return;
    }
    this.listeners.push(listener);
  }

  /** After revoke/close the lease ending is expected: never fire. */
  disarm(): void {
    this.disarmed = true;
  }

  fire(reason: string): void {
    if (this.fired || this.disarmed) return;
    this.fired = true;
    this.logger.warn('store lease lost', { lease: this.what, reason });
    for (const l of this.listeners.splice(0)) this.invoke(l);
  }

  private invoke(listener: () => void): void {
    try {
      listener();
    } catch (err) {
      this.logger.error('lease onLost listener threw', { lease: this.what, error: errorMessage(err) });
    }
  }
}

export interface TrackedWatchOptions<W> {
  closed: boolean;
  description: string;
  prefix: string;
  listener: WatchListener;
  logger: Logger;
  /** The backend's live watches, closed with the store. */
  watches: Set<W>;
}

/** Starts a backend watch behind a SafeListener and keeps it in the store's set until closed. */
export function openTrackedWatch<W extends { close(): Promise<void> }>(
  opts: TrackedWatchOptions<W>,
  create: (listener: SafeListener) => W,
): Watch {
  if (opts.closed) {
    opts.logger.warn('watch requested on a closed store', { store: opts.description, prefix: opts.prefix });
    return { close: () => Promise.resolve() };
  }
  const w = create(new SafeListener(opts.listener, opts.logger, `${opts.description} ${opts.prefix}`));
  opts.watches.add(w);
  return {
    close: async () => {
      opts.watches.delete(w);
      await w.close();
    },
  };
}
