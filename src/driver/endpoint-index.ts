/**
 * Which endpoint records are this host's, kept beside them under `hostendpoints/<host>/`, so
 * that a restart and a released address read this host's few records by key, not every endpoint
 * of its networks (a restart) or of the cluster (a released address).
 *
 * What makes it safe to trust: CreateEndpoint writes the entry together with the record and
 * fails (removing the record) when the entry was not written, so every endpoint Docker was told
 * exists, and so every joined one, is indexed; DeleteEndpoint removes the entry after the record.
 * An entry whose record is gone (a network deleted whole, a crash between the two deletes) is
 * dropped at the next start-up. A cluster written before the index existed has records without
 * entries: until this host has scanned its networks once and indexed what it found
 * (`hostendpoints-indexed/<host>`), the index is not used.
 */
import type { Logger } from '../log';
import { StoreUnavailableError } from '../store/store';
import { errorMessage } from '../util/errors';
import { nowIso, type RecordStore, type Versioned } from './record-store';
import { endpointRecordSchema, keys, type EndpointRecord } from './records';

/** Records read at once when following the index. */
const READ_CONCURRENCY = 16;

export class HostEndpointIndex {
  constructor(
    private readonly records: RecordStore,
    private readonly host: string,
    private readonly logger: Logger,
  ) {}

  add(networkKey: string, endpointId: string): Promise<void> {
    return this.records.put(keys.hostEndpoint(this.host, networkKey, endpointId), { created: nowIso() });
  }

  remove(networkKey: string, endpointId: string): Promise<void> {
    return this.records.delete(keys.hostEndpoint(this.host, networkKey, endpointId));
  }

  /**
   * This host's endpoint records, read through the index; undefined while the index is not known
   * to be complete. `dropDangling`: entries whose record is gone are deleted, which is safe only
   * when no CreateEndpoint can be between its two writes (start-up, before requests are served).
   */
  async endpoints(options: { dropDangling: boolean }): Promise<Versioned<EndpointRecord>[] | undefined> {
    if (!(await this.records.store.get(keys.hostEndpointsIndexed(this.host)))) return undefined;
    const entries = (await this.records.keysUnder(keys.hostEndpoints(this.host))).flatMap((key) => {
      const parsed = keys.parseHostEndpoint(this.host, key);
      return parsed ? [{ key, ...parsed }] : [];
    });
    const out: Versioned<EndpointRecord>[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(READ_CONCURRENCY, entries.length) }, async () => {
        while (next < entries.length) {
          const e = entries[next++]!;
          let ep: Versioned<EndpointRecord> | undefined;
          try {
            ep = await this.records.get(endpointRecordSchema, keys.endpoint(e.networkKey, e.endpointId));
          } catch (err) {
            if (err instanceof StoreUnavailableError) throw err;
            // A malformed record: skipped, as a listing skips it; its entry stays.
            this.logger.warn('ignoring malformed endpoint record', { networkKey: e.networkKey, endpointId: e.endpointId, error: errorMessage(err) });
            continue;
          }
          if (ep && ep.value.host === this.host) {
            out.push(ep);
          } else if (options.dropDangling) {
            await this.records.delete(e.key);
          }
        }
      }),
    );
    return out;
  }

  /** A full scan found `mine`, every endpoint record of this host: index them, then trust the index. */
  async indexed(mine: readonly Versioned<EndpointRecord>[]): Promise<void> {
    for (const ep of mine) {
      const parsed = keys.parseEndpoint(ep.key);
      if (parsed) await this.add(parsed.networkKey, parsed.endpointId);
    }
    await this.records.put(keys.hostEndpointsIndexed(this.host), { since: nowIso() });
    this.logger.info('endpoint index of this host complete', { endpoints: mine.length });
  }
}
