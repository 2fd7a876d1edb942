/**
 * IPAM's address blocks and this host's view of one pool (pure: no store access here; the
 * allocator in ipam-allocator.ts feeds it).
 *
 * A pool's range is cut into aligned blocks. A host claims blocks (a create-if-absent of
 * `ipam/blocks/<subnet>/<first ip>`, as Calico's block affinity does) and hands out addresses
 * from its own blocks first, so hosts allocating at once on one subnet do not race for the same
 * addresses. A block is a hint, never the arbiter: every address is still taken by
 * create-if-absent of its own key, so a stale view, a block claimed twice or a host that
 * borrows from another's block costs a retry, never a duplicate.
 */

import type { AddressRecord } from './records';
import { hostRange, type Subnet } from './subnet';

/** At most this many addresses per block: a host claims a new block once per this many allocations. */
export const MAX_BLOCK_BITS = 6;

/** Block size as a power of two: at least four blocks per range, at most 2^MAX_BLOCK_BITS addresses each. */
export function blockBits(range: Subnet): number {
  return Math.max(0, Math.min(MAX_BLOCK_BITS, 32 - range.prefixLength - 2));
}

/** The first address of each block of the range, in address order (the block's name). */
export function blockStarts(range: Subnet): number[] {
  const size = 2 ** blockBits(range);
  const { first, last } = hostRange(range);
  const starts: number[] = [];
  for (let b = range.network; b <= last; b += size) if (b + size - 1 >= first) starts.push(b);
  return starts;
}

/** The first address of the block holding `n`. */
export function blockOf(range: Subnet, n: number): number {
  const size = 2 ** blockBits(range);
  return range.network + Math.floor((n - range.network) / size) * size;
}

/** What identifies an allocation's request: a replay of it gets the same address. */
export interface AskedBy {
  name?: string | undefined;
  requestId?: string | undefined;
}

/**
 * This host's picture of one pool range: which addresses are taken (as last listed, plus what
 * this host did and learnt since), which of them this host holds for which request, which blocks
 * are whose, and the addresses being created right now (picked, not yet answered).
 */
export class PoolView {
  private readonly taken = new Set<number>();
  private readonly pending = new Set<number>();
  /** This host's endpoint addresses, by request id and by container name. */
  private readonly byRequest = new Map<string, number>();
  private readonly byName = new Map<string, number>();
  /** The request id and name each of those addresses is held for. */
  private readonly asked = new Map<number, AskedBy>();
  /** Blocks claimed by this host, in address order, and by anyone (this host included). */
  private mine: number[] = [];
  private readonly claimed = new Set<number>();
  /** Own blocks found full: skipped until an address in them is freed. */
  private readonly full = new Set<number>();
  private readonly first: number;
  private readonly last: number;
  private readonly size: number;

  constructor(
    readonly range: Subnet,
    /** Who claims blocks: this host, or the swarm allocator. */
    private readonly owner: string,
    /** This host's name: its own records are the ones a request may be replayed against. */
    private readonly holder: string = owner,
  ) {
    ({ first: this.first, last: this.last } = hostRange(range));
    this.size = 2 ** blockBits(range);
  }

  /** Replaces what is known of the pool with a listing: taken addresses and this host's holders. */
  load(addresses: Iterable<{ ip: number; record: AddressRecord | undefined }>, blocks: Iterable<{ start: number; owner: string }>): void {
    this.taken.clear();
    this.byRequest.clear();
    this.byName.clear();
    this.asked.clear();
    this.full.clear();
    for (const a of addresses) {
      this.taken.add(a.ip);
      if (a.record) this.noteHolder(a.ip, a.record);
    }
    this.loadBlocks(blocks);
  }

  /** Replaces the block claims with a fresh listing of them. */
  loadBlocks(blocks: Iterable<{ start: number; owner: string }>): void {
    this.claimed.clear();
    const mine: number[] = [];
    for (const b of blocks) {
      this.claimed.add(b.start);
      if (b.owner === this.owner) mine.push(b.start);
    }
    this.mine = mine.sort((a, b) => a - b);
  }

  /** The address this host already holds for the same request or container, if any. */
  heldFor(by: AskedBy): number | undefined {
    const ip = (by.requestId !== undefined ? this.byRequest.get(by.requestId) : undefined) ?? (by.name !== undefined ? this.byName.get(by.name) : undefined);
    return ip !== undefined && this.taken.has(ip) ? ip : undefined;
  }

  /**
   * The lowest free address of this host's blocks, marked pending; undefined when they are full
   * (claim a block, or borrow).
   */
  pickOwn(): number | undefined {
    for (const start of this.mine) {
      if (this.full.has(start)) continue;
      const n = this.freeIn(start, start + this.size - 1);
      if (n !== undefined) return this.reserve(n);
      this.full.add(start);
    }
    return undefined;
  }

  /** The lowest free address anywhere in the range (another host's block included), marked pending. */
  pickAny(): number | undefined {
    const n = this.freeIn(this.first, this.last);
    return n === undefined ? undefined : this.reserve(n);
  }

  /** Unclaimed blocks in address order, those with a free address first (a claim to try next). */
  unclaimedBlocks(): number[] {
    const free: number[] = [];
    const used: number[] = [];
    for (const start of blockStarts(this.range)) {
      if (this.claimed.has(start)) continue;
      (this.freeIn(start, start + this.size - 1) !== undefined ? free : used).push(start);
    }
    return [...free, ...used];
  }

  /** Someone holds the block (a claim this host lost, or made). */
  blockClaimed(start: number, byMe: boolean): void {
    this.claimed.add(start);
    if (byMe && !this.mine.includes(start)) this.mine = [...this.mine, start].sort((a, b) => a - b);
  }

  /** The create of a picked address succeeded: it is held, by `record`. */
  created(ip: number, record: AddressRecord): void {
    this.pending.delete(ip);
    this.taken.add(ip);
    this.noteHolder(ip, record);
  }

  /** The create found the address taken (by a host this view had not heard of): never picked again. */
  foundTaken(ip: number): void {
    this.pending.delete(ip);
    this.taken.add(ip);
  }

  /** The create's outcome is unknown or it was not made: the address may be picked again. */
  abandoned(ip: number): void {
    this.pending.delete(ip);
  }

  /** This host freed the address. */
  released(ip: number): void {
    this.taken.delete(ip);
    this.full.delete(blockOf(this.range, ip));
    const by = this.asked.get(ip);
    if (!by) return;
    this.asked.delete(ip);
    if (by.requestId !== undefined && this.byRequest.get(by.requestId) === ip) this.byRequest.delete(by.requestId);
    if (by.name !== undefined && this.byName.get(by.name) === ip) this.byName.delete(by.name);
  }

  private noteHolder(ip: number, record: AddressRecord): void {
    if (record.host !== this.holder || record.kind !== 'endpoint') return;
    if (record.request !== undefined) this.byRequest.set(record.request, ip);
    if (record.name !== undefined) this.byName.set(record.name, ip);
    this.asked.set(ip, { requestId: record.request, name: record.name });
  }

  private freeIn(from: number, to: number): number | undefined {
    const lo = Math.max(from, this.first);
    const hi = Math.min(to, this.last);
    for (let n = lo; n <= hi; n++) if (!this.taken.has(n) && !this.pending.has(n)) return n;
    return undefined;
  }

  private reserve(n: number): number {
    this.pending.add(n);
    return n;
  }
}
