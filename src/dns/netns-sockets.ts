/**
 * Sockets bound inside an overlay namespace, for the network's DNS listener.
 *
 * A socket belongs to the network namespace of the thread that creates it. Node creates a
 * socket's descriptor only when its asynchronous bind runs, by which time the main thread is
 * back in the host namespace; so the descriptors are created and bound here with libc
 * (through koffi, like src/dataplane/libc.ts) while the thread is inside the namespace, and
 * handed to node afterwards (`dgram` `bind({fd})`, `net.Server.listen({fd})`).
 */
import * as koffi from 'koffi';
import net from 'node:net';
import { constants as osConstants } from 'node:os';
import { inNetnsFile } from '../dataplane/netns';

const AF_INET = 2;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const IPPROTO_IP = 0;
/** Binding succeeds even before the gateway address is on br0 (it is added in the same activation). */
const IP_FREEBIND = 15;

type IntFn = (...args: unknown[]) => number;
interface SocketLib {
  socket: IntFn;
  setsockopt: IntFn;
  bind: IntFn;
  close: IntFn;
}
let lib: SocketLib | undefined;

function libc(): SocketLib {
  if (!lib) {
    const l = koffi.load('libc.so.6');
    lib = {
      socket: l.func('int socket(int domain, int type, int protocol)') as IntFn,
      setsockopt: l.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)') as IntFn,
      bind: l.func('int bind(int fd, const void *addr, uint32_t len)') as IntFn,
      close: l.func('int close(int fd)') as IntFn,
    };
  }
  return lib;
}

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([name, num]) => [num, name]));

function fail(call: string, detail: string): never {
  const errno = koffi.errno();
  const err = new Error(`${call} ${detail}: ${errnoNames.get(errno) ?? `E${errno}`}`) as NodeJS.ErrnoException;
  err.code = errnoNames.get(errno);
  throw err;
}

function sockaddrIn(address: string, port: number): Buffer {
  const sa = Buffer.alloc(16);
  sa.writeUInt16LE(AF_INET, 0);
  sa.writeUInt16BE(port, 2);
  address.split('.').forEach((octet, i) => sa.writeUInt8(Number(octet), 4 + i));
  return sa;
}

function boundSocket(type: number, address: string, port: number): number {
  const c = libc();
  const fd = c.socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail('socket', address);
  try {
    const one = Buffer.alloc(4);
    one.writeInt32LE(1, 0);
    if (c.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, one, 4) !== 0) fail('setsockopt SO_REUSEADDR', address);
    if (c.setsockopt(fd, IPPROTO_IP, IP_FREEBIND, one, 4) !== 0) fail('setsockopt IP_FREEBIND', address);
    const sa = sockaddrIn(address, port);
    if (c.bind(fd, sa, sa.length) !== 0) fail('bind', `${address}:${port}`);
    return fd;
  } catch (err) {
    c.close(fd);
    throw err;
  }
}

export interface NamespaceSockets {
  udpFd: number;
  tcpFd: number;
}

/** A UDP and a TCP socket bound to `address:port` inside the namespace mounted on `netnsFile`. */
export function bindInNamespace(netnsFile: string, address: string, port: number): NamespaceSockets {
  if (net.isIPv4(address) === false) throw new Error(`DNS listener address ${address} is not IPv4`);
  return inNetnsFile(netnsFile, () => {
    const udpFd = boundSocket(SOCK_DGRAM, address, port);
    try {
      return { udpFd, tcpFd: boundSocket(SOCK_STREAM, address, port) };
    } catch (err) {
      libc().close(udpFd);
      throw err;
    }
  });
}

/** Closes descriptors node never took over (a failed start). */
export function closeFd(fd: number): void {
  libc().close(fd);
}
