/**
 * Kernel fixtures for dataplane tests: a per-run name prefix, per-run directories under
 * /run/tsoverlay-test/<prefix>/, `ip`/`bridge` run inside namespace files to observe state, and a
 * cleanup that removes every namespace file, mount and host link the run created (by prefix).
 * Cleanup is registered with node:test's `after` and on process exit, so it runs when tests fail.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { runPrefix } from './proc';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after } from 'node:test';

/** The run prefix shared by every helper (see proc.ts: TSO_TEST_PREFIX overrides it). */
export const RUN_PREFIX: string = runPrefix();
export const TEST_ROOT = '/run/tsoverlay-test';
export const RUN_DIR = path.join(TEST_ROOT, RUN_PREFIX);

/** Runs a command, returns stdout; throws with stderr on failure. */
export function run(cmd: string, args: string[], opts: { allowFail?: boolean } = {}): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    if (opts.allowFail) return '';
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${err.stderr?.trim() || err.message}`);
  }
}

/** `nsenter --net=<file> <cmd…>` (nsenter, not `ip netns exec`, which remounts /sys). */
export function inNs(netnsFile: string, cmd: string, args: string[], opts: { allowFail?: boolean } = {}): string {
  return run('nsenter', [`--net=${netnsFile}`, cmd, ...args], opts);
}

export const ipIn = (netnsFile: string, ...args: string[]): string => inNs(netnsFile, 'ip', args);
export const bridgeIn = (netnsFile: string, ...args: string[]): string => inNs(netnsFile, 'bridge', args);

export interface IpLink {
  ifindex: number;
  ifname: string;
  mtu: number;
  address?: string;
  master?: string;
  flags: string[];
  link_netnsid?: number;
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
}

/** `ip -j -d link show` (in a namespace file, or the host namespace when undefined). */
export function links(netnsFile?: string): IpLink[] {
  const args = ['-j', '-d', 'link', 'show'];
  const out = netnsFile ? ipIn(netnsFile, ...args) : run('ip', args);
  return JSON.parse(out) as IpLink[];
}

export function hostLinkNames(): string[] {
  return links().map((l) => l.ifname);
}

export function mountinfo(): string {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8');
}

/** A directory for this run (e.g. a netns directory), created fresh. */
export function runDir(name: string): string {
  const d = path.join(RUN_DIR, name);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

/** A throwaway namespace file made with util-linux `unshare --net=<file>` (independent of the code under test). */
export function throwawayNetns(name: string): string {
  const dir = runDir('throwaway');
  const file = path.join(dir, name);
  fs.writeFileSync(file, '');
  run('unshare', [`--net=${file}`, 'true']);
  return file;
}

/** A network/endpoint id that starts with the run prefix (so names derived from it carry it). */
export function testId(tag: string): string {
  return `${RUN_PREFIX}${tag}${randomBytes(32).toString('hex')}`.slice(0, 64);
}

/** Name for a helper device a test creates in the host namespace (removed by cleanupKernel). */
export function testLinkName(tag: 'dm'): string {
  return `${RUN_PREFIX}${tag}`;
}

function mountsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const line of mountinfo().split('\n')) {
    const mp = line.split(' ')[4];
    if (!mp) continue;
    const p = mp.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (p === dir || p.startsWith(`${dir}/`)) out.push(p);
  }
  // Deepest first.
  return out.sort((a, b) => b.length - a.length);
}

/**
 * Removes everything this run created: host links named with the prefix (veth host ends `vc<prefix>…`,
 * testLinkName devices), then every mount under the run directory (namespace files, the
 * netns directory's self bind mount), then the directory. Synchronous, so it also works on exit.
 */
export function cleanupKernel(): void {
  for (const name of hostLinkNamesSafe()) {
    if (name.startsWith(`vc${RUN_PREFIX}`) || name === testLinkName('dm')) run('ip', ['link', 'del', name], { allowFail: true });
  }
  for (let round = 0; round < 4; round++) {
    const ms = mountsUnder(RUN_DIR);
    if (!ms.length) break;
    for (const m of ms) run('umount', ['-l', m], { allowFail: true });
  }
  fs.rmSync(RUN_DIR, { recursive: true, force: true });
  try {
    fs.rmdirSync(TEST_ROOT);
  } catch {
    // other runs still use it
  }
}

function hostLinkNamesSafe(): string[] {
  try {
    return hostLinkNames();
  } catch {
    return [];
  }
}

let registered = false;

/** Registers cleanupKernel with node:test's `after` (call at the top level of a test file) and on exit. */
export function registerKernelCleanup(extra?: () => void | Promise<void>): void {
  after(async () => {
    try {
      await extra?.();
    } finally {
      cleanupKernel();
    }
  });
  if (!registered) {
    registered = true;
    process.on('exit', () => cleanupKernel());
  }
}

/** Waits until `fn` returns true (kernel teardown of a namespace is asynchronous). */
export async function eventually(fn: () => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (fn()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
}
