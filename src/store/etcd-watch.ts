/**
 * An etcd watch: a paginated range read at one revision → onReset, then a watch from
 * revision+1; on any stream error, disconnect or compaction the watch is dropped and the cycle
 * repeats (re-list → onReset), with backoff.
 */

import type { IWatchResponse, Watcher } from 'etcd3';

import type { Logger } from '../log';
import type { EtcdStore } from './etcd';
import { StoreUnavailableError, type Watch, type WatchEvent } from './store';
import { Backoff, type SafeListener, sleep, toError, withDeadline } from './util';

export class EtcdWatch implements Watch {
  private readonly abort = new AbortController();
  private readonly done: Promise<void>;

  constructor(
    private readonly store: EtcdStore,
    private readonly relPrefix: string,
    private readonly listener: SafeListener,
    private readonly logger: Logger,
  ) {
    this.done = this.run();
  }

  async close(): Promise<void> {
    this.abort.abort();
    await withDeadline(this.done, this.store.timeoutMs, () => 'closing etcd watch').catch(() => undefined);
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    const backoff = new Backoff(100, 5000);
    const full = this.store.prefix + this.relPrefix;
    while (!signal.aborted) {
      let watcher: Watcher | undefined;
      try {
        const revision = await this.resetFromRange();
        if (revision === undefined) break;

        watcher = this.store.client
          .watch()
          .prefix(full)
          .startRevision(String(revision + 1))
          .watcher();
        const w = watcher;
        const ended = new Promise<Error | undefined>((resolve) => {
          w.on('data', (res) => this.deliver(res));
          w.on('disconnected', (err) => resolve(toError(err ?? new Error('watch stream disconnected'))));
          w.on('error', (err) => resolve(toError(err)));
          signal.addEventListener('abort', () => resolve(undefined), { once: true });
        });
        const connected = new Promise<'connected'>((resolve) => w.once('connected', () => resolve('connected')));
        const first = await Promise.race([
          connected,
          ended,
          sleep(this.store.timeoutMs).then(() => 'timeout' as const),
        ]);
        if (first === 'timeout') {
          throw new StoreUnavailableError(`${this.store.description}: watch ${full} not established within ${this.store.timeoutMs} ms`);
        }
        if (first === 'connected') {
          backoff.reset();
          const reason = await ended;
          if (reason === undefined) break; // closed
          throw reason;
        }
        if (first !== undefined) throw first;
        break; // closed before connecting
      } catch (err) {
        if (signal.aborted) break;
        const e = toError(err);
        this.logger.warn('etcd watch interrupted; will re-list', { store: this.store.description, prefix: full, error: e.message });
        this.listener.error(e);
        await this.cancel(watcher);
        await sleep(backoff.next(), signal);
        continue;
      } finally {
        if (signal.aborted) await this.cancel(watcher);
      }
    }
  }

  /**
   * The full state to the listener; returns the revision it is current at (undefined: closed
   * meanwhile). A function of its own so that the listing is garbage once delivered: held in
   * run()'s frame it would stay alive, every record of the prefix, for as long as the watch.
   */
  private async resetFromRange(): Promise<number | undefined> {
    const { entries, revision } = await this.store.rangeAll(this.relPrefix);
    if (this.abort.signal.aborted) return undefined;
    this.listener.reset(entries, revision);
    return revision;
  }

  private async cancel(watcher: Watcher | undefined): Promise<void> {
    if (!watcher) return;
    watcher.removeAllListeners('data');
    await withDeadline(watcher.cancel(), 1000, () => 'cancel etcd watcher').catch(() => undefined);
  }

  private deliver(res: IWatchResponse): void {
    if (this.abort.signal.aborted) return;
    const events: WatchEvent[] = [];
    for (const ev of res.events) {
      const key = this.store.relKey(ev.kv.key);
      if (key === undefined) continue;
      const revision = Number(ev.kv.mod_revision);
      if (ev.type === 'Put') events.push({ type: 'put', key, value: ev.kv.value.toString('utf8'), revision });
      else events.push({ type: 'delete', key, revision });
    }
    this.listener.events(events);
  }
}
