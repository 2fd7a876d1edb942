/** The namespace and mount calls of the dataplane (src/util/libc.ts loads them). */
import { SyscallError, lastErrno, libcFunction } from '../util/libc';

export const CLONE_NEWNET = 0x40000000;
export const MS_BIND = 4096;
export const MS_REC = 16384;
export const MS_PRIVATE = 1 << 18;
export const MS_SHARED = 1 << 20;
export const MNT_DETACH = 2;

function check(rc: number, syscall: string, detail?: string): void {
  if (rc !== 0) throw new SyscallError(syscall, lastErrno(), detail);
}

export function setns(fd: number, nstype: number): void {
  check(libcFunction('int setns(int fd, int nstype)')(fd, nstype), 'setns');
}

export function unshare(flags: number): void {
  check(libcFunction('int unshare(int flags)')(flags), 'unshare');
}

export function mount(src: string | null, target: string, fstype: string | null, flags: number): void {
  const call = libcFunction('int mount(const char *src, const char *target, const char *fstype, unsigned long flags, const void *data)');
  check(call(src, target, fstype, flags, null), 'mount', target);
}

export function umount2(target: string, flags: number): void {
  check(libcFunction('int umount2(const char *target, int flags)')(target, flags), 'umount2', target);
}
