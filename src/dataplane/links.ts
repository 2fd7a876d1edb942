/**
 * Devices: idempotent "ensure" helpers in the spirit of flannel's ensureLink — reuse a device
 * that already matches, adjust what can be adjusted in place (MTU, master, up), and replace one
 * that cannot (a vxlan0 with another VNI or port). Every multi-step creation undoes what it
 * created when a later step fails.
 */
import { randomBytes } from 'node:crypto';
import { AttrStream, ifla } from 'netlink';
import type { StreamData } from 'netlink';
import {
  AF_INET,
  AF_INET6,
  IFF_UP,
  IFLA_IFNAME,
  LinkInfo,
  RTM_DELADDR,
  RTM_DELLINK,
  RTM_GETADDR,
  RTM_GETLINK,
  RTM_NEWADDR,
  RTM_NEWLINK,
  attr,
  cstring,
  encodeIfInfo,
  encodeVethLinkInfo,
  formatIP,
  parseAttrs,
  parseIP,
  parseIPv4Cidr,
  parseIPv6Cidr,
  parseLinkMessage,
  parseMac,
} from './encode';
import { NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NlSocket, isNetlinkError } from './nlsock';
import { BRIDGE_NAME, VXLAN_PORT, type VxlanSpec, bridgeDifferences, firstIncompat, vxlanDifferences } from './overlay-check';
import { deviceState, vxlanState } from './overlay-state';

function streamToBuffer(x: StreamData): Buffer {
  const s = new AttrStream();
  s.emit(x);
  return Buffer.concat(s.bufs);
}

function linkPayload(index: number, attrs: ifla.LinkAttrs, flags = 0, change = 0): Buffer {
  return Buffer.concat([encodeIfInfo({ index, flags, change }), streamToBuffer(ifla.formatLinkAttrs(attrs))]);
}

// ---------------------------------------------------------------- queries

/** The device called `name` in the socket's namespace, or undefined. */
export async function getLink(sock: NlSocket, name: string): Promise<LinkInfo | undefined> {
  try {
    const msgs = await sock.request(RTM_GETLINK, 0, linkPayload(0, { ifname: name }), `get link ${name}`);
    const m = msgs.find((x) => x.type === RTM_NEWLINK);
    return m ? parseLinkMessage(m.data) : undefined;
  } catch (e) {
    if (isNetlinkError(e, 'ENODEV')) return undefined;
    throw e;
  }
}

/**
 * The index of the device called `name`, or undefined. The peer paths look vxlan0 up on every
 * call (it may have been rebuilt) and need nothing else of it: the request is built by hand and
 * only the reply's header is read, where getLink decodes every attribute.
 */
export async function linkIndex(sock: NlSocket, name: string): Promise<number | undefined> {
  try {
    const msgs = await sock.request(RTM_GETLINK, 0, Buffer.concat([encodeIfInfo(), attr(IFLA_IFNAME, cstring(name))]), `get link ${name}`);
    const m = msgs.find((x) => x.type === RTM_NEWLINK);
    return m ? m.data.readInt32LE(4) : undefined;
  } catch (e) {
    if (isNetlinkError(e, 'ENODEV')) return undefined;
    throw e;
  }
}

export async function listLinks(sock: NlSocket): Promise<LinkInfo[]> {
  const msgs = await sock.dump(RTM_GETLINK, encodeIfInfo(), 'dump links');
  return msgs.filter((m) => m.type === RTM_NEWLINK).map((m) => parseLinkMessage(m.data));
}

export interface AddressInfo {
  index: number;
  ip: string;
  prefix: number;
}

export function listIPv4Addresses(sock: NlSocket): Promise<AddressInfo[]> {
  return listAddresses(sock, AF_INET);
}

/** The addresses of one family (AF_INET, AF_INET6) in the socket's namespace; IPv6 link-local ones (the kernel's own) left out. */
export async function listAddresses(sock: NlSocket, family: number): Promise<AddressInfo[]> {
  const req = Buffer.alloc(8);
  req.writeUInt8(family, 0);
  const msgs = await sock.dump(RTM_GETADDR, req, family === AF_INET6 ? 'dump IPv6 addresses' : 'dump addresses');
  const out: AddressInfo[] = [];
  for (const m of msgs) {
    if (m.type !== RTM_NEWADDR || m.data.readUInt8(0) !== family) continue;
    const a = parseAttrs(m.data.subarray(8));
    const local = family === AF_INET6 ? (a.get(1) ?? a.get(2)) : (a.get(2) ?? a.get(1));
    if (!local || local.length !== (family === AF_INET6 ? 16 : 4)) continue;
    if (family === AF_INET6 && local[0] === 0xfe && (local[1]! & 0xc0) === 0x80) continue;
    out.push({ index: m.data.readUInt32LE(4), prefix: m.data.readUInt8(1), ip: formatIP(local)! });
  }
  return out;
}

/** IPv4 then IPv6 (not link-local) addresses of the socket's namespace. */
export async function listAllAddresses(sock: NlSocket): Promise<AddressInfo[]> {
  const [v4, v6] = await Promise.all([listAddresses(sock, AF_INET), listAddresses(sock, AF_INET6)]);
  return [...v4, ...v6];
}

// ---------------------------------------------------------------- simple changes

export interface LinkChange {
  up?: boolean;
  master?: number;
  mtu?: number;
  mac?: Buffer;
}

export async function setLink(sock: NlSocket, index: number, c: LinkChange): Promise<void> {
  const attrs: ifla.LinkAttrs = {};
  if (c.master !== undefined) attrs.master = c.master;
  if (c.mtu !== undefined) attrs.mtu = c.mtu;
  if (c.mac !== undefined) attrs.address = c.mac;
  const change = c.up === undefined ? 0 : IFF_UP;
  const flags = c.up ? IFF_UP : 0;
  await sock.request(RTM_NEWLINK, 0, linkPayload(index, attrs, flags, change), `set link ${index}`);
}

/** Deletes a device by index or name; a device that is already gone is fine. */
export async function deleteLink(sock: NlSocket, which: number | string): Promise<void> {
  const payload = typeof which === 'number' ? linkPayload(which, {}) : linkPayload(0, { ifname: which });
  try {
    await sock.request(RTM_DELLINK, 0, payload, `delete link ${which}`);
  } catch (e) {
    if (!isNetlinkError(e, 'ENODEV', 'ENOENT')) throw e;
  }
}

/** Brings `lo` up (a fresh namespace has it down). */
export async function ensureLoopbackUp(sock: NlSocket): Promise<void> {
  const lo = await getLink(sock, 'lo');
  if (lo && !(lo.flags & IFF_UP)) await setLink(sock, lo.index, { up: true });
}

// ---------------------------------------------------------------- bridge

export interface EnsureResult {
  link: LinkInfo;
  created: boolean;
}

async function mustGet(sock: NlSocket, name: string): Promise<LinkInfo> {
  const l = await getLink(sock, name);
  if (!l) throw new Error(`device ${name} vanished right after it was created`);
  return l;
}

/**
 * An address of br0's own (random, locally administered, unicast). Left to the kernel, a bridge
 * takes the lowest of its ports' addresses and changes it whenever a port with a lower one joins
 * or that port leaves; containers that had resolved the gateway (br0: the DNS listener) then
 * send to an address br0 drops as not its own until their neighbour entry expires.
 */
function randomBridgeMac(): Buffer {
  const mac = randomBytes(6);
  mac[0] = (mac[0]! & 0xfe) | 0x02;
  return mac;
}

/** A bridge `name` at `mtu`, up (see overlay-check.bridgeDifferences). A non-bridge device of that name is replaced. */
export async function ensureBridge(sock: NlSocket, name: string, mtu: number): Promise<EnsureResult> {
  let link = await getLink(sock, name);
  let created = false;
  let fix = link ? bridgeDifferences(deviceState(link, () => undefined), { mtu }) : [];
  if (link && fix.some((d) => d.rebuild)) {
    await deleteLink(sock, link.index);
    link = undefined;
  }
  if (!link) {
    const linkinfo = streamToBuffer(ifla.formatInfo({ kind: 'bridge' }));
    await sock.request(
      RTM_NEWLINK,
      NLM_F_CREATE | NLM_F_EXCL,
      linkPayload(0, { ifname: name, mtu, linkinfo, address: randomBridgeMac() }),
      `create bridge ${name}`,
    );
    created = true;
    link = await mustGet(sock, name);
    fix = bridgeDifferences(deviceState(link, () => undefined), { mtu });
  } else if (link.mac) {
    // A bridge made before it got an address of its own: setting the one it has pins it.
    await setLink(sock, link.index, { mac: parseMac(link.mac) });
  }
  try {
    if (fix.length > 0) await setLink(sock, link.index, { mtu, up: true });
  } catch (e) {
    if (created) await deleteLink(sock, link.index).catch((err: unknown) => leftBehind(e, link.name, err));
    throw e;
  }
  return { link: (await getLink(sock, name)) ?? link, created };
}

/**
 * Exactly one address of `family` on device `index`: `cidr` (others of that family are removed,
 * IPv6 link-local ones excepted; undefined removes them all). An IPv6 address is added `nodad`:
 * the gateway is usable at once, and no other node on the overlay may claim it anyway.
 */
export async function ensureAddress(sock: NlSocket, index: number, cidr: string | undefined, family: number = AF_INET): Promise<void> {
  const v6 = family === AF_INET6;
  const parsed = cidr === undefined ? undefined : v6 ? parseIPv6Cidr(cidr) : parseIPv4Cidr(cidr);
  const want = parsed && formatIP(parsed.ip);
  const current = (await listAddresses(sock, family)).filter((a) => a.index === index);
  for (const a of current) {
    if (parsed && a.ip === want && a.prefix === parsed.prefix) continue;
    await sock.request(RTM_DELADDR, 0, ifaddr(family, index, parseIP(a.ip), a.prefix), `delete address ${a.ip}`).catch((e) => {
      if (!isNetlinkError(e, 'EADDRNOTAVAIL', 'ENOENT')) throw e;
    });
  }
  if (parsed && !current.some((a) => a.ip === want && a.prefix === parsed.prefix)) {
    await sock.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, ifaddr(family, index, parsed.ip, parsed.prefix), `add address ${cidr}`);
  }
}

const IFA_F_NODAD = 0x02;

function ifaddr(family: number, index: number, ip: Buffer, prefix: number): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt8(family, 0);
  h.writeUInt8(prefix, 1);
  if (family === AF_INET6) h.writeUInt8(IFA_F_NODAD, 2);
  h.writeUInt32LE(index, 4);
  // IPv6 takes IFA_ADDRESS alone (IFA_LOCAL would have to match it).
  return family === AF_INET6 ? Buffer.concat([h, attr(1, ip)]) : Buffer.concat([h, attr(2, ip), attr(1, ip)]);
}

// ---------------------------------------------------------------- vxlan

/** The IFLA_INFO_DATA attributes for a vxlan spec (dstport is a big-endian u16). */
export function vxlanAttributes(s: VxlanSpec): ifla.Vxlan {
  if (!Number.isInteger(s.vni) || s.vni < 0) throw new Error(`invalid VNI ${s.vni}`);
  const port = Buffer.alloc(2);
  port.writeUInt16BE(s.port ?? VXLAN_PORT, 0);
  const v: ifla.Vxlan = {
    id: s.vni,
    port,
    learning: s.learning ? 1 : 0,
    proxy: s.proxy ? 1 : 0,
    l2miss: s.proxy ? 1 : 0,
    l3miss: s.proxy ? 1 : 0,
  };
  // An IPv6 underlay: IFLA_VXLAN_LOCAL6/GROUP6, and the FDB `dst` entries are IPv6 too.
  if (s.local) {
    const b = parseIP(s.local);
    if (b.length === 16) v.local6 = b;
    else v.local = b;
  }
  if (s.group) {
    const b = parseIP(s.group);
    if (b.length === 16) v.group6 = b;
    else v.group = b;
  }
  if (s.underlayIndex !== undefined) v.link = s.underlayIndex;
  return v;
}

/**
 * The vxlan device `spec.name` in the overlay namespace (socket `ns`), enslaved to `masterIndex`, up.
 * An existing device is judged by overlay-check.vxlanDifferences (the same lines `inspect --check`
 * prints): one that differs in what only a new device fixes is replaced, MTU, master and state are
 * set in place.
 *
 * It is created by an RTM_NEWLINK sent on a socket in the plugin's (host) namespace carrying
 * IFLA_NET_NS_FD of the overlay namespace: the kernel builds the device directly in the overlay
 * namespace but with the sender's namespace as its link namespace, so its UDP socket is bound in
 * the host namespace (`ip -d link` shows link-netnsid) — what create-then-move achieves, in one
 * atomic step and without a temporary name that could clash in the host namespace.
 */
export async function ensureVxlan(
  host: NlSocket,
  ns: NlSocket,
  nsFd: number,
  spec: VxlanSpec,
  masterIndex: number,
): Promise<EnsureResult & { replaced?: string }> {
  // masterIndex is br0's: the validators know the overlay's bridge by name.
  const observe = (l: LinkInfo) => vxlanDifferences(vxlanState(l, (i) => (i === masterIndex ? BRIDGE_NAME : undefined)), spec);
  let link = await getLink(ns, spec.name);
  let replaced: string | undefined;
  let fix = link ? observe(link) : [];
  if (link) replaced = firstIncompat(fix);
  if (link && replaced) {
    await deleteLink(ns, link.index);
    link = undefined;
  }
  let created = false;
  if (!link) {
    const data = streamToBuffer(ifla.formatVxlan(vxlanAttributes(spec)));
    const linkinfo = streamToBuffer(ifla.formatInfo({ kind: 'vxlan', data }));
    await host.request(
      RTM_NEWLINK,
      NLM_F_CREATE | NLM_F_EXCL,
      linkPayload(0, { ifname: spec.name, mtu: spec.mtu, netNsFd: nsFd, linkinfo }),
      `create vxlan ${spec.name} id ${spec.vni}`,
    );
    created = true;
    link = await mustGet(ns, spec.name);
    fix = observe(link);
  }
  try {
    const wrong = new Set(fix.map((d) => d.field));
    if (wrong.has('mtu')) await setLink(ns, link.index, { mtu: spec.mtu });
    if (wrong.has('master')) await setLink(ns, link.index, { master: masterIndex });
    if (wrong.has('up')) await setLink(ns, link.index, { up: true });
  } catch (e) {
    if (created) await deleteLink(ns, link.index).catch((err: unknown) => leftBehind(e, link.name, err));
    throw e;
  }
  const r: EnsureResult & { replaced?: string } = { link: (await getLink(ns, spec.name)) ?? link, created };
  if (replaced) r.replaced = replaced;
  return r;
}

// ---------------------------------------------------------------- veth

export interface VethSpec {
  /** End left in the host namespace (for Docker to move into the container). */
  hostName: string;
  /** End created in the overlay namespace as a bridge port. */
  peerName: string;
  mtu: number;
  mac: Buffer;
  masterIndex: number;
}

/**
 * The pair in one message, sent in the overlay namespace: the bridge port (`peerName`) is the
 * device created there, enslaved to `masterIndex` and up; its veth peer, the container's end
 * (`hostName`, with the endpoint's MAC), is created in the plugin's namespace (IFLA_NET_NS_FD
 * inside VETH_INFO_PEER). One rtnl round trip instead of two (create, then enslave), and nothing
 * to roll back: if enslaving fails, the kernel unregisters both ends before it answers.
 */
export async function createVeth(ns: NlSocket, hostNsFd: number, v: VethSpec): Promise<void> {
  const linkinfo = encodeVethLinkInfo({ ifname: v.hostName, mtu: v.mtu, address: v.mac, netNsFd: hostNsFd });
  await ns.request(
    RTM_NEWLINK,
    NLM_F_CREATE | NLM_F_EXCL,
    linkPayload(0, { ifname: v.peerName, mtu: v.mtu, master: v.masterIndex, linkinfo }, IFF_UP, IFF_UP),
    `create veth ${v.hostName}/${v.peerName}`,
  );
}

/** A failed rollback is told in the error the caller sees, with what it left in the kernel. */
function leftBehind(cause: unknown, name: string, err: unknown): void {
  if (cause instanceof Error) cause.message += `; the rollback could not delete ${name}: ${(err as Error).message}`;
}
