/**
 * Persistent network namespaces as files, the way `ip netns` keeps them.
 *
 * Network namespaces belong to threads, not processes. Everything here runs synchronously
 * on Node's main thread: the thread enters a namespace, does one synchronous thing (unshare +
 * bind mount, or creating a netlink socket, which stays bound to the namespace it was created
 * in) and always returns to the plugin's own namespace in a `finally` before any other
 * JavaScript (or any libuv callback) can run. libuv's worker threads are never moved.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLONE_NEWNET, MNT_DETACH, MS_BIND, MS_REC, MS_SHARED, mount, setns, umount2, unshare } from './libc';
import { SyscallError } from '../util/libc';

let hostFd: number | undefined;

/**
 * A descriptor of the namespace the process started in (the plugin's "host" namespace).
 * Opened once and kept for the life of the process: it is where the main thread returns to,
 * and the namespace VXLAN and veth devices are created from.
 */
export function hostNetnsFd(): number {
  if (hostFd === undefined) hostFd = fs.openSync('/proc/thread-self/ns/net', 'r');
  return hostFd;
}

function returnHome(): void {
  try {
    setns(hostNetnsFd(), CLONE_NEWNET);
  } catch (e) {
    // The main thread would keep programming the wrong namespace: nothing sane can follow.
    const err = new Error(`FATAL: cannot return to the plugin's network namespace: ${(e as Error).message}`);
    process.emitWarning(err);
    throw err;
  }
}

/**
 * Runs `fn` synchronously with the main thread inside the namespace `nsFd`, then switches back.
 * `fn` must not be async: anything it schedules would run after the switch back.
 */
export function withNetns<T>(nsFd: number, fn: () => T): T {
  hostNetnsFd();
  setns(nsFd, CLONE_NEWNET);
  try {
    const r = fn();
    if (r instanceof Promise) throw new Error('withNetns: the callback must be synchronous');
    return r;
  } finally {
    returnHome();
  }
}

/** Whether `p` is the root of a mount (per /proc/self/mountinfo). */
export function isMountPoint(p: string): boolean {
  const target = path.resolve(p);
  const info = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  for (const line of info.split('\n')) {
    const mp = line.split(' ')[4];
    if (mp !== undefined && unescapeMountinfo(mp) === target) return true;
  }
  return false;
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

const sharedDirs = new Set<string>();

/**
 * Creates the netns directory and makes it a shared mount (a bind mount of itself if it is not
 * a mount point yet), as `ip netns` does for /run/netns: namespace files bind-mounted into it
 * then propagate to other mount namespaces (e.g. one Docker runs in) instead of staying private.
 */
export function ensureNetnsDir(dir: string): void {
  const abs = path.resolve(dir);
  if (sharedDirs.has(abs)) return;
  fs.mkdirSync(abs, { recursive: true, mode: 0o755 });
  try {
    mount(null, abs, 'none', MS_SHARED | MS_REC);
  } catch (e) {
    if (!(e instanceof SyscallError) || e.code !== 'EINVAL') throw e;
    // EINVAL: not a mount point yet.
    mount(abs, abs, 'none', MS_BIND | MS_REC);
    mount(null, abs, 'none', MS_SHARED | MS_REC);
  }
  sharedDirs.add(abs);
}

/** Undoes ensureNetnsDir's self bind mount (tests; production keeps it). */
export function releaseNetnsDir(dir: string): void {
  const abs = path.resolve(dir);
  sharedDirs.delete(abs);
  unmountAll(abs, isMountPoint);
}

/**
 * Detaches every mount stacked on `target` (a bounded number: a path mounted over and over is
 * not worth looping on forever). Not mounted, or gone meanwhile, is fine.
 */
function unmountAll(target: string, mounted: (p: string) => boolean): void {
  for (let i = 0; i < 8 && mounted(target); i++) {
    try {
      umount2(target, MNT_DETACH);
    } catch (e) {
      if (e instanceof SyscallError && (e.code === 'EINVAL' || e.code === 'ENOENT')) break;
      throw e;
    }
  }
}

/** A namespace file is live when an nsfs is mounted on it (its device differs from its directory's). */
export function isNetnsMounted(file: string): boolean {
  try {
    return fs.statSync(file).dev !== fs.statSync(path.dirname(file)).dev;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/**
 * Creates a new network namespace kept alive by a bind mount on `file` (in a directory prepared
 * with ensureNetnsDir). An existing live namespace file is reused; an empty leftover file (from
 * a crash between create and mount) gets a fresh namespace. Returns whether a namespace was made.
 */
export function createNetns(file: string): boolean {
  if (isNetnsMounted(file)) return false;
  ensureNetnsDir(path.dirname(file));
  let createdFile = false;
  try {
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o444);
    fs.closeSync(fd);
    createdFile = true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  try {
    hostNetnsFd();
    unshare(CLONE_NEWNET);
    try {
      mount('/proc/thread-self/ns/net', file, 'none', MS_BIND);
    } finally {
      returnHome();
    }
  } catch (e) {
    if (createdFile) fs.rmSync(file, { force: true });
    throw e;
  }
  return true;
}

/** Opens a descriptor on a namespace file (for setns and IFLA_NET_NS_FD). */
export function openNetns(file: string): number {
  if (!isNetnsMounted(file)) throw new SyscallError('open', 2, `${file} (no namespace mounted)`);
  return fs.openSync(file, 'r');
}

/** Runs `fn` (synchronous) inside the namespace mounted on `file`. */
export function inNetnsFile<T>(file: string, fn: () => T): T {
  const fd = openNetns(file);
  try {
    return withNetns(fd, fn);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Unmounts and removes a namespace file. The namespace itself goes away when nothing else
 * (a process, an open descriptor, a device's socket) still holds it. Missing is fine.
 */
export function deleteNetns(file: string): void {
  unmountAll(file, isNetnsMounted);
  fs.rmSync(file, { force: true });
}

/** Names of the files in the netns directory (empty if it does not exist). */
export function listNetns(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

/**
 * Sets `net.ipv6.conf.<key>` sysctls inside the namespace `nsFd` (/proc/sys/net is the namespace of
 * the thread that opens it), writing only the ones that differ so that a repeated ensure stays cheap.
 */
export function setIPv6Sysctls(nsFd: number, values: ReadonlyArray<readonly [string, string]>): void {
  withNetns(nsFd, () => {
    for (const [key, value] of values) {
      const file = `/proc/sys/net/ipv6/conf/${key}`;
      if (fs.readFileSync(file, 'utf8').trim() !== value) fs.writeFileSync(file, value);
    }
  });
}
