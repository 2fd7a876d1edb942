/**
 * A small rtnetlink client on top of node-netlink's RawNetlinkSocket.
 *
 * node-netlink's object API (RtNetlinkSocket) encodes each request through generic attribute
 * streams, waits for each ACK, and turns kernel errors into message strings. The dataplane needs
 * errno values (ENOENT on delete is success), dumps that span many datagrams, and, for peers,
 * thousands of pre-encoded messages packed into few datagrams. So requests are framed here, and
 * node-netlink is used for its native socket and its link/address structure codecs.
 */
import { EventEmitter } from 'node:events';
import { constants as osConstants, endianness } from 'node:os';
import { Protocol, RawNetlinkSocket } from 'netlink';
import { NLMSG_HDRLEN, nlmsgAlign } from './encode';

if (endianness() !== 'LE') throw new Error('tsoverlay dataplane: only little-endian hosts are supported');

export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_ROOT = 0x100;
export const NLM_F_MATCH = 0x200;
export const NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH;
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;

/** rtnetlink multicast group of neighbour events (and of vxlan L2/L3 miss notifications). */
export const RTNLGRP_NEIGH = 3;

const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([n, v]) => [v, n]));

/** A request the kernel refused; `errno` is positive, `code` its name (ENOENT, EEXIST, …). */
export class NetlinkError extends Error {
  readonly errno: number;
  readonly code: string;
  constructor(errno: number, what: string) {
    const code = errnoNames.get(errno) ?? `E${errno}`;
    super(`netlink ${what}: ${code}`);
    this.name = 'NetlinkError';
    this.errno = errno;
    this.code = code;
  }
}

export function isNetlinkError(e: unknown, ...codes: string[]): e is NetlinkError {
  return e instanceof NetlinkError && (codes.length === 0 || codes.includes(e.code));
}

/** One message received from the kernel: its type, flags and payload (after the 16-byte header). */
export interface NlMessage {
  type: number;
  flags: number;
  data: Buffer;
}

interface Pending {
  what: string;
  parts: NlMessage[];
  interrupted: boolean;
  resolve: (msgs: NlMessage[]) => void;
  reject: (e: Error) => void;
}

interface BatchGroup {
  first: number;
  last: number;
  baseIndex: number;
  errors: Map<number, number>;
  resolve: () => void;
  reject: (e: Error) => void;
}

export interface BatchOptions {
  /** errno codes that count as success (e.g. ENOENT for deletes). */
  ignore?: string[];
  /** Messages per datagram. */
  perDatagram?: number;
  /** Datagrams awaiting their final ACK at once. */
  window?: number;
}

export interface BatchResult {
  /** Index in the batch → the error the kernel returned for it (ignored codes left out). */
  errors: Map<number, NetlinkError>;
}

/** An rtnetlink socket bound to the network namespace it was created in. */
export class NlSocket extends EventEmitter {
  private readonly raw: RawNetlinkSocket;
  private seq = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly groups = new Map<number, BatchGroup>();
  private closed = false;
  private refs = 0;
  private dumps: Promise<void> = Promise.resolve();

  /**
   * @param groups rtnetlink multicast groups to join (e.g. RTNLGRP_NEIGH): unsolicited messages
   * are emitted as 'notification'. A receive-buffer overrun (messages lost) is emitted as 'overrun'
   * and fails the requests in flight, whose replies may be among the lost.
   * @param protocol netlink family: rtnetlink unless told (XFRM for IPsec, see xfrm.ts).
   */
  constructor(opts: { groups?: number[]; protocol?: Protocol } = {}) {
    super();
    // 4 MiB (capped by net.core.rmem_max): replies to a window of batched messages must fit.
    this.raw = new RawNetlinkSocket(opts.protocol ?? Protocol.ROUTE, { recvBufferSize: 4 << 20, sendBufferSize: 4 << 20 });
    this.raw.on('message', (buf) => this.receive(buf));
    this.raw.on('error', (err) => {
      this.failAll(err);
      this.emit('overrun', err);
    });
    for (const g of opts.groups ?? []) this.raw.addMembership(g);
    this.raw.unref();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.failAll(new Error('netlink socket closed'));
    this.raw.close();
  }

  private nextSeq(): number {
    const s = this.seq;
    this.seq = this.seq >= 0x7fffffff ? 1 : this.seq + 1;
    return s;
  }

  private hold(): void {
    if (this.refs++ === 0) this.raw.ref();
  }

  private release(): void {
    if (--this.refs === 0 && !this.closed) this.raw.unref();
  }

  private failAll(err: Error): void {
    const ps = [...this.pending.values()];
    const gs = [...this.groups.values()];
    this.pending.clear();
    this.groups.clear();
    for (const p of ps) p.reject(err);
    for (const g of gs) g.reject(err);
  }

  /**
   * Sends one request (payload = everything after the netlink header) with ACK and resolves with
   * the reply messages: none for a plain ACK, all parts for a dump. Rejects with NetlinkError.
   */
  request(type: number, flags: number, payload: Buffer, what = `type ${type}`): Promise<NlMessage[]> {
    if (this.closed) return Promise.reject(new Error('netlink socket closed'));
    const seq = this.nextSeq();
    const hdr = Buffer.alloc(NLMSG_HDRLEN);
    hdr.writeUInt32LE(NLMSG_HDRLEN + payload.length, 0);
    hdr.writeUInt16LE(type, 4);
    hdr.writeUInt16LE(flags | NLM_F_REQUEST | NLM_F_ACK, 6);
    hdr.writeUInt32LE(seq, 8);
    return new Promise<NlMessage[]>((resolve, reject) => {
      this.hold();
      this.pending.set(seq, {
        what,
        parts: [],
        interrupted: false,
        resolve: (m) => {
          this.release();
          resolve(m);
        },
        reject: (e) => {
          this.release();
          reject(e);
        },
      });
      this.raw.send([hdr, payload], undefined, (err) => {
        if (err && this.pending.has(seq)) {
          const p = this.pending.get(seq)!;
          this.pending.delete(seq);
          p.reject(err);
        }
      });
    });
  }

  /**
   * A dump request, repeated (a few times) when the kernel flags it as interrupted by concurrent
   * changes. A socket runs one dump at a time (the kernel answers EBUSY otherwise): dumps queue.
   */
  dump(type: number, payload: Buffer, what = `dump ${type}`): Promise<NlMessage[]> {
    const run = async (): Promise<NlMessage[]> => {
      for (let attempt = 0; ; attempt++) {
        const msgs = await this.request(type, NLM_F_DUMP, payload, what);
        const interrupted = msgs.some((m) => (m.flags & NLM_F_DUMP_INTR) !== 0);
        if (!interrupted || attempt >= 4) return msgs;
      }
    };
    const result = this.dumps.then(run, run);
    this.dumps = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /**
   * Sends many complete, pre-encoded messages, `perDatagram` to a datagram. Only the last message
   * of each datagram asks for an ACK: the kernel handles a datagram's messages in order, so once
   * that ACK arrives every earlier message is done, and those that failed have sent their error
   * first. The window bounds replies waiting in the receive buffer (an overflow would lose them).
   */
  async batch(items: Buffer[], what: string, opts: BatchOptions = {}): Promise<BatchResult> {
    const per = Math.max(1, opts.perDatagram ?? 256);
    const window = Math.max(1, opts.window ?? 4);
    const ignore = new Set(opts.ignore ?? []);
    const errors = new Map<number, NetlinkError>();
    if (items.length === 0) return { errors };
    if (this.closed) throw new Error('netlink socket closed');

    let next = 0;
    let inflight = 0;
    let failure: Error | undefined;
    this.hold();
    try {
      await new Promise<void>((resolveAll, rejectAll) => {
        const pump = (): void => {
          if (failure) {
            if (inflight === 0) rejectAll(failure);
            return;
          }
          while (inflight < window && next < items.length) {
            const start = next;
            const end = Math.min(items.length, start + per);
            next = end;
            // Keep a datagram's sequence numbers contiguous (no wrap inside it).
            if (this.seq + (end - start) >= 0x7fffffff) this.seq = 1;
            const bufs: Buffer[] = [];
            let first = 0;
            let last = 0;
            for (let i = start; i < end; i++) {
              const m = items[i]!;
              const seq = this.nextSeq();
              if (i === start) first = seq;
              last = seq;
              const flags = m.readUInt16LE(6) | NLM_F_REQUEST | (i === end - 1 ? NLM_F_ACK : 0);
              m.writeUInt16LE(flags, 6);
              m.writeUInt32LE(seq, 8);
              bufs.push(m);
            }
            const group: BatchGroup = {
              first,
              last,
              baseIndex: start,
              errors: new Map(),
              resolve: () => {
                inflight--;
                for (const [idx, errno] of group.errors) {
                  const e = new NetlinkError(errno, what);
                  if (!ignore.has(e.code)) errors.set(idx, e);
                }
                if (next >= items.length && inflight === 0 && !failure) resolveAll();
                else pump();
              },
              reject: (e) => {
                inflight--;
                failure = failure ?? e;
                pump();
              },
            };
            inflight++;
            this.groups.set(last, group);
            this.raw.send(joinContiguous(bufs), undefined, (err) => {
              if (err && this.groups.get(last) === group) {
                this.groups.delete(last);
                group.reject(err);
              }
            });
          }
        };
        pump();
      });
    } finally {
      this.release();
    }
    return { errors };
  }

  private groupFor(seq: number): BatchGroup | undefined {
    // Groups are few (window-sized); a linear scan is cheaper than a per-message map.
    for (const g of this.groups.values()) {
      if (seq >= g.first && seq <= g.last) return g;
    }
    return undefined;
  }

  private receive(buf: Buffer): void {
    let off = 0;
    while (off + NLMSG_HDRLEN <= buf.length) {
      const len = buf.readUInt32LE(off);
      if (len < NLMSG_HDRLEN || off + len > buf.length) break;
      const type = buf.readUInt16LE(off + 4);
      const flags = buf.readUInt16LE(off + 6);
      const seq = buf.readUInt32LE(off + 8);
      const data = buf.subarray(off + NLMSG_HDRLEN, off + len);
      off += nlmsgAlign(len);
      this.dispatch(type, flags, seq, data);
    }
  }

  private dispatch(type: number, flags: number, seq: number, data: Buffer): void {
    const p = this.pending.get(seq);
    if (p) {
      if (type === NLMSG_ERROR) {
        this.pending.delete(seq);
        const errno = -data.readInt32LE(0);
        if (errno === 0) p.resolve(p.parts);
        else p.reject(new NetlinkError(errno, p.what));
      } else if (type === NLMSG_DONE) {
        this.pending.delete(seq);
        const errno = data.length >= 4 ? -data.readInt32LE(0) : 0;
        if (errno > 0) p.reject(new NetlinkError(errno, p.what));
        else p.resolve(p.parts);
      } else {
        // Dump parts end with DONE; a single reply (flags without MULTI) is followed by its ACK.
        p.parts.push({ type, flags, data });
      }
      return;
    }
    if (type === NLMSG_ERROR && seq !== 0) {
      const g = this.groupFor(seq);
      if (g) {
        const errno = -data.readInt32LE(0);
        if (errno !== 0) g.errors.set(g.baseIndex + (seq - g.first), errno);
        if (seq === g.last) {
          this.groups.delete(g.last);
          g.resolve();
        }
        return;
      }
    }
    this.emit('notification', { type, flags, data } satisfies NlMessage);
  }
}

/** One buffer for a datagram: a view over the messages when they sit back to back in one slab, else a copy. */
function joinContiguous(bufs: Buffer[]): Buffer {
  const first = bufs[0]!;
  let end = first.byteOffset + first.length;
  let total = first.length;
  let contiguous = true;
  for (let i = 1; i < bufs.length; i++) {
    const b = bufs[i]!;
    if (b.buffer !== first.buffer || b.byteOffset !== end) contiguous = false;
    end = b.byteOffset + b.length;
    total += b.length;
  }
  return contiguous ? Buffer.from(first.buffer, first.byteOffset, total) : Buffer.concat(bufs, total);
}
