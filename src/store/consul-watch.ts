/**
 * A Consul watch: index-driven blocking queries on one prefix (`recurse`, `index`, `wait`).
 * Consul answers a blocking query on a prefix with the whole prefix, so consecutive results are
 * diffed into events: a watch costs, per change under its prefix, one read of that prefix.
 * Callers keep prefixes narrow (peer distribution watches one network's endpoints, not all).
 * A first result, an index that goes backwards or is 0, or any error restarts from index 0
 * and delivers onReset.
 */

import type { Logger } from '../log';
import { makeContext, splitResponse, type ResponseContext } from './consul-api';
import type { ConsulStore } from './consul';
import type { KVEntry, Watch, WatchEvent } from './store';
import { Backoff, type SafeListener, sleep, toError } from './util';

export class ConsulWatch implements Watch {
  private readonly abort = new AbortController();
  private ctx: ResponseContext | undefined;
  private readonly done: Promise<void>;

  constructor(
    private readonly store: ConsulStore,
    private readonly relPrefix: string,
    private readonly listener: SafeListener,
    private readonly logger: Logger,
  ) {
    this.done = this.run();
  }

  async close(): Promise<void> {
    this.abort.abort();
    this.ctx?.emit('cancel');
    await this.done;
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    const backoff = new Backoff(100, 5000);
    const full = this.store.prefix + this.relPrefix;
    const waitMs = this.store.watchWaitSeconds * 1000;
    let index = 0;
    let previous: Map<string, KVEntry> | undefined;
    let lastQuery = 0;
    while (!signal.aborted) {
      // Never hammer Consul if it answers immediately without progress.
      const since = Date.now() - lastQuery;
      if (since < 50) await sleep(50 - since, signal);
      if (signal.aborted) break;
      lastQuery = Date.now();
      try {
        const ctx = makeContext();
        this.ctx = ctx;
        const blocking = index > 0 && previous !== undefined;
        const result = await this.store.calls.request(
          `watch ${this.relPrefix || '(all)'}`,
          (api, o) =>
            api.kv.get({
              key: full,
              recurse: true,
              ...o,
              ctx,
              // A listing is consistent (consul.ts says why); later answers only move forward from its index.
              ...(blocking ? { index: String(index), wait: `${this.store.watchWaitSeconds}s` } : { consistent: true }),
            }),
          blocking ? waitMs + waitMs / 16 + this.store.timeoutMs : this.store.timeoutMs,
        );
        if (signal.aborted) break;
        const split = splitResponse(result);
        const entries = this.store.toEntries(split.body);
        let newIndex = split.index ?? 0;
        // A pristine KV table answers index 0: list it, then block on index 1 (Consul's advice)
        // instead of polling with index 0.
        if (previous === undefined && newIndex <= 0) newIndex = 1;
        if (newIndex <= 0 || newIndex < index) {
          // Index reset (snapshot restore, new cluster…): start over and deliver full state.
          this.logger.info('consul watch index reset; re-listing', {
            store: this.store.description,
            prefix: full,
            from: index,
            to: newIndex,
          });
          index = 0;
          previous = undefined;
          continue;
        }
        backoff.reset();
        const current = new Map(entries.map((e) => [e.key, e]));
        if (previous === undefined) {
          let revision = newIndex;
          for (const e of entries) if (e.revision > revision) revision = e.revision;
          this.listener.reset(entries, revision);
        } else if (newIndex !== index) {
          this.listener.events(diff(previous, current, newIndex));
        }
        previous = current;
        index = newIndex;
      } catch (err) {
        if (signal.aborted) break;
        const e = toError(err);
        this.logger.warn('consul watch interrupted; will re-list', { store: this.store.description, prefix: full, error: e.message });
        this.listener.error(e);
        index = 0;
        previous = undefined;
        await sleep(backoff.next(), signal);
      }
    }
  }
}

/** Events turning `before` into `after`, in index order (deletes carry the response index). */
function diff(before: Map<string, KVEntry>, after: Map<string, KVEntry>, index: number): WatchEvent[] {
  const events: WatchEvent[] = [];
  for (const [key, e] of after) {
    const old = before.get(key);
    if (!old || old.revision !== e.revision || old.value !== e.value) {
      events.push({ type: 'put', key, value: e.value, revision: e.revision });
    }
  }
  for (const key of before.keys()) {
    if (!after.has(key)) events.push({ type: 'delete', key, revision: index });
  }
  return events.sort((a, b) => a.revision - b.revision || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}
