/**
 * Test underlay: simulated hosts on one machine.
 *
 *   root netns:  bridge <prefix>ul  10.251.N.1/24  (MTU 1500, no forwarding off it)
 *                  ├── veth <prefix>h1 ── netns <prefix>h1: eth0 10.251.N.11/24, lo, default via .1
 *                  ├── veth <prefix>h2 ── netns <prefix>h2: eth0 10.251.N.12/24, …
 *                  └── …
 *
 * Nothing leaves the machine: there is no NAT, and IPv4 forwarding is switched off for
 * packets arriving on the bridge, so the default route only reaches the root namespace.
 */
import * as fs from 'node:fs';
import {
  forgetResource,
  isAlive,
  readProc,
  recordResource,
  registerCleanup,
  run,
  runPrefix,
  runSync,
  type RunOptions,
  type RunResult,
} from './proc';

export interface UnderlayOptions {
  /** Number of host namespaces (1‥200). */
  hosts: number;
  /** Third octet N of 10.251.N.0/24; default: the first free one from a random start. */
  subnetOctet?: number;
  /** Underlay MTU (bridge, veths, host eth0). Default 1500. */
  mtu?: number;
  /**
   * Also an IPv6 underlay: fd00:79:N::1/64 on the bridge, fd00:79:N::(10+i)/64 on each host's eth0
   * (no DAD: usable at once), as `address6`. Default off (IPv6 stays disabled on the underlay).
   */
  ipv6?: boolean;
}

export interface UnderlayHost {
  /** 1-based. */
  readonly index: number;
  /** Short name used in paths: "h1", "h2", … */
  readonly shortName: string;
  /** Network namespace name: `<prefix>h1`. */
  readonly netns: string;
  /** /run/netns/<netns>. */
  readonly netnsPath: string;
  /** Underlay address, e.g. 10.251.N.11. */
  readonly address: string;
  /** Address with prefix length, e.g. 10.251.N.11/24. */
  readonly cidr: string;
  /** IPv6 underlay address (UnderlayOptions.ipv6), e.g. fd00:79:N::b. */
  readonly address6?: string;
  /** Interface name inside the namespace ("eth0"). */
  readonly ifname: string;
  /** Root-namespace end of the veth (a bridge port): `<prefix>h1`. */
  readonly rootVeth: string;
  /** Runs a command in this host's network namespace (nsenter --net; the mount namespace stays the root one). */
  exec(argv: readonly string[], opts?: RunOptions): Promise<RunResult>;
}

export interface Underlay {
  readonly prefix: string;
  /** Bridge name in the root namespace: `<prefix>ul`. */
  readonly bridge: string;
  /** e.g. 10.251.N.0/24. */
  readonly subnet: string;
  /** Root-side address on the bridge, the hosts' default gateway: 10.251.N.1. */
  readonly gateway: string;
  readonly mtu: number;
  readonly hosts: readonly UnderlayHost[];
  /** Adds one more host namespace (index hosts.length + 1). */
  addHost(): Promise<UnderlayHost>;
  /** Removes the veths, the namespaces and the bridge. Idempotent. */
  teardown(): Promise<void>;
}

// ---------------------------------------------------------------------------
// IPv4 arithmetic

function ipToInt(ip: string): number {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new Error(`bad IPv4 ${ip}`);
  return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0;
}

function parsePrefix(cidr: string): { base: number; len: number } | undefined {
  const [ip, lenText] = cidr.split('/');
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(ip)) return undefined;
  const len = lenText === undefined ? 32 : Number(lenText);
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  return { base: (ipToInt(ip) & mask) >>> 0, len };
}

function overlaps(a: { base: number; len: number }, b: { base: number; len: number }): boolean {
  const len = Math.min(a.len, b.len);
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  return ((a.base & mask) >>> 0) === ((b.base & mask) >>> 0);
}

interface JsonRoute {
  dst?: string;
}
interface JsonAddr {
  addr_info?: { family?: string; local?: string; prefixlen?: number }[];
}

/** IPv4 prefixes in use in the root namespace (routes of every table, addresses). */
export function usedIpv4Prefixes(): string[] {
  const used: string[] = [];
  const routes = JSON.parse(runSync(['ip', '-j', '-4', 'route', 'show', 'table', 'all']).stdout || '[]') as JsonRoute[];
  for (const r of routes) if (r.dst && r.dst !== 'default') used.push(r.dst);
  const addrs = JSON.parse(runSync(['ip', '-j', '-4', 'addr', 'show']).stdout || '[]') as JsonAddr[];
  for (const l of addrs) {
    for (const a of l.addr_info ?? []) if (a.family === 'inet' && a.local) used.push(`${a.local}/${a.prefixlen ?? 32}`);
  }
  return used;
}

const LOCK_DIR = '/run/tso-harness';

function lockPath(n: number): string {
  return `${LOCK_DIR}/subnet-10.251.${n}.lock`;
}

/** Claims 10.251.N.0/24 for this process (O_EXCL lock file; a dead owner's claim is taken over). */
function claimSubnet(n: number): boolean {
  fs.mkdirSync(LOCK_DIR, { recursive: true });
  const file = lockPath(n);
  const me = readProc(process.pid);
  const text = JSON.stringify({ pid: process.pid, startTime: me?.startTime });
  try {
    fs.writeFileSync(file, text, { flag: 'wx' });
    return true;
  } catch {
    try {
      const owner = JSON.parse(fs.readFileSync(file, 'utf8')) as { pid: number; startTime?: number };
      if (isAlive(owner)) return false;
      fs.writeFileSync(file, text);
      return true;
    } catch {
      return false;
    }
  }
}

function releaseSubnet(n: number): void {
  fs.rmSync(lockPath(n), { force: true });
}

/**
 * A free 10.251.N.0/24: no overlap with any route or address of the root namespace, and
 * not claimed by another live harness process. The claim is released by releaseSubnet()
 * (the underlay's teardown does it).
 */
export function pickFreeSubnet(preferred?: number): number {
  const used = usedIpv4Prefixes()
    .map(parsePrefix)
    .filter((p): p is { base: number; len: number } => p !== undefined && p.len > 0);
  const free = (n: number): boolean => {
    const cand = parsePrefix(`10.251.${n}.0/24`) as { base: number; len: number };
    return !used.some((u) => overlaps(u, cand));
  };
  if (preferred !== undefined) {
    if (!free(preferred) || !claimSubnet(preferred)) throw new Error(`10.251.${preferred}.0/24 is in use on this machine`);
    return preferred;
  }
  const start = Math.floor(Math.random() * 250);
  for (let i = 0; i < 255; i++) {
    const n = (start + i) % 255;
    if (free(n) && claimSubnet(n)) return n;
  }
  throw new Error('no free 10.251.N.0/24 subnet on this machine');
}

function writeSysctl(file: string, value: string): void {
  try {
    fs.writeFileSync(file, value);
  } catch {
    /* not present on this kernel */
  }
}

// ---------------------------------------------------------------------------

/** Runs a command in a named network namespace, keeping the root mount namespace (not `ip netns exec`). */
export function execInNetns(netns: string, argv: readonly string[], opts?: RunOptions): Promise<RunResult> {
  const p = netns.startsWith('/') ? netns : `/run/netns/${netns}`;
  return run(['nsenter', `--net=${p}`, '--', ...argv], opts);
}

function removeHostSync(h: { netns: string; rootVeth: string }): void {
  // Deleting one end of the veth removes both; then the namespace (it dies with its last user).
  runSync(['ip', 'link', 'del', h.rootVeth], { allowFailure: true, timeoutMs: 10_000 });
  runSync(['ip', 'netns', 'del', h.netns], { allowFailure: true, timeoutMs: 10_000 });
  forgetResource({ kind: 'link', name: h.rootVeth });
  forgetResource({ kind: 'netns', name: h.netns });
}

/** Creates the underlay bridge and `hosts` host namespaces. Registers its own cleanup. */
export async function createUnderlay(opts: UnderlayOptions): Promise<Underlay> {
  const prefix = runPrefix();
  const mtu = opts.mtu ?? 1500;
  if (!Number.isInteger(opts.hosts) || opts.hosts < 1 || opts.hosts > 200) throw new Error('hosts must be 1..200');
  const octet = pickFreeSubnet(opts.subnetOctet);
  const net = `10.251.${octet}`;
  const bridge = `${prefix}ul`;
  if (bridge.length > 15) throw new Error(`prefix too long for interface names: ${prefix}`);
  const hosts: UnderlayHost[] = [];
  let tornDown = false;

  const teardownSync = (): void => {
    for (const h of [...hosts].reverse()) removeHostSync(h);
    runSync(['ip', 'link', 'del', bridge], { allowFailure: true, timeoutMs: 10_000 });
    forgetResource({ kind: 'link', name: bridge });
    releaseSubnet(octet);
    forgetResource({ kind: 'dir', path: lockPath(octet) });
  };
  const unregister = registerCleanup(`underlay ${bridge}`, () => teardownSync(), { sync: teardownSync });

  recordResource({ kind: 'link', name: bridge });
  recordResource({ kind: 'dir', path: lockPath(octet) });
  try {
    const nf = ['nf_call_iptables', '0', 'nf_call_ip6tables', '0', 'nf_call_arptables', '0'];
    const r = await run(['ip', 'link', 'add', bridge, 'mtu', String(mtu), 'type', 'bridge', ...nf], { allowFailure: true });
    if (r.code !== 0) await run(['ip', 'link', 'add', bridge, 'mtu', String(mtu), 'type', 'bridge']);
    await run(['ip', 'addr', 'add', `${net}.1/24`, 'dev', bridge]);
    // Nothing that arrives from the underlay is routed onwards (per-interface IPv4 forwarding).
    writeSysctl(`/proc/sys/net/ipv4/conf/${bridge}/forwarding`, '0');
    writeSysctl(`/proc/sys/net/ipv6/conf/${bridge}/disable_ipv6`, opts.ipv6 ? '0' : '1');
    if (opts.ipv6) {
      writeSysctl(`/proc/sys/net/ipv6/conf/${bridge}/forwarding`, '0');
      writeSysctl(`/proc/sys/net/ipv6/conf/${bridge}/accept_ra`, '0');
      await run(['ip', '-6', 'addr', 'add', `fd00:79:${octet.toString(16)}::1/64`, 'dev', bridge, 'nodad']);
    }
    await run(['ip', 'link', 'set', bridge, 'up']);
  } catch (err) {
    teardownSync();
    unregister();
    throw err;
  }

  const addHost = async (): Promise<UnderlayHost> => {
    if (tornDown) throw new Error('underlay already torn down');
    const index = hosts.length + 1;
    const netns = `${prefix}h${index}`;
    const rootVeth = `${prefix}h${index}`;
    const address = `${net}.${10 + index}`;
    const address6 = opts.ipv6 ? `fd00:79:${octet.toString(16)}::${(10 + index).toString(16)}` : undefined;
    const host: UnderlayHost = {
      index,
      shortName: `h${index}`,
      netns,
      netnsPath: `/run/netns/${netns}`,
      address,
      cidr: `${address}/24`,
      ...(address6 ? { address6 } : {}),
      ifname: 'eth0',
      rootVeth,
      exec: (argv, o) => execInNetns(netns, argv, o),
    };
    hosts.push(host);
    recordResource({ kind: 'netns', name: netns });
    recordResource({ kind: 'link', name: rootVeth });
    await run(['ip', 'netns', 'add', netns]);
    await run([
      'ip', 'link', 'add', rootVeth, 'mtu', String(mtu), 'type', 'veth',
      'peer', 'name', 'eth0', 'mtu', String(mtu), 'netns', netns,
    ]);
    writeSysctl(`/proc/sys/net/ipv6/conf/${rootVeth}/disable_ipv6`, '1');
    await run(['ip', 'link', 'set', rootVeth, 'master', bridge, 'up']);
    if (address6) {
      const conf = '/proc/sys/net/ipv6/conf';
      await execInNetns(netns, ['sh', '-c', `echo 0 > ${conf}/eth0/accept_ra && echo 0 > ${conf}/eth0/disable_ipv6`]);
    }
    const batch = [
      'link set lo up',
      `addr add ${host.cidr} dev eth0`,
      ...(address6 ? [`addr add ${address6}/64 dev eth0 nodad`] : []),
      'link set eth0 up',
      `route add default via ${net}.1 dev eth0`,
      '',
    ].join('\n');
    await execInNetns(netns, ['ip', '-batch', '-'], { input: batch });
    return host;
  };

  try {
    for (let i = 0; i < opts.hosts; i++) await addHost();
  } catch (err) {
    teardownSync();
    unregister();
    throw err;
  }

  return {
    prefix,
    bridge,
    subnet: `${net}.0/24`,
    gateway: `${net}.1`,
    mtu,
    hosts,
    addHost,
    async teardown(): Promise<void> {
      if (tornDown) return;
      tornDown = true;
      teardownSync();
      unregister();
    },
  };
}

/** Network namespaces whose name starts with `prefix`. */
export function listNetns(prefix: string): string[] {
  const r = runSync(['ip', 'netns', 'list'], { allowFailure: true });
  return r.stdout
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => n && n.startsWith(prefix));
}

/** Root-namespace links whose name starts with `prefix`. */
export function listLinks(prefix: string): string[] {
  const r = runSync(['ip', '-j', 'link', 'show'], { allowFailure: true });
  const links = JSON.parse(r.stdout || '[]') as { ifname?: string }[];
  return links.map((l) => l.ifname ?? '').filter((n) => n.startsWith(prefix));
}
