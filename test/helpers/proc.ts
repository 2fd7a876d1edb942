/**
 * Process helpers for the end-to-end harness.
 *
 * - run()/runSync(): run a command (argv, no shell) with a timeout and capture its output.
 * - spawnTracked(): start a long-running child, remember its PID (+ start time, so a
 *   recycled PID is never signalled) and stop it with SIGTERM, then SIGKILL.
 * - /proc readers: process list, parent chains, namespace inodes.
 * - A process-wide cleanup registry (LIFO). It runs from test `after` hooks
 *   (cleanupAfter()) and, synchronously, on process exit, SIGINT/SIGTERM/SIGHUP and
 *   crashes (an uncaught error ends in 'exit' too), so namespaces, mounts, links and
 *   processes go away even when a test fails.
 * - The per-run prefix (runPrefix()) that every name the harness creates starts with,
 *   and a small on-disk record of what a run created, so that a later run can remove
 *   what a run killed with SIGKILL left behind (reapStaleRuns()).
 *
 * Only processes this module started (or that a caller identifies by PID) are ever
 * signalled: nothing here kills by name.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { after } from 'node:test';

// ---------------------------------------------------------------------------
// small utilities

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Like sleep(), but the timer does not keep the process alive (for races against exits). */
export function sleepUnref(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
/** Blocks the thread (used only by the synchronous exit-time cleanup path). */
export function sleepSync(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

export interface WaitForOptions {
  timeoutMs?: number;
  intervalMs?: number;
  /** Text for the timeout error. */
  what?: string;
}

/** Polls `fn` until it returns a value other than undefined/false, or throws on timeout. */
export async function waitFor<T>(
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  opts: WaitForOptions = {},
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const intervalMs = opts.intervalMs ?? 100;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const why = lastError instanceof Error ? `: last error: ${lastError.message}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${opts.what ?? 'condition'}${why}`);
    }
    await sleep(intervalMs);
  }
}

/** Last `max` characters of a string, prefixed with an ellipsis marker when cut. */
export function tail(text: string, max = 4000): string {
  return text.length <= max ? text : `…${text.slice(text.length - max)}`;
}

// ---------------------------------------------------------------------------
// run a command to completion

export interface RunOptions {
  /** Default 60 s. On timeout the child gets SIGTERM, then SIGKILL 2 s later. */
  timeoutMs?: number;
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Resolve with the result even when the command fails (default: throw CommandError). */
  allowFailure?: boolean;
}

export interface RunResult {
  argv: readonly string[];
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  durationMs: number;
}

export class CommandError extends Error {
  readonly result: RunResult;
  constructor(result: RunResult) {
    const how = result.timedOut
      ? `timed out after ${result.durationMs} ms`
      : result.signal
        ? `killed by ${result.signal}`
        : `exited with ${result.code}`;
    const err = result.stderr.trim() || result.stdout.trim();
    super(`command ${JSON.stringify(result.argv.join(' '))} ${how}${err ? `: ${tail(err, 2000)}` : ''}`);
    this.name = 'CommandError';
    this.result = result;
  }
}

export function ok(r: RunResult): boolean {
  return r.code === 0 && !r.timedOut;
}

/** Runs argv[0] with argv[1..] (no shell), captures stdout/stderr, enforces a timeout. */
export function run(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  if (argv.length === 0) throw new Error('run: empty argv');
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const started = Date.now();
  return new Promise<RunResult>((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(argv[0], argv.slice(1), {
        cwd: opts.cwd,
        env: opts.env ?? process.env,
        stdio: ['pipe', 'pipe', 'pipe'],
      });
    } catch (err) {
      reject(err);
      return;
    }
    const out: Buffer[] = [];
    const errs: Buffer[] = [];
    let timedOut = false;
    let spawnError: Error | undefined;
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => errs.push(b));
    child.on('error', (err) => {
      spawnError = err;
    });
    child.stdin?.on('error', () => undefined);
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
    let killTimer: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) {
        signalPid(child.pid, 'SIGTERM');
        killTimer = setTimeout(() => {
          if (child.pid !== undefined && child.exitCode === null) signalPid(child.pid, 'SIGKILL');
        }, 2000);
      }
    }, timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      const result: RunResult = {
        argv: [...argv],
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(errs).toString('utf8') + (spawnError ? `\n${spawnError.message}` : ''),
        timedOut,
        durationMs: Date.now() - started,
      };
      if (!opts.allowFailure && !ok(result)) reject(new CommandError(result));
      else resolve(result);
    });
  });
}

/** Synchronous run(): for exit-time cleanup, where the event loop no longer turns. */
export function runSync(argv: readonly string[], opts: RunOptions = {}): RunResult {
  if (argv.length === 0) throw new Error('runSync: empty argv');
  const started = Date.now();
  const r = spawnSync(argv[0], argv.slice(1), {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    input: opts.input,
    timeout: opts.timeoutMs ?? 60_000,
    killSignal: 'SIGKILL',
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  const err = r.error as (Error & { code?: string }) | undefined;
  const result: RunResult = {
    argv: [...argv],
    code: r.status,
    signal: r.signal,
    stdout: r.stdout ?? '',
    stderr: (r.stderr ?? '') + (err ? `\n${err.message}` : ''),
    timedOut: err?.code === 'ETIMEDOUT',
    durationMs: Date.now() - started,
  };
  if (!opts.allowFailure && !ok(result)) throw new CommandError(result);
  return result;
}

// ---------------------------------------------------------------------------
// /proc

export interface ProcInfo {
  pid: number;
  ppid: number;
  /** One-letter state from /proc/PID/stat (R, S, D, Z, …). */
  state: string;
  comm: string;
  /** Start time in clock ticks since boot: with pid, identifies a process across PID reuse. */
  startTime: number;
  cmdline: string[];
}

/** Reads /proc/PID; undefined when the process does not exist (or vanished meanwhile). */
export function readProc(pid: number): ProcInfo | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const open = stat.indexOf('(');
    const close = stat.lastIndexOf(')');
    const comm = stat.slice(open + 1, close);
    const rest = stat.slice(close + 2).split(' ');
    // rest[0] = state (field 3), rest[1] = ppid (field 4), rest[19] = starttime (field 22)
    let cmdline: string[] = [];
    try {
      cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (cmdline.length > 0 && cmdline[cmdline.length - 1] === '') cmdline.pop();
    } catch {
      cmdline = [];
    }
    return { pid, ppid: Number(rest[1]), state: rest[0], comm, startTime: Number(rest[19]), cmdline };
  } catch {
    return undefined;
  }
}

export function listProcs(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const p = readProc(Number(name));
    if (p) out.push(p);
  }
  return out;
}

/** All live descendants of `pid` (children, grandchildren, …), from one /proc snapshot. */
export function descendants(pid: number, procs: readonly ProcInfo[] = listProcs()): ProcInfo[] {
  const byParent = new Map<number, ProcInfo[]>();
  for (const p of procs) {
    const list = byParent.get(p.ppid) ?? [];
    list.push(p);
    byParent.set(p.ppid, list);
  }
  const out: ProcInfo[] = [];
  const stack = [pid];
  while (stack.length > 0) {
    const cur = stack.pop() as number;
    for (const c of byParent.get(cur) ?? []) {
      out.push(c);
      stack.push(c.pid);
    }
  }
  return out;
}

export type NamespaceKind = 'mnt' | 'net' | 'pid' | 'uts' | 'ipc' | 'cgroup';

/** e.g. "mnt:[4026532246]"; undefined when the process is gone. */
export function nsId(pid: number | 'self', kind: NamespaceKind): string | undefined {
  try {
    return fs.readlinkSync(`/proc/${pid}/ns/${kind}`);
  } catch {
    return undefined;
  }
}

/** Inode identity of a namespace file such as /run/netns/NAME, in the same "net:[N]" form. */
export function nsIdOfFile(file: string, kind: NamespaceKind): string | undefined {
  try {
    return `${kind}:[${fs.statSync(file).ino}]`;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// signalling by PID

export interface PidRef {
  pid: number;
  /** From ProcInfo.startTime; when given, a different process that reuses the PID is left alone. */
  startTime?: number;
}

function sameProcess(ref: PidRef): ProcInfo | undefined {
  const p = readProc(ref.pid);
  if (!p) return undefined;
  if (ref.startTime !== undefined && p.startTime !== ref.startTime) return undefined;
  return p;
}

/** True while the process exists and is not a zombie. */
export function isAlive(ref: number | PidRef): boolean {
  const r = typeof ref === 'number' ? { pid: ref } : ref;
  const p = sameProcess(r);
  return p !== undefined && p.state !== 'Z' && p.state !== 'X';
}

function signalPid(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

/** Sends `sig` to the process if it is still the one referred to. */
export function signal(ref: PidRef, sig: NodeJS.Signals): boolean {
  if (!isAlive(ref)) return false;
  return signalPid(ref.pid, sig);
}

export interface KillOptions {
  /** How long to wait after SIGTERM (or `signal`) before SIGKILL. Default 5 s. */
  timeoutMs?: number;
  signal?: NodeJS.Signals;
}

export type KillOutcome = 'absent' | 'exited' | 'killed' | 'stuck';

/** SIGTERM, wait, SIGKILL, wait: for one process identified by PID (+ start time). */
export async function killPid(ref: number | PidRef, opts: KillOptions = {}): Promise<KillOutcome> {
  const r = typeof ref === 'number' ? { pid: ref } : ref;
  if (!isAlive(r)) return 'absent';
  signalPid(r.pid, opts.signal ?? 'SIGTERM');
  const deadline = Date.now() + (opts.timeoutMs ?? 5000);
  while (Date.now() < deadline) {
    if (!isAlive(r)) return 'exited';
    await sleep(50);
  }
  if (!isAlive(r)) return 'exited';
  signalPid(r.pid, 'SIGKILL');
  const hard = Date.now() + 5000;
  while (Date.now() < hard) {
    if (!isAlive(r)) return 'killed';
    await sleep(50);
  }
  return 'stuck';
}

/** killPid() for several processes at once (they get their signals together). */
export async function killPids(refs: readonly PidRef[], opts: KillOptions = {}): Promise<void> {
  await Promise.all(refs.map((r) => killPid(r, opts)));
}

export function killPidsSync(refs: readonly PidRef[], opts: KillOptions = {}): void {
  const live = refs.filter((r) => isAlive(r));
  for (const r of live) signalPid(r.pid, opts.signal ?? 'SIGTERM');
  const deadline = Date.now() + (opts.timeoutMs ?? 3000);
  while (Date.now() < deadline && live.some((r) => isAlive(r))) sleepSync(50);
  for (const r of live) if (isAlive(r)) signalPid(r.pid, 'SIGKILL');
  const hard = Date.now() + 3000;
  while (Date.now() < hard && live.some((r) => isAlive(r))) sleepSync(50);
}

// ---------------------------------------------------------------------------
// long-running children

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnTrackedOptions {
  /** For messages; defaults to argv[0]. */
  name?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Append stdout and stderr to this file as well. */
  logFile?: string;
  /** Characters of combined output kept in memory for output(). Default 256 KiB. */
  keepChars?: number;
  /** Register a cleanup that stops the process (default true). */
  registerCleanup?: boolean;
  /** Grace period between SIGTERM and SIGKILL in stop() / cleanup. Default 5 s. */
  stopTimeoutMs?: number;
}

export interface ManagedProcess {
  readonly name: string;
  readonly pid: number;
  readonly startTime: number;
  readonly argv: readonly string[];
  /** Resolves when the child has exited; never rejects. */
  readonly exited: Promise<ExitInfo>;
  /** undefined while it runs. */
  exitInfo(): ExitInfo | undefined;
  running(): boolean;
  /** Tail of stdout+stderr, interleaved as received. */
  output(): string;
  /** Resolves with the output so far once it matches; rejects on timeout or exit. */
  waitForOutput(pattern: RegExp | string, timeoutMs?: number): Promise<string>;
  /** SIGTERM (or `signal`), then SIGKILL after the timeout; resolves with the exit status. */
  stop(opts?: KillOptions): Promise<ExitInfo>;
}

/** Starts a child process and tracks it by PID; only this PID is ever signalled. */
export function spawnTracked(argv: readonly string[], opts: SpawnTrackedOptions = {}): ManagedProcess {
  if (argv.length === 0) throw new Error('spawnTracked: empty argv');
  const name = opts.name ?? path.basename(argv[0]);
  const keep = opts.keepChars ?? 256 * 1024;
  const logFd = opts.logFile ? fs.openSync(opts.logFile, 'a') : undefined;
  const child = spawn(argv[0], argv.slice(1), {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.on('error', () => undefined);
  if (child.pid === undefined) {
    if (logFd !== undefined) fs.closeSync(logFd);
    throw new Error(`cannot start ${name}: ${argv.join(' ')}`);
  }
  const pid = child.pid;
  const startTime = readProc(pid)?.startTime ?? 0;
  let buf = '';
  let exit: ExitInfo | undefined;
  const listeners = new Set<() => void>();
  const onData = (b: Buffer): void => {
    const s = b.toString('utf8');
    buf = (buf + s).slice(-keep);
    if (logFd !== undefined) {
      try {
        fs.writeSync(logFd, s);
      } catch {
        /* log is best effort */
      }
    }
    for (const l of listeners) l();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = new Promise<ExitInfo>((resolve) => {
    child.on('close', (code, sig) => {
      exit = { code, signal: sig };
      if (logFd !== undefined) {
        try {
          fs.closeSync(logFd);
        } catch {
          /* already closed */
        }
      }
      for (const l of listeners) l();
      resolve(exit);
    });
  });
  const ref: PidRef = { pid, startTime };
  const stopTimeoutMs = opts.stopTimeoutMs ?? 5000;
  let unregister: (() => void) | undefined;

  const mp: ManagedProcess = {
    name,
    pid,
    startTime,
    argv: [...argv],
    exited,
    exitInfo: () => exit,
    running: () => exit === undefined,
    output: () => buf,
    waitForOutput(pattern: RegExp | string, timeoutMs = 10_000): Promise<string> {
      const matches = (): boolean => (typeof pattern === 'string' ? buf.includes(pattern) : pattern.test(buf));
      return new Promise<string>((resolve, reject) => {
        const check = (): void => {
          if (matches()) {
            done();
            resolve(buf);
          } else if (exit !== undefined) {
            done();
            reject(new Error(`${name} exited (${JSON.stringify(exit)}) before printing ${String(pattern)}; output: ${tail(buf)}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`timed out after ${timeoutMs} ms waiting for ${name} to print ${String(pattern)}; output: ${tail(buf)}`));
        }, timeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    },
    async stop(kopts: KillOptions = {}): Promise<ExitInfo> {
      if (exit === undefined) {
        signalPid(pid, kopts.signal ?? 'SIGTERM');
        const timeout = kopts.timeoutMs ?? stopTimeoutMs;
        const t = await Promise.race([exited, sleepUnref(timeout).then(() => undefined)]);
        if (t === undefined && exit === undefined) {
          signalPid(pid, 'SIGKILL');
          await Promise.race([exited, sleepUnref(5000)]);
        }
      }
      unregister?.();
      return exit ?? { code: null, signal: null };
    },
  };
  if (opts.registerCleanup !== false) {
    unregister = registerCleanup(`stop ${name} (pid ${pid})`, () => mp.stop().then(() => undefined), {
      sync: () => killPidsSync([ref], { timeoutMs: stopTimeoutMs }),
    });
  }
  return mp;
}

// ---------------------------------------------------------------------------
// cleanup registry

export type CleanupFn = () => void | Promise<void>;

interface CleanupEntry {
  id: number;
  label: string;
  fn: CleanupFn;
  sync?: () => void;
  done: boolean;
}

const registry: CleanupEntry[] = [];
const inFlight = new Set<CleanupEntry>();
let nextId = 1;
let hooksInstalled = false;

export interface RegisterCleanupOptions {
  /**
   * Synchronous variant used at process exit and on signals, when promises no longer
   * settle. Without it, `fn` is called there and only its synchronous part runs.
   */
  sync?: () => void;
}

/**
 * Registers a cleanup (LIFO). Returns a function that unregisters it (call that when the
 * resource was released normally).
 */
export function registerCleanup(label: string, fn: CleanupFn, opts: RegisterCleanupOptions = {}): () => void {
  installProcessHooks();
  const entry: CleanupEntry = { id: nextId++, label, fn, sync: opts.sync, done: false };
  registry.push(entry);
  return () => {
    entry.done = true;
    const i = registry.indexOf(entry);
    if (i >= 0) registry.splice(i, 1);
  };
}

/** Number of cleanups still registered. */
export function pendingCleanups(): string[] {
  return registry.map((e) => e.label);
}

/**
 * Runs all registered cleanups, newest first, each to completion (errors are collected;
 * every cleanup still runs). Throws an AggregateError at the end if any failed.
 */
export async function runCleanups(): Promise<void> {
  const errors: Error[] = [];
  for (;;) {
    const entry = registry.pop();
    if (!entry) break;
    if (entry.done) continue;
    inFlight.add(entry);
    try {
      await entry.fn();
    } catch (err) {
      errors.push(new Error(`cleanup "${entry.label}" failed: ${err instanceof Error ? err.message : String(err)}`));
    } finally {
      entry.done = true;
      inFlight.delete(entry);
    }
  }
  if (errors.length > 0) throw new AggregateError(errors, errors.map((e) => e.message).join('; '));
}

/** Synchronous variant: runs each cleanup's `sync` function (or `fn` without awaiting). */
export function runCleanupsSync(): Error[] {
  const errors: Error[] = [];
  const todo = [...registry.splice(0, registry.length), ...inFlight].filter((e) => !e.done);
  inFlight.clear();
  todo.sort((a, b) => b.id - a.id);
  for (const entry of todo) {
    entry.done = true;
    try {
      if (entry.sync) entry.sync();
      else void Promise.resolve(entry.fn()).catch(() => undefined);
    } catch (err) {
      errors.push(new Error(`cleanup "${entry.label}" failed: ${err instanceof Error ? err.message : String(err)}`));
    }
  }
  return errors;
}

/**
 * In a test file: registers a node:test `after` hook (of the current suite, or of the
 * file at top level) that runs every pending cleanup.
 */
export function cleanupAfter(): void {
  after(async () => {
    await runCleanups();
  });
}

const SIGNAL_EXIT: Partial<Record<NodeJS.Signals, number>> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };

/** Idempotent; called by registerCleanup(). */
export function installProcessHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    if (registry.length === 0 && inFlight.size === 0) return;
    const errors = runCleanupsSync();
    for (const e of errors) process.stderr.write(`[tso-harness] ${e.message}\n`);
  });
  for (const sig of Object.keys(SIGNAL_EXIT) as NodeJS.Signals[]) {
    process.once(sig, () => {
      process.stderr.write(`[tso-harness] ${sig}: cleaning up\n`);
      // process.exit() emits 'exit', whose handler runs the cleanups synchronously.
      process.exit(SIGNAL_EXIT[sig]);
    });
  }
  // Under node:test an uncaught error fails the current test and the run goes on
  // (its after hooks clean up); outside it the process dies and 'exit' cleans up.
}

// ---------------------------------------------------------------------------
// per-run prefix, run directory, record of created resources

let prefix: string | undefined;

/**
 * The prefix of every name this run creates: netns, links, paths under /tmp and /run.
 * `TSO_TEST_PREFIX` overrides it (lowercase letters and digits, at most 8 characters,
 * so that interface names built from it stay under 15 characters).
 */
export function runPrefix(): string {
  if (prefix) return prefix;
  const fromEnv = process.env.TSO_TEST_PREFIX;
  if (fromEnv) {
    if (!/^[a-z][a-z0-9]{0,7}$/.test(fromEnv)) throw new Error(`TSO_TEST_PREFIX must match ^[a-z][a-z0-9]{0,7}$: ${fromEnv}`);
    prefix = fromEnv;
    return prefix;
  }
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  for (let attempt = 0; attempt < 100; attempt++) {
    const bytes = randomBytes(4);
    let p = 'tso';
    for (const b of bytes) p += alphabet[b % alphabet.length];
    if (!fs.existsSync(`/tmp/${p}`) && !fs.existsSync(runRecordPath(p)) && !fs.existsSync(`/run/netns/${p}h1`)) {
      prefix = p;
      return p;
    }
  }
  throw new Error('cannot find a free run prefix');
}

/** /tmp/<prefix>: logs, the image tarball, dockerd data roots. Created on first use. */
export function runDir(): string {
  const dir = `/tmp/${runPrefix()}`;
  if (!fs.existsSync(dir)) {
    fs.mkdirSync(dir, { recursive: true });
    recordResource({ kind: 'dir', path: dir });
    const remove = (): void => {
      if (keepLogs()) {
        process.stderr.write(`[tso-harness] TSO_KEEP_LOGS=1: kept ${dir}\n`);
        return;
      }
      removeTree(dir);
      forgetResource({ kind: 'dir', path: dir });
    };
    registerCleanup(`remove ${dir}`, remove, { sync: remove });
  }
  return dir;
}

/** Whether to keep /tmp/<prefix> (logs) after teardown: TSO_KEEP_LOGS=1. */
export function keepLogs(): boolean {
  return process.env.TSO_KEEP_LOGS === '1';
}

export type RunResource =
  | { kind: 'pid'; pid: number; startTime: number }
  | { kind: 'netns'; name: string }
  | { kind: 'link'; name: string }
  | { kind: 'dir'; path: string };

interface RunRecord {
  prefix: string;
  owner: PidRef;
  resources: RunResource[];
}

const RECORD_DIR = '/run/tso-harness';

function runRecordPath(p: string): string {
  return `${RECORD_DIR}/${p}.json`;
}

let record: RunRecord | undefined;

function sameResource(a: RunResource, b: RunResource): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function writeRecord(): void {
  if (!record) return;
  if (record.resources.length === 0) {
    fs.rmSync(runRecordPath(record.prefix), { force: true });
    return;
  }
  fs.mkdirSync(RECORD_DIR, { recursive: true });
  const file = runRecordPath(record.prefix);
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(record));
  fs.renameSync(`${file}.tmp`, file);
}

/**
 * Notes a resource in /run/tso-harness/<prefix>.json so that reapStaleRuns() in a later
 * run can remove it if this process dies without cleaning up (SIGKILL, OOM, CI timeout).
 */
export function recordResource(r: RunResource): void {
  if (!record) {
    const self = readProc(process.pid);
    record = { prefix: runPrefix(), owner: { pid: process.pid, startTime: self?.startTime }, resources: [] };
  }
  if (!record.resources.some((x) => sameResource(x, r))) record.resources.push(r);
  writeRecord();
}

export function forgetResource(r: RunResource): void {
  if (!record) return;
  record.resources = record.resources.filter((x) => !sameResource(x, r));
  writeRecord();
}

/** Unmounts (lazily) every mount of this mount namespace at or below `dir`, deepest first. */
export function unmountUnder(dir: string): string[] {
  const d = dir.replace(/\/+$/, '');
  const points = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m)
    .map((m) => m.replace(/\\040/g, ' '))
    .filter((m) => m === d || m.startsWith(`${d}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of points) runSync(['umount', '-l', m], { allowFailure: true, timeoutMs: 10_000 });
  return points;
}

/** Removes a directory tree after unmounting anything mounted below it. */
export function removeTree(dir: string): void {
  unmountUnder(dir);
  fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
}

function reapRecord(rec: RunRecord): void {
  const pids = rec.resources.filter((r): r is Extract<RunResource, { kind: 'pid' }> => r.kind === 'pid');
  killPidsSync(pids, { timeoutMs: 3000 });
  for (const r of rec.resources) {
    if (r.kind === 'link') runSync(['ip', 'link', 'del', r.name], { allowFailure: true, timeoutMs: 10_000 });
  }
  for (const r of rec.resources) {
    if (r.kind === 'netns') runSync(['ip', 'netns', 'del', r.name], { allowFailure: true, timeoutMs: 10_000 });
  }
  for (const r of rec.resources) {
    if (r.kind === 'dir') {
      try {
        removeTree(r.path);
      } catch {
        /* best effort */
      }
    }
  }
}

/**
 * Removes what earlier runs of the harness left behind when their process died without
 * cleaning up (their owner PID is gone). Returns the prefixes reaped.
 */
export function reapStaleRuns(): string[] {
  let files: string[];
  try {
    files = fs.readdirSync(RECORD_DIR).filter((f) => f.endsWith('.json'));
  } catch {
    return [];
  }
  const reaped: string[] = [];
  for (const f of files) {
    const file = path.join(RECORD_DIR, f);
    let rec: RunRecord;
    try {
      rec = JSON.parse(fs.readFileSync(file, 'utf8')) as RunRecord;
    } catch {
      continue;
    }
    if (rec.prefix === prefix || isAlive(rec.owner)) continue;
    reapRecord(rec);
    fs.rmSync(file, { force: true });
    reaped.push(rec.prefix);
  }
  return reaped;
}
