/**
 * Sockets bound inside an overlay namespace, for the network's DNS listener.
 *
 * A socket belongs to the network namespace of the thread that creates it. Node creates a
 * socket's descriptor only when its asynchronous bind runs, by which time the main thread is
 * back in the host namespace; so the descriptors are created and bound here with libc
 * (src/util/libc.ts) while the thread is inside the namespace, and
 * handed to node afterwards (`dgram` `bind({fd})`, `net.Server.listen({fd})`).
 */
import ipaddr from 'ipaddr.js';
import net from 'node:net';
import { SyscallError, lastErrno, libcFunction, type LibcFunction } from '../util/libc';
import { inNetnsFile } from '../dataplane/netns';

const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const IPPROTO_IP = 0;
const IPPROTO_IPV6 = 41;
const IPV6_V6ONLY = 26;
/**
 * Binding succeeds even before the gateway address is on br0 (it is added in the same
 * activation). The IPv4 option also governs IPv6 sockets (the kernel's nonlocal-bind check).
 */
const IP_FREEBIND = 15;

interface SocketLib {
  socket: LibcFunction;
  setsockopt: LibcFunction;
  bind: LibcFunction;
  close: LibcFunction;
}
let lib: SocketLib | undefined;

function libc(): SocketLib {
  lib ??= {
    socket: libcFunction('int socket(int domain, int type, int protocol)'),
    setsockopt: libcFunction('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)'),
    bind: libcFunction('int bind(int fd, const void *addr, uint32_t len)'),
    close: libcFunction('int close(int fd)'),
  };
  return lib;
}

function fail(call: string, detail: string): never {
  throw new SyscallError(call, lastErrno(), detail);
}

/** `struct sockaddr_in` or `struct sockaddr_in6` (flow info and scope id zero: a global address). */
function sockaddr(address: string, port: number): Buffer {
  const v6 = net.isIPv6(address);
  const sa = Buffer.alloc(v6 ? 28 : 16);
  sa.writeUInt16LE(v6 ? AF_INET6 : AF_INET, 0);
  sa.writeUInt16BE(port, 2);
  Buffer.from(ipaddr.parse(address).toByteArray()).copy(sa, v6 ? 8 : 4);
  return sa;
}

function boundSocket(type: number, address: string, port: number): number {
  const c = libc();
  const v6 = net.isIPv6(address);
  const fd = c.socket(v6 ? AF_INET6 : AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail('socket', address);
  try {
    const one = Buffer.alloc(4);
    one.writeInt32LE(1, 0);
    if (c.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, one, 4) !== 0) fail('setsockopt SO_REUSEADDR', address);
    if (c.setsockopt(fd, IPPROTO_IP, IP_FREEBIND, one, 4) !== 0) fail('setsockopt IP_FREEBIND', address);
    if (v6 && c.setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, one, 4) !== 0) fail('setsockopt IPV6_V6ONLY', address);
    const sa = sockaddr(address, port);
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
  /** IPv6 sockets (node must wrap them as `udp6`). */
  ipv6: boolean;
}

/** A UDP and a TCP socket bound to `address:port` (IPv4 or IPv6) inside the namespace mounted on `netnsFile`. */
export function bindInNamespace(netnsFile: string, address: string, port: number): NamespaceSockets {
  // A scoped (`%if`) or link-local address is no gateway: overlay-check refuses those.
  if (net.isIP(address) === 0) throw new Error(`DNS listener address ${address} is not an IP address`);
  const ipv6 = net.isIPv6(address);
  return inNetnsFile(netnsFile, () => {
    const udpFd = boundSocket(SOCK_DGRAM, address, port);
    try {
      return { udpFd, tcpFd: boundSocket(SOCK_STREAM, address, port), ipv6 };
    } catch (err) {
      libc().close(udpFd);
      throw err;
    }
  });
}

/** A UDP socket bound to `address:port` in this thread's namespace (a listener given by address: tests, benchmarks). */
export function bindUdpHere(address: string, port: number): number {
  if (net.isIP(address) === 0) throw new Error(`DNS listener address ${address} is not an IP address`);
  return boundSocket(SOCK_DGRAM, address, port);
}

/** Closes descriptors node never took over (a failed start). */
export function closeFd(fd: number): void {
  libc().close(fd);
}
