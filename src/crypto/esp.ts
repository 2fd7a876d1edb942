/**
 * The IPsec state of encrypted networks on one host, computed from who the peers are and the
 * primary key epoch, and kept equal to the kernel's.
 *
 * Encrypted networks use a VXLAN UDP port of their own, so every policy here selects exactly
 * their traffic (proto UDP, that destination port), whatever the VNI:
 *  - host-wide `in` policy: UDP to the port must have come through one of our ESP SAs (any
 *    peer); cleartext VXLAN on that port is dropped by the kernel, whoever sends it;
 *  - host-wide `out` policy, lowest priority: block. UDP to the port towards a host we hold no
 *    SA for is dropped, never sent in clear;
 *  - per peer, an `out` policy naming the SPI of the send SA of the primary epoch;
 *  - per peer, receive SAs for the ring's epochs and the send SA (see ring.ts), each with a
 *    selector of that peer's address and the port, so an SA decrypts only that peer's VXLAN.
 *
 * `plan` is pure: it compares kernel dumps with the desired state and returns the steps in
 * make-before-break order. `EspManager` runs them; `inspect --check` prints them.
 */
import {
  IPPROTO_UDP,
  type ParsedPolicy,
  type ParsedSa,
  type XfrmClient,
  type XfrmPolicy,
  type XfrmSa,
  type XfrmSelector,
  describeSa,
  describeSelector,
} from '../dataplane/xfrm';
import { type HostIdentity, derivePairKeys, sharedSecret } from './derive';
import type { HostKeyPair } from './host-key';
import { type PeerSaState, type RingOp, planPeer } from './ring';

/** reqid of every SA and template tsoverlay makes: how its SAs are told from anyone else's. */
export const ESP_REQID = 0x74736f76;
/** VXLAN UDP port of encrypted networks (plain networks keep 4789). */
export { DEFAULT_ENCRYPTED_VXLAN_PORT } from '../dataplane/overlay-check';
import { DEFAULT_ENCRYPTED_VXLAN_PORT } from '../dataplane/overlay-check';
export const PEER_POLICY_PRIORITY = 100;
export const HOST_POLICY_PRIORITY = 200;
/**
 * Epochs a kernel SA is recognised as, around the primary P: the ring's P-1…P+1 and P-2 (left
 * from the previous ring). Four consecutive epochs, so their SPIs (which carry the epoch mod 4)
 * never coincide; an SA of any other epoch is not ours any more and goes.
 */
const EPOCHS_BEFORE = 2;
const EPOCHS_AFTER = 1;

export interface EspSelf {
  identity: HostIdentity;
  key: HostKeyPair;
  vtep: string;
}

export interface EspPeer {
  identity: HostIdentity;
  vtep: string;
}

export type EspStep =
  | { kind: 'add-sa'; sa: XfrmSa; why: string }
  | { kind: 'del-sa'; id: { src: string; dst: string; spi: number }; why: string }
  | { kind: 'set-policy'; policy: XfrmPolicy; why: string }
  | { kind: 'del-policy'; dir: 'in' | 'out'; selector: XfrmSelector; why: string };

export interface KernelEsp {
  sas: ParsedSa[];
  policies: ParsedPolicy[];
}

function pairSelector(src: string, dst: string, port: number): XfrmSelector {
  return { src, srcPrefix: 32, dst, dstPrefix: 32, proto: IPPROTO_UDP, dport: port };
}

function anySelector(port: number): XfrmSelector {
  return { src: '0.0.0.0', srcPrefix: 0, dst: '0.0.0.0', dstPrefix: 0, proto: IPPROTO_UDP, dport: port };
}

/** The two host-wide policies of encrypted networks on `port`. */
export function hostPolicies(port: number): XfrmPolicy[] {
  return [
    {
      dir: 'in',
      selector: anySelector(port),
      priority: HOST_POLICY_PRIORITY,
      action: 'allow',
      tmpls: [{ src: '0.0.0.0', dst: '0.0.0.0', spi: 0, reqid: ESP_REQID }],
    },
    { dir: 'out', selector: anySelector(port), priority: HOST_POLICY_PRIORITY, action: 'block', tmpls: [] },
  ];
}

function sameSelector(a: XfrmSelector, b: XfrmSelector): boolean {
  return (
    a.src === b.src &&
    a.dst === b.dst &&
    a.srcPrefix === b.srcPrefix &&
    a.dstPrefix === b.dstPrefix &&
    a.proto === b.proto &&
    a.dport === b.dport &&
    (a.sport ?? 0) === (b.sport ?? 0)
  );
}

function samePolicy(k: ParsedPolicy, p: XfrmPolicy): boolean {
  return (
    k.dir === p.dir &&
    k.action === p.action &&
    k.priority === p.priority &&
    sameSelector(k.selector, p.selector) &&
    k.tmpls.length === p.tmpls.length &&
    k.tmpls.every((t, i) => {
      const w = p.tmpls[i]!;
      return t.src === w.src && t.dst === w.dst && t.spi === w.spi && t.reqid === w.reqid;
    })
  );
}

/** Our policies: UDP to the encrypted port. */
export function isOurPolicy(p: ParsedPolicy, port: number): boolean {
  return p.selector.proto === IPPROTO_UDP && p.selector.dport === port && (p.dir === 'in' || p.dir === 'out');
}

export function isOurSa(sa: ParsedSa): boolean {
  return sa.reqid === ESP_REQID && sa.proto === 50;
}

interface Derived {
  epoch: number;
  rx: XfrmSa;
  tx: XfrmSa;
}

/** The SAs of the pair (self, peer) for the epochs around `primary`. */
function derivedWindow(self: EspSelf, peer: EspPeer, primary: number, port: number): Map<number, Derived> {
  const secret = sharedSecret(self.key, peer.identity.publicKey);
  const out = new Map<number, Derived>();
  for (let e = Math.max(0, primary - EPOCHS_BEFORE); e <= primary + EPOCHS_AFTER; e++) {
    const k = derivePairKeys({ identity: self.identity, key: self.key }, peer.identity, e, secret);
    out.set(e, {
      epoch: e,
      rx: { src: peer.vtep, dst: self.vtep, spi: k.in.spi, reqid: ESP_REQID, key: k.in.key, selector: pairSelector(peer.vtep, self.vtep, port) },
      tx: { src: self.vtep, dst: peer.vtep, spi: k.out.spi, reqid: ESP_REQID, key: k.out.key, selector: pairSelector(self.vtep, peer.vtep, port) },
    });
  }
  return out;
}

const saKey = (s: { src: string; dst: string; spi: number }): string => `${s.src}>${s.dst}>${s.spi}`;

function matches(k: ParsedSa, want: XfrmSa): boolean {
  return (
    k.src === want.src &&
    k.dst === want.dst &&
    k.spi === want.spi &&
    k.mode === 0 &&
    k.key.equals(want.key) &&
    k.selector !== undefined &&
    want.selector !== undefined &&
    sameSelector(k.selector, want.selector)
  );
}

/**
 * The steps that take the kernel (`kernel`, a dump) to the desired state: make before break.
 * Order: host-wide policies; per peer the ring's plan (receive SAs, send SA, policy switch,
 * old SAs); then whatever of ours belongs to no current peer (policy first, then SAs). A peer
 * whose public key is unusable is skipped and reported in `errors`, not fatal for the others.
 */
export function plan(
  kernel: KernelEsp,
  self: EspSelf,
  peers: readonly EspPeer[],
  primary: number,
  port: number,
): { steps: EspStep[]; errors: string[] } {
  const steps: EspStep[] = [];
  const errors: string[] = [];
  const ourSas = kernel.sas.filter(isOurSa);
  const ourPolicies = kernel.policies.filter((p) => isOurPolicy(p, port));
  const claimedSas = new Set<string>();
  const claimedPolicies = new Set<ParsedPolicy>();

  for (const hp of hostPolicies(port)) {
    const k = ourPolicies.find((p) => p.dir === hp.dir && sameSelector(p.selector, hp.selector));
    if (k) claimedPolicies.add(k);
    if (!k || !samePolicy(k, hp)) steps.push({ kind: 'set-policy', policy: hp, why: `host-wide ${hp.dir} policy for UDP ${port}` });
  }

  const seenVteps = new Set<string>();
  for (const peer of peers) {
    if (peer.vtep === self.vtep || seenVteps.has(peer.vtep)) continue;
    seenVteps.add(peer.vtep);
    let window: Map<number, Derived>;
    try {
      window = derivedWindow(self, peer, primary, port);
    } catch (e) {
      errors.push(`peer ${peer.identity.name} (${peer.vtep}): ${(e as Error).message}`);
      continue;
    }
    // What the kernel holds towards this peer, in epochs of the ring.
    const rx = new Set<number>();
    const tx = new Set<number>();
    const txBySpi = new Map<number, number>();
    for (const d of window.values()) {
      txBySpi.set(d.tx.spi, d.epoch);
      const krx = ourSas.find((s) => matches(s, d.rx));
      if (krx) {
        rx.add(d.epoch);
        claimedSas.add(saKey(krx));
      }
      const ktx = ourSas.find((s) => matches(s, d.tx));
      if (ktx) {
        tx.add(d.epoch);
        claimedSas.add(saKey(ktx));
      }
    }
    const sel = pairSelector(self.vtep, peer.vtep, port);
    const kpol = ourPolicies.find((p) => p.dir === 'out' && sameSelector(p.selector, sel));
    let policy: number | undefined;
    if (kpol) {
      claimedPolicies.add(kpol);
      const e = kpol.tmpls.length === 1 ? txBySpi.get(kpol.tmpls[0]!.spi) : undefined;
      const wellFormed = e !== undefined && samePolicy(kpol, peerPolicy(self, peer, window.get(e)!.tx.spi, port));
      // A policy that points at no SA of the ring, or differs otherwise, is rewritten.
      policy = wellFormed ? e : -1;
    }
    const state: PeerSaState = { rx, tx, policy };
    for (const op of planPeer(state, primary)) steps.push(toStep(op, self, peer, window, port));
  }

  // Ours, but for no current peer (a host that left, an old address, an SA of a far epoch).
  const gonePolicies = ourPolicies.filter((p) => !claimedPolicies.has(p));
  for (const p of gonePolicies) {
    steps.push({ kind: 'del-policy', dir: p.dir === 'in' ? 'in' : 'out', selector: p.selector, why: `no longer wanted: ${p.dir} ${describeSelector(p.selector)}` });
  }
  // An SA at a destination and SPI being added again (other key) is replaced by that add.
  const replaced = new Set(steps.flatMap((s) => (s.kind === 'add-sa' ? [`${s.sa.dst}>${s.sa.spi}`] : [])));
  const goneSas = ourSas.filter((s) => !claimedSas.has(saKey(s)) && !replaced.has(`${s.dst}>${s.spi}`));
  // Send SAs before receive SAs: the peer may still be sending to us for a moment.
  goneSas.sort((a, b) => Number(b.src === self.vtep) - Number(a.src === self.vtep));
  for (const s of goneSas) steps.push({ kind: 'del-sa', id: { src: s.src, dst: s.dst, spi: s.spi }, why: `no longer wanted: SA ${describeSa(s)}` });
  return { steps, errors };
}

function peerPolicy(self: EspSelf, peer: EspPeer, spi: number, port: number): XfrmPolicy {
  return {
    dir: 'out',
    selector: pairSelector(self.vtep, peer.vtep, port),
    priority: PEER_POLICY_PRIORITY,
    action: 'allow',
    tmpls: [{ src: self.vtep, dst: peer.vtep, spi, reqid: ESP_REQID }],
  };
}

function toStep(op: RingOp, self: EspSelf, peer: EspPeer, window: Map<number, Derived>, port: number): EspStep {
  const who = `${peer.identity.name} (${peer.vtep})`;
  switch (op.kind) {
    case 'add-rx':
      return { kind: 'add-sa', sa: window.get(op.epoch)!.rx, why: `receive SA from ${who}, epoch ${op.epoch}` };
    case 'add-tx':
      return { kind: 'add-sa', sa: window.get(op.epoch)!.tx, why: `send SA to ${who}, epoch ${op.epoch}` };
    case 'set-policy':
      return { kind: 'set-policy', policy: peerPolicy(self, peer, window.get(op.epoch)!.tx.spi, port), why: `send to ${who} with epoch ${op.epoch}` };
    case 'del-tx':
      return { kind: 'del-sa', id: window.get(op.epoch)!.tx, why: `old send SA to ${who}, epoch ${op.epoch}` };
    case 'del-rx':
      return { kind: 'del-sa', id: window.get(op.epoch)!.rx, why: `old receive SA from ${who}, epoch ${op.epoch}` };
  }
}

/** The steps to remove every SA and policy of encrypted networks (the last one went away). */
export function planRemoveAll(kernel: KernelEsp, port: number): EspStep[] {
  const steps: EspStep[] = [];
  const pols = kernel.policies.filter((p) => isOurPolicy(p, port));
  // Per-peer policies, then the host-wide in policy, the block policy last: nothing goes out in clear meanwhile.
  pols.sort((a, b) => a.priority - b.priority || Number(a.action === 'block') - Number(b.action === 'block'));
  for (const p of pols) steps.push({ kind: 'del-policy', dir: p.dir === 'in' ? 'in' : 'out', selector: p.selector, why: 'encryption off' });
  for (const s of kernel.sas.filter(isOurSa)) steps.push({ kind: 'del-sa', id: { src: s.src, dst: s.dst, spi: s.spi }, why: 'encryption off' });
  return steps;
}

export function describeStep(s: EspStep): string {
  switch (s.kind) {
    case 'add-sa':
      return `add SA ${describeSa(s.sa)} (${s.why})`;
    case 'del-sa':
      return `delete SA ${describeSa(s.id)} (${s.why})`;
    case 'set-policy':
      return `set ${s.policy.dir} policy ${describeSelector(s.policy.selector)} (${s.why})`;
    case 'del-policy':
      return `delete ${s.dir} policy ${describeSelector(s.selector)} (${s.why})`;
  }
}

export interface ApplyResult {
  steps: number;
  errors: string[];
  /** SAs and policies of ours in the kernel afterwards (counted from the desired state). */
  sas: number;
  policies: number;
}

/** Runs plans against one namespace's xfrm tables, one at a time. */
export class EspManager {
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    readonly xfrm: XfrmClient,
    readonly port: number = DEFAULT_ENCRYPTED_VXLAN_PORT,
  ) {}

  async readKernel(): Promise<KernelEsp> {
    const sas = await this.xfrm.listSas();
    const policies = await this.xfrm.listPolicies();
    return { sas, policies };
  }

  /** Makes the kernel hold exactly the SAs and policies for these peers at this epoch. */
  apply(self: EspSelf, peers: readonly EspPeer[], primary: number): Promise<ApplyResult> {
    return this.serial(async () => {
      const { steps, errors } = plan(await this.readKernel(), self, peers, primary, this.port);
      for (const s of steps) await this.run(s);
      const after = await this.readKernel();
      return {
        steps: steps.length,
        errors,
        sas: after.sas.filter(isOurSa).length,
        policies: after.policies.filter((p) => isOurPolicy(p, this.port)).length,
      };
    });
  }

  /** The differences between the kernel and the desired state, as text (empty: in sync). */
  check(self: EspSelf, peers: readonly EspPeer[], primary: number): Promise<string[]> {
    return this.serial(async () => {
      const { steps, errors } = plan(await this.readKernel(), self, peers, primary, this.port);
      return [...errors, ...steps.map(describeStep)];
    });
  }

  /** Removes every SA and policy of encrypted networks. */
  removeAll(): Promise<number> {
    return this.serial(async () => {
      const steps = planRemoveAll(await this.readKernel(), this.port);
      for (const s of steps) await this.run(s);
      return steps.length;
    });
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const r = this.chain.then(fn, fn);
    this.chain = r.catch(() => undefined);
    return r;
  }

  private async run(s: EspStep): Promise<void> {
    switch (s.kind) {
      case 'add-sa':
        try {
          await this.xfrm.addSa(s.sa);
        } catch (e) {
          // Same destination and SPI with other content (a key from a far epoch, a changed
          // peer key): replace it. The old one carried nothing this ring sends any more.
          if ((e as { code?: string }).code !== 'EEXIST') throw e;
          await this.xfrm.deleteSa({ dst: s.sa.dst, spi: s.sa.spi });
          await this.xfrm.addSa(s.sa);
        }
        return;
      case 'del-sa':
        await this.xfrm.deleteSa(s.id);
        return;
      case 'set-policy':
        await this.xfrm.setPolicy(s.policy);
        return;
      case 'del-policy':
        await this.xfrm.deletePolicy({ dir: s.dir, selector: s.selector });
        return;
    }
  }
}
