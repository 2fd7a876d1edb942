/**
 * The key-value contract every backend (embedded local file, etcd, Consul) fulfils.
 *
 * Keys are relative to the backend's prefix (default `tsoverlay/v1/`); values are
 * JSON text so that `etcdctl get` / `consul kv get` show readable records.
 * Every entry carries a `revision` that changes on each write of that key; it is the
 * token for compare-and-set (etcd mod_revision, Consul ModifyIndex, a counter locally).
 */

export interface KVEntry {
  key: string;
  value: string;
  revision: number;
}

export type WatchEvent =
  | { type: 'put'; key: string; value: string; revision: number }
  | { type: 'delete'; key: string; revision: number };

/**
 * A watch is level-triggered on (re)connect and edge-triggered in between:
 * `onReset` receives the full current state under the prefix (first call, and again
 * after any reconnect or history compaction, because events may have been missed),
 * `onEvents` the changes since the last delivery, in store order.
 */
export interface WatchListener {
  /**
   * `revision`: the state is current at least up to it, for the keys under the prefix: it is
   * at or above the revision of every write under the prefix the state reflects, deletes
   * included, and every later event has a greater one. A listener can tell from it whether a
   * write under the prefix it heard of elsewhere (a host record's `settled`) is already in
   * view, even one to a key deleted since. etcd: the read's header revision; Consul: the
   * query's X-Consul-Index (the prefix's own index, not the cluster's); locally: the counter.
   */
  onReset(entries: KVEntry[], revision: number): void;
  onEvents(events: WatchEvent[]): void;
  /** Connection trouble; the watch keeps retrying by itself. */
  onError?(err: Error): void;
}

export interface Watch {
  close(): Promise<void>;
}

/**
 * Liveness token: keys put with a lease vanish when the lease ends (etcd lease,
 * Consul session with behavior=delete). The backend keeps it alive until `revoke`.
 */
export interface Lease {
  readonly id: string;
  readonly ttlSeconds: number;
  /** Fires if the backend learns the lease is gone (expired while partitioned). */
  onLost(listener: () => void): void;
  revoke(): Promise<void>;
}

export interface PutOptions {
  lease?: Lease;
}

export interface Store {
  /** Human-readable backend description without secrets, e.g. `etcd://127.0.0.1:2379`. */
  readonly description: string;
  /** True when other hosts may share this store (etcd, Consul). */
  readonly distributed: boolean;

  get(key: string): Promise<KVEntry | undefined>;
  /** Every entry whose key starts with `prefix`, sorted by key. */
  list(prefix: string): Promise<KVEntry[]>;
  /** Unconditional write; returns the new revision. */
  put(key: string, value: string, options?: PutOptions): Promise<number>;
  /** Write only if the key does not exist. Returns the new revision, or undefined if it existed. */
  create(key: string, value: string, options?: PutOptions): Promise<number | undefined>;
  /** Write only if the key's current revision equals `revision`. Returns the new revision or undefined. */
  compareAndSet(key: string, value: string, revision: number, options?: PutOptions): Promise<number | undefined>;
  /** Delete; deleting a missing key is not an error. */
  delete(key: string): Promise<void>;
  /** Delete only if the key's current revision equals `revision`; true if deleted. */
  compareAndDelete(key: string, revision: number): Promise<boolean>;
  /** Delete every key starting with `prefix`. */
  deletePrefix(prefix: string): Promise<void>;
  watch(prefix: string, listener: WatchListener): Watch;
  grantLease(ttlSeconds: number): Promise<Lease>;
  close(): Promise<void>;
}

/** Thrown when the backend cannot be reached within its deadline; the message says which backend. */
export class StoreUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreUnavailableError';
  }
}
