/**
 * The few libc calls Node has no API for (namespaces and mounts), through koffi.
 * Loaded lazily so that code importing the dataplane's pure helpers never needs libc.
 */
import * as koffi from 'koffi';
import { constants as osConstants } from 'node:os';

export const CLONE_NEWNET = 0x40000000;
export const MS_BIND = 4096;
export const MS_REC = 16384;
export const MS_PRIVATE = 1 << 18;
export const MS_SHARED = 1 << 20;
export const MNT_DETACH = 2;

type IntFn = (...args: unknown[]) => number;

interface Libc {
  setns: IntFn;
  unshare: IntFn;
  mount: IntFn;
  umount2: IntFn;
}

let libc: Libc | undefined;

function lib(): Libc {
  if (!libc) {
    const l = koffi.load('libc.so.6');
    libc = {
      setns: l.func('int setns(int fd, int nstype)') as IntFn,
      unshare: l.func('int unshare(int flags)') as IntFn,
      mount: l.func(
        'int mount(const char *src, const char *target, const char *fstype, unsigned long flags, const void *data)',
      ) as IntFn,
      umount2: l.func('int umount2(const char *target, int flags)') as IntFn,
    };
  }
  return libc;
}

const errnoNames = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, num]) => [num, name]),
);

/** An error from a libc call, carrying errno and its symbolic code like Node's own errors. */
export class SyscallError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly syscall: string;
  constructor(syscall: string, errno: number, detail?: string) {
    const code = errnoNames.get(errno) ?? `E${errno}`;
    super(`${syscall}${detail ? ` ${detail}` : ''}: ${code}`);
    this.name = 'SyscallError';
    this.errno = errno;
    this.code = code;
    this.syscall = syscall;
  }
}

function check(rc: number, syscall: string, detail?: string): void {
  if (rc !== 0) throw new SyscallError(syscall, koffi.errno(), detail);
}

export function setns(fd: number, nstype: number): void {
  check(lib().setns(fd, nstype), 'setns');
}

export function unshare(flags: number): void {
  check(lib().unshare(flags), 'unshare');
}

export function mount(src: string | null, target: string, fstype: string | null, flags: number): void {
  check(lib().mount(src, target, fstype, flags, null), 'mount', target);
}

export function umount2(target: string, flags: number): void {
  check(lib().umount2(target, flags), 'umount2', target);
}
