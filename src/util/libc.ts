/**
 * The C library's functions Node has no API for (namespaces, mounts, sockets made inside a
 * namespace, batched datagram I/O, heap trimming), through koffi: libc is loaded once for the
 * whole daemon, lazily, and each function is declared on first use, so code that never calls
 * one never needs libc.
 */
import * as koffi from 'koffi';
import { constants as osConstants } from 'node:os';

export type LibcFunction = (...args: unknown[]) => number;

let library: koffi.IKoffiLib | undefined;
const declared = new Map<string, LibcFunction>();

/** The libc function of this C prototype, declared once; throws where libc.so.6 or the symbol is missing. */
export function libcFunction(prototype: string): LibcFunction {
  let fn = declared.get(prototype);
  if (fn === undefined) {
    library ??= koffi.load('libc.so.6');
    fn = library.func(prototype) as LibcFunction;
    declared.set(prototype, fn);
  }
  return fn;
}

/** errno as the last libc call through koffi left it on this thread. */
export function lastErrno(): number {
  return koffi.errno();
}

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([name, num]) => [num, name]));

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
