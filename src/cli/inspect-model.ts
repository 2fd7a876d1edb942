/**
 * `tsoverlay inspect`: the pure part. What a report holds (also its `--json` shape), how the
 * kernel's view of a network is compared against the store's (`--check`), and the
 * human-readable rendering. No I/O here: src/cli/inspect.ts gathers the inputs.
 */
import { vethNames } from '../dataplane/dataplane';
import type { OverlayView } from '../dataplane/dataplane';
import type { Peer, ResolutionMode } from '../dataplane/types';
import { IFF_UP, type LinkInfo } from '../dataplane/encode';
import type { FdbEntry, NeighbourEntry } from '../dataplane/peers';
import { VXLAN_PORT } from '../dataplane/links';

export const ZERO_MAC = '00:00:00:00:00:00';

export interface DeviceReport {
  name: string;
  index: number;
  kind?: string;
  up: boolean;
  mtu?: number;
  mac?: string;
  /** Name of the device's master (br0 for its ports). */
  master?: string;
  addresses: string[];
}

export interface VxlanReport extends DeviceReport {
  id?: number;
  port?: number;
  local?: string;
  /** p2p: the remote; multicast: the group. */
  group?: string;
  /** Underlay device index in the host namespace (multicast). */
  underlayIndex?: number;
  /** Its name, when inspect could resolve it in the host namespace. */
  underlay?: string;
  /** Which of proxy, learning, l2miss, l3miss are on. */
  flags: string[];
  /** Set when the UDP socket lives in another namespace than the device (the host's): it should. */
  linkNetnsid?: number;
}

export interface NeighbourReport {
  ip: string;
  mac?: string;
  state: string;
}

export interface FdbReport {
  mac: string;
  dst?: string;
  /** self (the vxlan device's own table) and/or master (learned/kept by br0). */
  flags: string[];
  state: 'permanent' | 'static' | 'dynamic';
}

export interface EndpointReport {
  id: string;
  /** Container name as Docker's IPAM request gave it (kept in the store). */
  name?: string;
  /** Container name according to the local Docker daemon (local endpoints, when reachable). */
  container?: string;
  ip: string;
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
  subnet: string;
  gateway: string;
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

function deviceReport(l: LinkInfo, links: LinkInfo[], addresses: OverlayView['addresses']): DeviceReport {
  const master = l.master !== undefined ? (links.find((x) => x.index === l.master)?.name ?? `#${l.master}`) : undefined;
  return {
    name: l.name,
    index: l.index,
    ...(l.kind ? { kind: l.kind } : {}),
    up: (l.flags & IFF_UP) !== 0,
    ...(l.mtu !== undefined ? { mtu: l.mtu } : {}),
    ...(l.mac ? { mac: l.mac } : {}),
    ...(master ? { master } : {}),
    addresses: addresses.filter((a) => a.index === l.index).map((a) => `${a.ip}/${a.prefix}`),
  };
}

function vxlanReport(l: LinkInfo, links: LinkInfo[], addresses: OverlayView['addresses']): VxlanReport {
  const v = l.vxlan ?? {};
  const flags = (['proxy', 'learning', 'l2miss', 'l3miss'] as const).filter((f) => !!v[f]);
  return {
    ...deviceReport(l, links, addresses),
    ...(v.id !== undefined ? { id: v.id } : {}),
    ...(v.port !== undefined ? { port: v.port } : {}),
    ...(v.local ? { local: v.local } : {}),
    ...(v.group ? { group: v.group } : {}),
    ...(v.link ? { underlayIndex: v.link } : {}),
    flags,
    ...(l.linkNetnsid !== undefined ? { linkNetnsid: l.linkNetnsid } : {}),
  };
}

/** The kernel half of a network report. */
export function kernelPart(view: OverlayView | undefined): Pick<NetworkReport, 'namespace' | 'bridge' | 'vxlan' | 'ports' | 'neighbours' | 'fdb'> {
  if (!view) return { ports: [], neighbours: [], fdb: [] };
  const br = view.links.find((l) => l.name === 'br0');
  const vx = view.links.find((l) => l.name === 'vxlan0');
  return {
    namespace: { path: view.netnsPath, epoch: view.epoch },
    ...(br ? { bridge: deviceReport(br, view.links, view.addresses) } : {}),
    ...(vx ? { vxlan: vxlanReport(vx, view.links, view.addresses) } : {}),
    ports: view.links
      .filter((l) => l.kind === 'veth' && br !== undefined && l.master === br.index)
      .map((l) => deviceReport(l, view.links, view.addresses)),
    neighbours: view.neighbours.map(neighbourReport).sort((a, b) => ipOrder(a.ip, b.ip)),
    fdb: view.fdb.map(fdbReport).sort((a, b) => a.mac.localeCompare(b.mac) || (a.dst ?? '').localeCompare(b.dst ?? '')),
  };
}

function ipOrder(a: string, b: string): number {
  const n = (ip: string) => ip.split('.').reduce((acc, x) => acc * 256 + Number(x), 0);
  return n(a) - n(b);
}

// ------------------------------------------------------------------ --check

/** What vxlan0 must look like for a mode: proxy + miss reports for static/miss, flooding for the others. */
export function expectedVxlanFlags(mode: ResolutionMode): string[] {
  return mode === 'static' || mode === 'miss' ? ['proxy', 'learning', 'l2miss', 'l3miss'] : ['learning'];
}

/**
 * Every difference between the kernel (the report's namespace, devices and tables) and the
 * store (network record, endpoints, desired peers) for one network on this host, as lines an
 * operator can act on. `vtep` is this host's registered VTEP (undefined: not registered).
 */
export function checkNetwork(r: NetworkReport, vtep: string | undefined): string[] {
  const out: string[] = [];
  const localJoined = r.endpoints.filter((e) => e.local && e.joined);
  if (!r.namespace) {
    if (localJoined.length > 0) out.push(`no overlay namespace, but ${localJoined.length} local endpoint(s) are joined in the store`);
    return out;
  }
  if (localJoined.length === 0) out.push(`namespace ${r.namespace.path} exists but no local endpoint is joined in the store (left over)`);

  const br = r.bridge;
  if (!br) out.push('br0 missing');
  else {
    if (br.kind !== undefined && br.kind !== 'bridge') out.push(`br0 is a ${br.kind}, not a bridge`);
    if (!br.up) out.push('br0 is down');
    if (br.mtu !== r.mtu) out.push(`br0 mtu ${br.mtu} != ${r.mtu}`);
    const prefix = r.subnet.split('/')[1];
    if (!br.addresses.includes(`${r.gateway}/${prefix}`)) out.push(`br0 lacks the gateway address ${r.gateway}/${prefix} (has ${br.addresses.join(', ') || 'none'})`);
  }

  const vx = r.vxlan;
  if (!vx) out.push('vxlan0 missing');
  else {
    if (vx.kind !== 'vxlan') out.push(`vxlan0 is a ${vx.kind ?? 'unknown device'}, not vxlan`);
    if (vx.id !== r.vni) out.push(`vxlan0 id ${vx.id} != VNI ${r.vni} in the store`);
    if (vx.port !== VXLAN_PORT) out.push(`vxlan0 dstport ${vx.port} != ${VXLAN_PORT}`);
    if (vx.mtu !== r.mtu) out.push(`vxlan0 mtu ${vx.mtu} != ${r.mtu}`);
    if (!vx.up) out.push('vxlan0 is down');
    if (vx.master !== 'br0') out.push(`vxlan0 is not a br0 port (master ${vx.master ?? 'none'})`);
    const want = expectedVxlanFlags(r.mode);
    const missing = want.filter((f) => !vx.flags.includes(f));
    const extra = vx.flags.filter((f) => !want.includes(f));
    if (missing.length || extra.length) {
      out.push(`vxlan0 flags [${vx.flags.join(' ')}] != [${want.join(' ')}] for mode=${r.mode}`);
    }
    if (vtep && vx.local !== vtep) out.push(`vxlan0 local ${vx.local ?? 'unset'} != this host's VTEP ${vtep}`);
    const wantGroup = r.mode === 'p2p' ? (r.remote ?? r.options.remote) : r.mode === 'multicast' ? r.options.group : undefined;
    if ((vx.group ?? undefined) !== wantGroup) out.push(`vxlan0 remote/group ${vx.group ?? 'unset'} != ${wantGroup ?? 'unset'}`);
    if (vx.linkNetnsid === undefined) out.push('vxlan0 has its UDP socket inside the overlay namespace (not created from the host namespace)');
  }

  for (const e of localJoined) {
    const port = vethNames(e.id).bridgePortName;
    const p = r.ports.find((x) => x.name === port);
    if (!p) out.push(`local endpoint ${label(e)} is joined but its br0 port ${port} is missing`);
    else if (!p.up) out.push(`br0 port ${port} of ${label(e)} is down`);
  }

  out.push(...checkPeers(r));
  return out;
}

function label(e: EndpointReport): string {
  const name = e.container ?? e.name;
  return name ? `${name} (${e.ip})` : e.ip;
}

/** Neighbour/FDB entries against desired peers, by mode. */
export function checkPeers(r: Pick<NetworkReport, 'mode' | 'neighbours' | 'fdb' | 'desiredPeers' | 'remote' | 'options'>): string[] {
  const out: string[] = [];
  const permNeigh = new Map(r.neighbours.filter((n) => n.state.includes('PERMANENT')).map((n) => [n.ip, n]));
  const selfFdb = new Map<string, FdbReport[]>();
  for (const f of r.fdb) {
    if (!f.flags.includes('self') || f.state !== 'permanent' || f.mac === ZERO_MAC) continue;
    selfFdb.set(f.mac, [...(selfFdb.get(f.mac) ?? []), f]);
  }
  const wantIp = new Map(r.desiredPeers.map((p) => [p.ip, p]));
  const wantMac = new Map(r.desiredPeers.map((p) => [p.mac.toLowerCase(), p]));

  if (r.mode === 'static' || r.mode === 'miss') {
    for (const p of r.desiredPeers) {
      const mac = p.mac.toLowerCase();
      const n = permNeigh.get(p.ip);
      const fdb = selfFdb.get(mac) ?? [];
      if (r.mode === 'miss' && !n && fdb.length === 0) continue; // not asked for yet: fine
      if (!n) out.push(`missing neighbour ${p.ip} lladdr ${mac} PERMANENT (peer at ${p.vtep})`);
      else if (n.mac !== mac) out.push(`neighbour ${p.ip} has lladdr ${n.mac ?? 'none'}, the store says ${mac}`);
      if (fdb.length === 0) out.push(`missing fdb ${mac} dst ${p.vtep} self permanent (peer ${p.ip})`);
      else if (!fdb.some((f) => f.dst === p.vtep)) out.push(`fdb ${mac} points at ${fdb.map((f) => f.dst).join(', ')}, the store says ${p.vtep}`);
    }
    for (const n of permNeigh.values()) {
      if (!wantIp.has(n.ip)) out.push(`stale neighbour ${n.ip} lladdr ${n.mac ?? 'none'} PERMANENT: no such peer in the store`);
    }
    for (const [mac, entries] of selfFdb) {
      if (!wantMac.has(mac)) for (const f of entries) out.push(`stale fdb ${mac} dst ${f.dst ?? 'none'} self permanent: no such peer in the store`);
    }
  } else {
    const want = r.mode === 'p2p' ? (r.remote ?? r.options.remote) : r.options.group;
    const dflt = r.fdb.filter((f) => f.mac === ZERO_MAC && f.flags.includes('self'));
    if (want && !dflt.some((f) => f.dst === want)) {
      out.push(`missing default fdb ${ZERO_MAC} dst ${want} self permanent (unknown traffic has nowhere to go)`);
    }
    for (const [mac, entries] of selfFdb) for (const f of entries) out.push(`unexpected permanent fdb ${mac} dst ${f.dst ?? 'none'} in mode=${r.mode}`);
  }
  return out;
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
  lines.push(`  vni ${r.vni}  subnet ${r.subnet}  gateway ${r.gateway}  mtu ${r.mtu}  mode ${r.mode}${opts.length ? `  ${opts.join(' ')}` : ''}`);
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
      rows.push([e.container ?? e.name ?? e.id.slice(0, 12), e.ip, e.mac, e.locator, `${e.host}${e.local ? ' (this host)' : ''}`, e.joined ? 'joined' : 'created']);
    }
    lines.push(...indent(table(rows)));
  }
  if (r.differences) {
    if (r.differences.length === 0) lines.push('  check: ok (kernel matches the store)');
    else lines.push(`  check: ${r.differences.length} difference(s)`, ...r.differences.map((d) => `    - ${d}`));
  }
  return lines.join('\n');
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
