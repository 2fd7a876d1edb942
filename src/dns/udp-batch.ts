/**
 * Batched UDP for the DNS listeners: recvmmsg(2) and sendmmsg(2) on the listener's descriptor.
 *
 * Node reads and sends one datagram per system call and per call into JavaScript, and that
 * per-datagram cost, not the answer, is most of a reply's CPU. So when node hands the server a
 * datagram, the server also takes every datagram already queued on the socket with one
 * recvmmsg (never blocking: MSG_DONTWAIT) and sends their replies with one sendmmsg. An idle
 * server behaves as before; a loaded one pays node's cost once per batch. node 20's dgram has
 * neither call, hence libc's (src/util/libc.ts).
 *
 * The message headers point into one arena of fixed buffers, laid out once: a call writes only
 * lengths and payloads. The layout is `struct mmsghdr` of 64-bit Linux; elsewhere batching is
 * off and node does all the I/O.
 */
import * as koffi from 'koffi';
import { constants as osConstants } from 'node:os';
import { SyscallError, lastErrno, libcFunction, type LibcFunction } from '../util/libc';
import { UDP_MAX_SIZE } from './message';

/** Datagrams per system call. */
export const BATCH = 64;
/** Receive room per datagram: a bigger query (no DNS client sends one) is dropped, as MSG_TRUNC says. */
export const RECV_SLOT = 4096;
/** Room per reply: a UDP reply from the names never exceeds UDP_MAX_SIZE (a forwarded one is sent by node). */
const SEND_SLOT = UDP_MAX_SIZE;
/** sockaddr_in6, the larger address. */
const NAME_SLOT = 28;

// struct msghdr { void *name; socklen_t namelen; struct iovec *iov; size_t iovlen; void *control; size_t controllen; int flags; }
// followed in struct mmsghdr by `unsigned int msg_len`: 64 bytes in all on LP64.
const MMSG_SIZE = 64;
const OFF_NAME = 0;
const OFF_NAMELEN = 8;
const OFF_IOV = 16;
const OFF_IOVLEN = 24;
const OFF_FLAGS = 48;
const OFF_LEN = 56;
const IOV_SIZE = 16;
const MSG_DONTWAIT = 0x40;
const MSG_TRUNC = 0x20;

interface MmsgLib {
  recvmmsg: LibcFunction;
  sendmmsg: LibcFunction;
}

/** One direction's buffers: headers, iovecs, addresses, payloads, all in one Buffer. */
class Arena {
  readonly buf: Buffer;
  readonly headers: Buffer;
  readonly names: Buffer;
  readonly data: Buffer;

  constructor(readonly slot: number) {
    const namesAt = BATCH * MMSG_SIZE;
    const iovAt = namesAt + BATCH * NAME_SLOT;
    const dataAt = iovAt + BATCH * IOV_SIZE;
    // Its own allocation (not node's pool): the addresses written below stay valid for its life.
    this.buf = Buffer.allocUnsafeSlow(dataAt + BATCH * slot).fill(0, 0, dataAt);
    this.headers = this.buf.subarray(0, namesAt);
    this.names = this.buf.subarray(namesAt, iovAt);
    this.data = this.buf.subarray(dataAt);
    const base = koffi.address(this.buf) as bigint;
    for (let i = 0; i < BATCH; i++) {
      const h = i * MMSG_SIZE;
      this.buf.writeBigUInt64LE(base + BigInt(namesAt + i * NAME_SLOT), h + OFF_NAME);
      this.buf.writeBigUInt64LE(base + BigInt(iovAt + i * IOV_SIZE), h + OFF_IOV);
      this.buf.writeBigUInt64LE(1n, h + OFF_IOVLEN);
      this.buf.writeBigUInt64LE(base + BigInt(dataAt + i * slot), iovAt + i * IOV_SIZE);
      this.buf.writeBigUInt64LE(BigInt(slot), iovAt + i * IOV_SIZE + 8);
    }
  }

  setLength(i: number, length: number): void {
    // The iovec's size_t length: the high half stays 0 (lengths are below 2^32).
    this.buf.writeUInt32LE(length, BATCH * MMSG_SIZE + BATCH * NAME_SLOT + i * IOV_SIZE + 8);
  }
}

let lib: MmsgLib | null | undefined;
let recvArena: Arena | undefined;
let sendArena: Arena | undefined;

function mmsg(): MmsgLib | null {
  if (lib !== undefined) return lib;
  if (process.platform !== 'linux' || (process.arch !== 'x64' && process.arch !== 'arm64')) return (lib = null);
  lib = {
    recvmmsg: libcFunction('int recvmmsg(int fd, void *msgvec, unsigned int vlen, int flags, void *timeout)'),
    sendmmsg: libcFunction('int sendmmsg(int fd, void *msgvec, unsigned int vlen, int flags)'),
  };
  return lib;
}

const EAGAIN = osConstants.errno.EAGAIN;

/** Whether this platform batches (elsewhere the server keeps node's own I/O). */
export function batchingAvailable(): boolean {
  return mmsg() !== null;
}

/** A received datagram: its bytes (valid until the next receive) and its sender's address (likewise). */
export interface Received {
  /** A view into the arena: copy it to keep it past the batch. */
  msg: Buffer;
  /** Index of the sender's address in the batch, to answer it (`Batch.reply`). */
  from: number;
  /** Set when the datagram was bigger than the receive room. */
  truncated: boolean;
}

/**
 * The queued datagrams of `fd`, at most BATCH. Empty when none is queued; throws (with
 * `code`) on another error. Each call reuses the same buffers: a batch is handled, its replies
 * sent, before the next receive.
 */
export function receiveBatch(fd: number): Received[] {
  const l = mmsg();
  if (!l) return [];
  const r = (recvArena ??= new Arena(RECV_SLOT));
  for (let i = 0; i < BATCH; i++) r.headers.writeUInt32LE(NAME_SLOT, i * MMSG_SIZE + OFF_NAMELEN);
  const n = l.recvmmsg(fd, r.headers, BATCH, MSG_DONTWAIT, null);
  if (n < 0) {
    const errno = lastErrno();
    if (errno === EAGAIN) return [];
    throw new SyscallError('recvmmsg', errno);
  }
  const out: Received[] = [];
  for (let i = 0; i < n; i++) {
    const h = i * MMSG_SIZE;
    const len = r.headers.readUInt32LE(h + OFF_LEN);
    const truncated = (r.headers.readInt32LE(h + OFF_FLAGS) & MSG_TRUNC) !== 0;
    out.push({ msg: r.data.subarray(i * RECV_SLOT, i * RECV_SLOT + Math.min(len, RECV_SLOT)), from: i, truncated });
  }
  return out;
}

/** The sender of datagram `from` of the last batch, as node's dgram names it (for a reply sent later). */
export function senderOf(from: number): { address: string; port: number } | undefined {
  const r = recvArena;
  if (!r) return undefined;
  const namelen = r.headers.readUInt32LE(from * MMSG_SIZE + OFF_NAMELEN);
  const sa = r.names.subarray(from * NAME_SLOT, from * NAME_SLOT + Math.min(namelen, NAME_SLOT));
  const family = sa.readUInt16LE(0);
  const port = sa.readUInt16BE(2);
  if (family === 2 && sa.length >= 8) return { address: `${sa[4]}.${sa[5]}.${sa[6]}.${sa[7]}`, port };
  if (family === 10 && sa.length >= 24) {
    const groups: string[] = [];
    for (let g = 0; g < 8; g++) groups.push(sa.readUInt16BE(8 + g * 2).toString(16));
    return { address: groups.join(':'), port };
  }
  return undefined;
}

/**
 * Replies to the last received batch, sent together by `flush`. A reply that does not fit the
 * send room (none does: see SEND_SLOT) is refused with false, for the caller to send itself.
 */
export class ReplyBatch {
  private count = 0;

  /** `reply` is copied, with the id of `query` (a cached reply carries an earlier query's). */
  add(from: number, reply: Buffer, query: Buffer): boolean {
    if (reply.length > SEND_SLOT || this.count >= BATCH) return false;
    const r = recvArena!;
    const s = (sendArena ??= new Arena(SEND_SLOT));
    const i = this.count++;
    const namelen = r.headers.readUInt32LE(from * MMSG_SIZE + OFF_NAMELEN);
    r.names.copy(s.names, i * NAME_SLOT, from * NAME_SLOT, from * NAME_SLOT + Math.min(namelen, NAME_SLOT));
    s.headers.writeUInt32LE(namelen, i * MMSG_SIZE + OFF_NAMELEN);
    reply.copy(s.data, i * SEND_SLOT);
    s.data[i * SEND_SLOT] = query[0]!;
    s.data[i * SEND_SLOT + 1] = query[1]!;
    s.setLength(i, reply.length);
    return true;
  }

  /** Sends the replies added; returns how many could not be sent (the socket's buffer full, or an error). */
  flush(fd: number): { unsent: number; error?: SyscallError } {
    const l = mmsg();
    const s = sendArena;
    let sent = 0;
    let failed = 0;
    let error: SyscallError | undefined;
    while (l && s && sent < this.count) {
      const n = l.sendmmsg(fd, s.headers.subarray(sent * MMSG_SIZE), this.count - sent, MSG_DONTWAIT);
      if (n > 0) {
        sent += n;
        continue;
      }
      const errno = lastErrno();
      // The socket's buffer is full: the rest is dropped, as node drops a datagram it cannot send.
      if (n === 0 || errno === EAGAIN) break;
      // One reply the kernel refuses (its address) must not hold back the ones after it.
      error = new SyscallError('sendmmsg', errno);
      failed++;
      sent++;
    }
    const unsent = this.count - sent + failed;
    this.count = 0;
    return error ? { unsent, error } : { unsent };
  }
}
