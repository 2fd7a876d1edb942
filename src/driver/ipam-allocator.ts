/**
 * Dynamic allocation without listing the pool per request: each host keeps a view of the pool
 * (listed once, then kept by its own writes and by what its creates learn), picks from blocks it
 * claimed (ipam-blocks.ts), and lets create-if-absent of the address key decide. Requests of one
 * host run in parallel; only two asks with the same request id or container name wait for each
 * other, so that the second finds the first's address.
 */

import type { Logger } from '../log';
import { PluginError } from '../util/errors';
import { KeyedMutex } from '../util/keyed-mutex';
import { PoolView, type AskedBy } from './ipam-blocks';
import { nowIso, type RecordStore } from './record-store';
import { addressRecordSchema, blockRecordSchema, decodeRecord, keys, type AddressRecord } from './records';
import { contains, intToIp, ipToInt, isIPv4, type Subnet } from './subnet';

/** How often a host that has no block left to claim re-lists the pool to find what others freed. */
const BORROW_RELIST_MS = 1_000;
const MAX_ATTEMPTS = 64;

interface ViewState {
  view: PoolView;
  sKey: string;
  /** Who claims blocks and holds the addresses: this host, or the swarm allocator. */
  owner: string;
  /** Set when a write's outcome is unknown: the next request lists the pool again. */
  stale: boolean;
  listedAt: number;
  loading?: Promise<void>;
  claiming?: Promise<boolean>;
}

export class PoolAllocator {
  private readonly views = new Map<string, ViewState>();
  private readonly sameAsk = new KeyedMutex();

  constructor(
    private readonly hostName: string,
    private readonly logger: Logger,
  ) {}

  /**
   * An address of `range` for `record` (held by `owner`): the one this host already holds for
   * the same request id or container name (`again`), or a new one.
   */
  async allocate(
    records: RecordStore,
    sKey: string,
    range: Subnet,
    owner: string,
    record: AddressRecord,
    by: AskedBy,
  ): Promise<{ ip: string; again: boolean }> {
    const state = this.state(sKey, range, owner);
    const identity = by.requestId ?? by.name;
    const work = () => this.allocateIn(records, state, record, by);
    return identity === undefined ? work() : this.sameAsk.run(`${sKey}|${range.cidr}|${identity}`, work);
  }

  /** An address of the subnet was taken by this host outside allocate (an explicit address, the gateway). */
  noteCreated(sKey: string, ip: string, record: AddressRecord): void {
    for (const s of this.viewsOf(sKey, ip)) s.view.created(ipToInt(ip), record);
  }

  /** This host freed an address of the subnet. */
  noteReleased(sKey: string, ip: string): void {
    for (const s of this.viewsOf(sKey, ip)) s.view.released(ipToInt(ip));
  }

  /** The pool went (or this host let go of it): its views are dropped. */
  forget(sKey: string): void {
    for (const [key, s] of this.views) if (s.sKey === sKey) this.views.delete(key);
  }

  /** This host's block claims on the subnet are given up (it no longer holds the pool). */
  async releaseBlocks(records: RecordStore, sKey: string, owner: string): Promise<void> {
    this.forget(sKey);
    for (const b of await records.list(blockRecordSchema, keys.blocks(sKey))) {
      if (b.value.host === owner) await records.store.compareAndDelete(b.key, b.revision);
    }
  }

  private async allocateIn(records: RecordStore, state: ViewState, record: AddressRecord, by: AskedBy): Promise<{ ip: string; again: boolean }> {
    const { view, sKey } = state;
    await this.ensureLoaded(records, state);
    const again = view.heldFor(by);
    if (again !== undefined) return { ip: intToIp(again), again: true };
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      let n = view.pickOwn();
      if (n === undefined) {
        if (await this.claimBlock(records, state)) continue;
        // Every block is claimed: borrow a free address from any of them.
        if (performance.now() - state.listedAt > BORROW_RELIST_MS) await this.load(records, state);
        n = view.pickAny();
        if (n === undefined) throw new PluginError(`no free address left in ${view.range.cidr}`, 409);
      }
      let created: boolean;
      try {
        created = await records.create(keys.address(sKey, intToIp(n)), record);
      } catch (err) {
        view.abandoned(n);
        state.stale = true;
        throw err;
      }
      if (created) {
        view.created(n, record);
        return { ip: intToIp(n), again: false };
      }
      view.foundTaken(n);
    }
    throw new PluginError(`could not allocate an address in ${view.range.cidr}: too much contention, try again`, 503);
  }

  private state(sKey: string, range: Subnet, owner: string): ViewState {
    const key = `${sKey}|${range.cidr}|${owner}`;
    let s = this.views.get(key);
    if (!s) {
      s = { view: new PoolView(range, owner, this.hostName), sKey, owner, stale: true, listedAt: 0 };
      this.views.set(key, s);
    }
    return s;
  }

  private viewsOf(sKey: string, ip: string): ViewState[] {
    return [...this.views.values()].filter((s) => s.sKey === sKey && contains(s.view.range, ip));
  }

  private async ensureLoaded(records: RecordStore, state: ViewState): Promise<void> {
    if (state.stale) await this.load(records, state);
  }

  /** Lists the pool's addresses and blocks into the view (one listing at a time per view). */
  private load(records: RecordStore, state: ViewState): Promise<void> {
    state.loading ??= (async () => {
      try {
        const started = performance.now();
        const entries = await records.store.list(keys.addresses(state.sKey));
        const blocks = await records.list(blockRecordSchema, keys.blocks(state.sKey));
        const addresses: { ip: number; record: AddressRecord | undefined }[] = [];
        for (const e of entries) {
          const ip = keys.addressOf(state.sKey, e.key);
          if (ip === undefined || !isIPv4(ip) || !contains(state.view.range, ip)) continue;
          let record: AddressRecord | undefined;
          try {
            record = decodeRecord(addressRecordSchema, e.value, e.key);
          } catch {
            // a record edited by hand: its address is taken all the same
          }
          addresses.push({ ip: ipToInt(ip), record });
        }
        const claimed = blocks.flatMap((b) => {
          const ip = keys.blockOf(state.sKey, b.key);
          return ip !== undefined && isIPv4(ip) ? [{ start: ipToInt(ip), owner: b.value.host }] : [];
        });
        state.view.load(addresses, claimed);
        state.stale = false;
        state.listedAt = performance.now();
        this.logger.debug('address pool listed', { pool: state.view.range.cidr, addresses: addresses.length, blocks: claimed.length, ms: Math.round(state.listedAt - started) });
      } finally {
        state.loading = undefined;
      }
    })();
    return state.loading;
  }

  /**
   * Claims the next unclaimed block for this host (one claim at a time per view; concurrent
   * requests share its outcome). False when every block is claimed.
   */
  private claimBlock(records: RecordStore, state: ViewState): Promise<boolean> {
    state.claiming ??= (async () => {
      try {
        const { view, sKey } = state;
        const listed = await records.list(blockRecordSchema, keys.blocks(sKey));
        view.loadBlocks(
          listed.flatMap((b) => {
            const ip = keys.blockOf(sKey, b.key);
            return ip !== undefined && isIPv4(ip) ? [{ start: ipToInt(ip), owner: b.value.host }] : [];
          }),
        );
        const owner = state.owner;
        for (const start of view.unclaimedBlocks()) {
          const won = await records.create(keys.block(sKey, intToIp(start)), { host: owner, created: nowIso() });
          view.blockClaimed(start, won);
          if (won) {
            this.logger.debug('address block claimed', { pool: view.range.cidr, block: intToIp(start) });
            return true;
          }
        }
        return false;
      } finally {
        state.claiming = undefined;
      }
    })();
    return state.claiming;
  }
}
