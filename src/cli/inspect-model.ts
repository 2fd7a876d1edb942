/**
 * `tsoverlay inspect`: the pure part. What a report holds (also its `--json` shape), how the
 * kernel's view of a network is compared against the store's (`--check`), and the
 * human-readable rendering. No I/O here: src/cli/inspect.ts gathers the inputs.
 */
import { vethNames } from '../dataplane/dataplane';
import type { OverlayView } from '../dataplane/dataplane';
import type { Peer, ResolutionMode } from '../dataplane/types';
import type { ServedNameReport } from '../names/served';
import { parseIPv6, type LinkInfo } from '../dataplane/encode';
import type { FdbEntry, NeighbourEntry } from '../dataplane/peers';
import {
  BRIDGE_NAME,
  PORT_VETH_NAME,
  VXLAN_NAME,
  bridgeDifferences,
  expectedVxlan,
  overlayTarget,
  p2pRemote,
  peerDifferences,
  portDifferences,
  vxlanDifferences,
} from '../dataplane/overlay-check';
import { deviceState, vxlanState, type DeviceState, type FdbState, type NameOf, type NeighbourState, type VxlanState } from '../dataplane/overlay-state';

export { ZERO_MAC } from '../dataplane/overlay-check';

/** The report shows devices and tables as the overlay's validators see them. */
export type DeviceReport = DeviceState;
export interface VxlanReport extends VxlanState {
  /** The underlay device's name, when inspect could resolve it in the host namespace. */
  underlay?: string;
}
export type NeighbourReport = NeighbourState;
export type FdbReport = FdbState;

export interface EndpointReport {
  id: string;
  /** Container name as Docker's IPAM request gave it (kept in the store). */
  name?: string;
  /** Container name according to the local Docker daemon (local endpoints, when reachable). */
  container?: string;
  /** IPv4 address: empty on an IPv6-only network. */
  ip: string;
  /** IPv6 address (dual-stack and IPv6-only networks). */
  ip6?: string;
  mac: string;
  host: string;
  /** VTEP address the endpoint's host published with it. */
  locator: string;
  joined: boolean;
  local: boolean;
}

export interface NetworkReport {
  /** Docker's network id on this host. */
  networkId: string;
  /** Docker's name for it (looked up through the Docker API; absent when unreachable). */
  dockerName?: string;
  storeKey: string;
  name?: string;
  vni: number;
  /** IPv4 subnet and gateway: empty on an IPv6-only network. */
  subnet: string;
  gateway: string;
  subnet6?: string;
  gateway6?: string;
  mtu: number;
  mode: ResolutionMode;
  options: Record<string, string>;
  /** p2p: the remote this host was created with. */
  remote?: string;
  namespace?: { path: string; epoch: number };
  bridge?: DeviceReport;
  vxlan?: VxlanReport;
  /** Bridge ports (the br0 ends of local containers' veths). */
  ports: DeviceReport[];
  neighbours: NeighbourReport[];
  fdb: FdbReport[];
  endpoints: EndpointReport[];
  /** Live remote peers per the store: static mode holds all of them, miss mode those asked for. */
  desiredPeers: Peer[];
  /** With --check: each difference between kernel and store (empty = consistent). */
  differences?: string[];
  /** Names the network's DNS listeners (each gateway, port 53) answer, from every host. */
  names?: ServedNameReport[];
}

export interface InspectReport {
  host: string;
  /** This host's VTEP as registered in the store (absent: not registered). */
  vtep?: string;
  store: string;
  /** Why the store could not be read (then no namespace can be matched to a network). */
  storeError?: string;
  netnsDir: string;
  /** `reachable at …`, or why Docker names are missing. */
  docker: string;
  networks: NetworkReport[];
  /** Namespace files in the netns directory that belong to no network of this host (all of them without the store). */
  orphanNamespaces: string[];
  /** With --check: differences not tied to one network. */
  differences?: string[];
}

// ------------------------------------------------------------------ kernel → report

const NUD_NAMES: [number, string][] = [
  [0x80, 'PERMANENT'],
  [0x40, 'NOARP'],
  [0x02, 'REACHABLE'],
  [0x04, 'STALE'],
  [0x08, 'DELAY'],
  [0x10, 'PROBE'],
  [0x20, 'FAILED'],
  [0x01, 'INCOMPLETE'],
];

/** Neighbour state as `ip neigh` prints it. */
export function neighbourState(state: number): string {
  const names = NUD_NAMES.filter(([bit]) => (state & bit) !== 0).map(([, n]) => n);
  return names.length ? names.join(',') : 'NONE';
}

export function neighbourReport(n: NeighbourEntry): NeighbourReport {
  return { ip: n.ip, ...(n.mac ? { mac: n.mac } : {}), state: neighbourState(n.state) };
}

export function fdbReport(f: FdbEntry): FdbReport {
  const flags = [...(f.self ? ['self'] : []), ...(f.master ? ['master'] : [])];
  return { mac: f.mac, ...(f.vtep ? { dst: f.vtep } : {}), flags, state: f.permanent ? 'permanent' : f.dynamic ? 'dynamic' : 'static' };
}

function masterNames(links: LinkInfo[]): NameOf {
  return (index) => links.find((x) => x.index === index)?.name;
}

/** The kernel half of a network report. */
export function kernelPart(view: OverlayView | undefined): Pick<NetworkReport, 'namespace' | 'bridge' | 'vxlan' | 'ports' | 'neighbours' | 'fdb'> {
  if (!view) return { ports: [], neighbours: [], fdb: [] };
  const br = view.links.find((l) => l.name === BRIDGE_NAME);
  const vx = view.links.find((l) => l.name === VXLAN_NAME);
  const nameOf = masterNames(view.links);
  return {
    namespace: { path: view.netnsPath, epoch: view.epoch },
    ...(br ? { bridge: deviceState(br, nameOf, view.addresses) } : {}),
    ...(vx ? { vxlan: vxlanState(vx, nameOf, view.addresses) } : {}),
    // br0's ports, and endpoint ports that lost it (so that --check names what the repair re-enslaves).
    ports: view.links
      .filter((l) => l.kind === 'veth' && ((br !== undefined && l.master === br.index) || PORT_VETH_NAME.test(l.name)))
      .map((l) => deviceState(l, nameOf, view.addresses)),
    neighbours: view.neighbours.map(neighbourReport).sort((a, b) => ipOrder(a.ip, b.ip)),
    fdb: view.fdb.map(fdbReport).sort((a, b) => a.mac.localeCompare(b.mac) || (a.dst ?? '').localeCompare(b.dst ?? '')),
  };
}

/** IPv4 addresses in numeric order, then IPv6 ones in byte order. */
function ipOrder(a: string, b: string): number {
  const v6a = a.includes(':');
  const v6b = b.includes(':');
  if (v6a !== v6b) return v6a ? 1 : -1;
  if (v6a) return Buffer.compare(parseIPv6(a), parseIPv6(b));
  const n = (ip: string) => ip.split('.').reduce((acc, x) => acc * 256 + Number(x), 0);
  return n(a) - n(b);
}

// ------------------------------------------------------------------ --check

/**
 * Every difference between the kernel (the report's namespace, devices and tables) and the
 * store (network record, endpoints, desired peers) for one network on this host, as lines an
 * operator can act on. `vtep` is this host's registered VTEP (undefined: not registered). The
 * devices and tables are held against overlay-check's definition, the one the dataplane repairs to.
 */
export function checkNetwork(r: NetworkReport, vtep: string | undefined, encryptedPort?: number): string[] {
  const out: string[] = [];
  const localJoined = r.endpoints.filter((e) => e.local && e.joined);
  if (!r.namespace) {
    if (localJoined.length > 0) out.push(`no overlay namespace, but ${localJoined.length} local endpoint(s) are joined in the store`);
    return out;
  }
  if (localJoined.length === 0) out.push(`namespace ${r.namespace.path} exists but no local endpoint is joined in the store (left over)`);

  const target = overlayTarget(r, { vtep, remote: r.remote, encryptedPort });
  const messages = (ds: { message: string }[]): string[] => ds.map((d) => d.message);
  out.push(...messages(bridgeDifferences(r.bridge, target)));
  out.push(...messages(vxlanDifferences(r.vxlan, expectedVxlan(target), { mode: r.mode, anyLocal: !vtep })));
  for (const e of localJoined) {
    const port = vethNames(e.id).bridgePortName;
    out.push(...messages(portDifferences(r.ports.find((x) => x.name === port), port, label(e))));
  }
  out.push(...checkPeers(r));
  return out;
}

function label(e: EndpointReport): string {
  const name = e.container ?? e.name;
  const ip = e.ip || e.ip6 || '';
  return name ? `${name} (${ip})` : ip;
}

/** Neighbour/FDB entries against desired peers, by mode. */
export function checkPeers(r: Pick<NetworkReport, 'mode' | 'neighbours' | 'fdb' | 'desiredPeers' | 'remote' | 'options'>): string[] {
  const target = { mode: r.mode, remote: p2pRemote(r.remote, r.options), group: r.options.group };
  return peerDifferences(target, r, r.desiredPeers);
}

// ------------------------------------------------------------------ rendering

/** Left-aligned columns, two spaces apart, trailing blanks trimmed. */
export function table(rows: string[][]): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((row) => row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd());
}

function deviceLine(d: DeviceReport): string {
  const parts = [d.name.padEnd(7), d.up ? 'UP' : 'DOWN', `mtu ${d.mtu ?? '?'}`];
  if (d.master) parts.push(`master ${d.master}`);
  if (d.addresses.length) parts.push(d.addresses.join(' '));
  return parts.join('  ');
}

function vxlanLine(v: VxlanReport): string {
  const parts = [deviceLine(v), `id ${v.id ?? '?'}`, `dstport ${v.port ?? '?'}`];
  if (v.local) parts.push(`local ${v.local}`);
  if (v.group) parts.push(`${isMulticast(v.group) ? 'group' : 'remote'} ${v.group}`);
  if (v.underlayIndex) parts.push(`dev ${v.underlay ?? `#${v.underlayIndex}`}`);
  parts.push(v.flags.join(' ') || 'nolearning');
  if (v.linkNetnsid !== undefined) parts.push(`link-netnsid ${v.linkNetnsid}`);
  return parts.join('  ');
}

function isMulticast(ip: string): boolean {
  const first = Number(ip.split('.')[0]);
  return first >= 224 && first <= 239;
}

function indent(lines: string[], by = '    '): string[] {
  return lines.map((l) => by + l);
}

export function formatNetwork(r: NetworkReport): string {
  const title = r.dockerName ?? r.name ?? r.storeKey;
  const lines = [`network ${title}  (docker id ${r.networkId.slice(0, 12)}, store key ${r.storeKey})`];
  // p2p: each host has its own remote (the other host); the stored option is the first creator's.
  const opts = Object.entries(r.options)
    .filter(([k]) => k !== 'mode' && !(k === 'remote' && r.remote))
    .map(([k, v]) => `${k}=${v}`);
  if (r.remote) opts.push(`remote=${r.remote}`);
  const v6 = r.subnet6 ? `  subnet6 ${r.subnet6}  gateway6 ${r.gateway6 ?? ''}` : '';
  lines.push(`  vni ${r.vni}  subnet ${r.subnet || '-'}  gateway ${r.gateway || '-'}${v6}  mtu ${r.mtu}  mode ${r.mode}${opts.length ? `  ${opts.join(' ')}` : ''}`);
  if (!r.namespace) {
    lines.push('  namespace: none on this host (no local container)');
  } else {
    lines.push(`  namespace ${r.namespace.path}`);
    lines.push(`  ${r.bridge ? deviceLine(r.bridge) : 'br0      MISSING'}`);
    lines.push(`  ${r.vxlan ? vxlanLine(r.vxlan) : 'vxlan0   MISSING'}`);
    lines.push(`  ports: ${r.ports.map((p) => `${p.name}${p.up ? '' : ' (down)'}`).join(' ') || 'none'}`);
    lines.push(`  neighbours (ip neigh show dev vxlan0): ${r.neighbours.length}`);
    lines.push(...indent(table(r.neighbours.map((n) => [n.ip, n.mac ? `lladdr ${n.mac}` : '', n.state]))));
    lines.push(`  fdb (bridge fdb show dev vxlan0): ${r.fdb.length}`);
    lines.push(...indent(table(r.fdb.map((f) => [f.mac, f.dst ? `dst ${f.dst}` : '', [...f.flags, ...(f.state === 'dynamic' ? [] : [f.state])].join(' ')]))));
  }
  lines.push(`  endpoints (store): ${r.endpoints.length}`);
  if (r.endpoints.length) {
    const rows = [['NAME', 'IP', 'MAC', 'LOCATOR', 'HOST', 'STATE']];
    for (const e of r.endpoints) {
      rows.push([e.container ?? e.name ?? e.id.slice(0, 12), [e.ip, e.ip6].filter(Boolean).join(' '), e.mac, e.locator, `${e.host}${e.local ? ' (this host)' : ''}`, e.joined ? 'joined' : 'created']);
    }
    lines.push(...indent(table(rows)));
  }
  if (r.names) {
    lines.push(`  names (DNS on ${dnsAddresses(r).join(' ')}): ${r.names.length}`);
    lines.push(...indent(table(r.names.map((n) => [n.names.join(','), [n.ip, n.ip6].filter(Boolean).join(' '), n.host]))));
  }
  if (r.differences) {
    if (r.differences.length === 0) lines.push('  check: ok (kernel matches the store)');
    else lines.push(`  check: ${r.differences.length} difference(s)`, ...r.differences.map((d) => `    - ${d}`));
  }
  return lines.join('\n');
}

/** Where the network's names are served: each gateway it has (a dual-stack network's both), port 53. */
export function dnsAddresses(r: Pick<NetworkReport, 'gateway' | 'gateway6'>): string[] {
  return [...(r.gateway ? [`${r.gateway}:53`] : []), ...(r.gateway6 ? [`[${r.gateway6}]:53`] : [])];
}

export function formatReport(report: InspectReport): string {
  const head = [
    `host ${report.host}  vtep ${report.vtep ?? '(not registered in the store)'}  store ${report.store}${report.storeError ? ` UNREACHABLE: ${report.storeError}` : ''}`,
    `netns dir ${report.netnsDir}  docker ${report.docker}`,
  ];
  const blocks = [head.join('\n'), ...report.networks.map(formatNetwork)];
  if (report.networks.length === 0) blocks.push(report.storeError ? 'networks unknown: the store cannot be read' : 'no tsoverlay network on this host');
  if (report.orphanNamespaces.length) {
    const what = report.storeError ? 'overlay namespaces on this host' : 'namespaces of no known network';
    blocks.push(`${what}: ${report.orphanNamespaces.join(' ')}`);
  }
  if (report.differences?.length) blocks.push(['host check:', ...report.differences.map((d) => `  - ${d}`)].join('\n'));
  return `${blocks.join('\n\n')}\n`;
}

/** Every difference of a checked report (host-level and per network, prefixed with the network). */
export function allDifferences(report: InspectReport): string[] {
  return [
    ...(report.differences ?? []),
    ...report.networks.flatMap((n) => (n.differences ?? []).map((d) => `${n.dockerName ?? n.storeKey}: ${d}`)),
  ];
}
