import { isDeepStrictEqual } from 'node:util';

import type { AttachedEndpoint, EndpointAttachment, OrphanReport, OverlayInfo, OverlaySpec, Peer } from '../dataplane/types';
import { p2pRemote } from '../dataplane/overlay-check';
import type { Logger } from '../log';
import { errorMessage } from '../util/errors';
import { KeyedMutex } from '../util/keyed-mutex';
import { DEFAULT_ENCRYPTED_VXLAN_PORT } from '../dataplane/overlay-check';
import { parseNetworkOptions } from './options';
import type { ReconcileTrigger } from './peer-programmer';
import type { RecordStore } from './record-store';
import { endpointRecordSchema, keys, type NetworkRecord } from './records';
import { parseSubnet } from './subnet';

/** The part of the dataplane the driver uses; the kernel implementation lives in src/dataplane. */
export interface OverlayDataplane {
  ensureOverlay(spec: OverlaySpec): Promise<OverlayInfo>;
  /** ensureOverlay that says whether anything had to be rebuilt (periodic drift repair). */
  repairOverlay(spec: OverlaySpec): Promise<boolean>;
  removeOverlay(networkId: string): Promise<void>;
  findOverlay(networkId: string): OverlayInfo | undefined;
  attachEndpoint(attachment: EndpointAttachment): Promise<AttachedEndpoint>;
  detachEndpoint(networkId: string, endpointId: string): Promise<void>;
  applyPeers(networkId: string, add: Peer[], remove: Peer[]): Promise<unknown>;
  /** Endpoint port names (`ve…`) in the network's namespace. */
  bridgePorts(networkId: string): Promise<string[]>;
  /** Start-up sweep: removes our kernel objects that nothing in `keep` accounts for. */
  removeOrphans(keep: { endpointIds: Iterable<string>; networkIds: Iterable<string> }): Promise<OrphanReport>;
}

/** Tells the peer distribution which networks have local containers (src/driver/peer-sync). */
export interface PeerSyncHooks {
  networkActive(networkId: string, network: NetworkRecord): Promise<void>;
  networkInactive(networkId: string): Promise<void>;
  /** The overlay's devices were rebuilt (kernel drift): re-program its peers now. */
  resync?(networkId: string, reason: ReconcileTrigger): Promise<void>;
}

/**
 * Encrypted networks' IPsec side (src/crypto/controller.ts): SAs with every peer host while at
 * least one encrypted overlay is up here.
 */
export interface EncryptionHooks {
  /** The VXLAN UDP port of encrypted networks. */
  readonly port: number;
  /** Before an encrypted overlay is built: the SAs up, or a clear error (kernel without ESP…). */
  activate(): Promise<void>;
  /** After the last encrypted overlay on this host is gone: every SA and policy removed. */
  deactivate(): Promise<void>;
}

/** A veth pair made by CreateEndpoint for a Join to come. */
interface PreparedPort {
  networkId: string;
  /** The overlay namespace its bridge end went into: one rebuilt since took that end with it. */
  epoch: number;
  attached: AttachedEndpoint;
}

/**
 * Every overlay on this host (the role of libnetwork's joinSandbox/leaveSandbox): the spec it
 * was last built from (for the periodic repair, which works without the store), the veth pairs
 * prepared ahead of Join, the peer distribution's view of which networks have local containers,
 * and the overlay's removal once no local container uses it. The kernel side is the dataplane's.
 *
 * Docker's requests on different endpoints of one network arrive together (a `compose up`, a
 * burst of `docker run`) and run side by side: their kernel steps take turns per overlay
 * (`kernel`), their store writes do not. A Join counts as using the overlay from its kernel
 * step until its record says joined, so a Leave of the last other container in between does
 * not remove the overlay under it.
 */
export class LocalOverlays {
  /** Spec of every overlay this process built or checked. */
  private readonly specs = new Map<string, OverlaySpec>();
  private readonly prepared = new Map<string, PreparedPort>();
  /** Encrypted overlays up on this host; the IPsec state lives while this is not empty. */
  private readonly encrypted = new Set<string>();
  private encryptionGate: Promise<unknown> = Promise.resolve();
  /** One kernel step at a time per overlay. */
  private readonly kernel = new KeyedMutex();
  /** Joins per network between their kernel step and their committed record. */
  private readonly joining = new Map<string, number>();
  /** Networks whose removal a Leave skipped because a Join was under way: looked at again when it ends. */
  private readonly releaseSkipped = new Set<string>();
  /** Endpoints this process attached to each overlay since it built or first used it. */
  private readonly members = new Map<string, Set<string>>();

  constructor(
    private readonly dataplane: OverlayDataplane,
    private readonly records: RecordStore,
    private readonly host: { name: string; vtep: string },
    private readonly logger: Logger,
    private readonly peerSync?: PeerSyncHooks,
    private readonly encryption?: EncryptionHooks,
  ) {}

  /** Activation and deactivation one at a time, so a release never undoes a concurrent join's activation. */
  private encryptionStep(fn: () => Promise<void>): Promise<void> {
    const r = this.encryptionGate.then(fn, fn);
    this.encryptionGate = r.catch(() => undefined);
    return r;
  }

  private async encryptionUp(networkId: string, network: NetworkRecord): Promise<void> {
    if (!parseNetworkOptions(network.options).encrypted) return;
    const enc = this.encryption;
    if (!enc) throw new Error('this network is encrypted, but encryption is not available in this daemon');
    await this.encryptionStep(async () => {
      await enc.activate();
      this.encrypted.add(networkId);
    });
  }

  private async encryptionDown(networkId: string): Promise<void> {
    const enc = this.encryption;
    if (!enc) return;
    await this.encryptionStep(async () => {
      if (this.encrypted.delete(networkId) && this.encrypted.size === 0) await enc.deactivate();
    });
  }

  /** What the overlay of a network should look like on this host (`localRemote`: p2p's per-host remote). */
  specFor(networkId: string, network: NetworkRecord, localRemote?: string): OverlaySpec {
    const options = parseNetworkOptions(network.options);
    const remote = p2pRemote(localRemote, options);
    // An IPv6-only network has no IPv4 subnet nor gateway (empty), a dual-stack one both.
    const cidr = (gateway: string | undefined, subnet: string | undefined) =>
      gateway && subnet ? `${gateway}/${parseSubnet(subnet).prefixLength}` : undefined;
    const gatewayCidr = cidr(network.gateway, network.subnet);
    const gateway6Cidr = cidr(network.gateway6, network.subnet6);
    return {
      networkId,
      vni: network.vni,
      mtu: network.mtu,
      ...(gatewayCidr ? { gatewayCidr } : {}),
      ...(gateway6Cidr ? { gateway6Cidr } : {}),
      vtep: this.host.vtep,
      mode: network.mode,
      ...(remote ? { remote } : {}),
      ...(options.group ? { group: options.group } : {}),
      ...(options.encrypted ? { port: this.encryption?.port ?? DEFAULT_ENCRYPTED_VXLAN_PORT } : {}),
    };
  }

  find(networkId: string): OverlayInfo | undefined {
    return this.dataplane.findOverlay(networkId);
  }

  isPrepared(endpointId: string): boolean {
    return this.prepared.has(endpointId);
  }

  /**
   * Join's kernel side: the overlay up to `spec`, the endpoint's veth pair in it, then `commit`
   * (the store write that makes the endpoint joined) and the peer distribution told. Any failure
   * rolls the kernel back (the veth pair; the overlay too if this call built it and nobody else
   * came to use it) before it is thrown, so that Docker's retry starts clean.
   */
  async join(spec: OverlaySpec, network: NetworkRecord, attachment: EndpointAttachment, commit: () => Promise<void>): Promise<AttachedEndpoint> {
    const { networkId, endpointId } = attachment;
    this.joining.set(networkId, (this.joining.get(networkId) ?? 0) + 1);
    let existed = true;
    try {
      const attached = await this.kernel.run(networkId, async () => {
        existed = this.find(networkId) !== undefined;
        const prepared = this.prepared.get(endpointId);
        this.prepared.delete(endpointId);
        // Nothing built yet: a host that cannot encrypt refuses here, never joins in clear.
        await this.encryptionUp(networkId, network);
        const a = await this.attach(spec, attachment, prepared);
        this.memberSet(networkId).add(endpointId);
        return a;
      });
      await commit();
      await this.peerSync?.networkActive(networkId, network);
      this.joinEnded(networkId);
      if (!this.joiningOn(networkId)) this.releaseSkipped.delete(networkId); // used now
      return attached;
    } catch (err) {
      this.joinEnded(networkId);
      this.logger.warn('join failed, rolling back', { networkId, endpointId, error: errorMessage(err) });
      await this.kernel.run(networkId, async () => {
        await this.detachNow(networkId, endpointId).catch((e: unknown) =>
          this.logger.warn('rollback of a failed join left its veth pair', { networkId, endpointId, error: errorMessage(e) }),
        );
        if (!this.find(networkId) || this.joiningOn(networkId)) return;
        // Built by this call and nobody attached since: removed without asking the store (which
        // may be why the Join failed). Otherwise the store says whether anyone still uses it.
        let release = !existed && this.memberSet(networkId).size === 0;
        if (!release && this.releaseSkipped.delete(networkId)) release = await this.unused(networkId, network);
        if (release) await this.releaseNow(networkId);
      }).catch((e: unknown) => this.logger.warn('rollback of a failed join left its overlay namespace', { networkId, error: errorMessage(e) }));
      throw err;
    }
  }

  private joinEnded(networkId: string): void {
    const left = (this.joining.get(networkId) ?? 1) - 1;
    if (left > 0) this.joining.set(networkId, left);
    else this.joining.delete(networkId);
  }

  private joiningOn(networkId: string): boolean {
    return (this.joining.get(networkId) ?? 0) > 0;
  }

  private memberSet(networkId: string): Set<string> {
    let set = this.members.get(networkId);
    if (!set) this.members.set(networkId, (set = new Set()));
    return set;
  }

  /**
   * An overlay this process already built or checked for the same spec is not re-checked (it
   * would cost netlink round trips on every Join): drift is the periodic repair's job, and an
   * attach that fails on such an overlay repairs it and tries once more. A pair prepared by
   * CreateEndpoint in that very namespace is used as it is.
   */
  private async attach(spec: OverlaySpec, attachment: EndpointAttachment, prepared?: PreparedPort): Promise<AttachedEndpoint> {
    const overlay = this.find(spec.networkId);
    const known = this.specs.get(spec.networkId);
    if (!overlay || !known || !isDeepStrictEqual(known, spec)) {
      await this.dataplane.ensureOverlay(spec);
      this.specs.set(spec.networkId, spec);
      return this.dataplane.attachEndpoint(attachment);
    }
    // A prepared port damaged since is the periodic repair's, as one damaged right after a Join would be.
    if (prepared && prepared.epoch === overlay.epoch) return prepared.attached;
    try {
      return await this.dataplane.attachEndpoint(attachment);
    } catch (err) {
      this.logger.warn('attach failed on a verified overlay; repairing it', { networkId: attachment.networkId, endpointId: attachment.endpointId, error: errorMessage(err) });
      await this.dataplane.ensureOverlay(spec);
      return this.dataplane.attachEndpoint(attachment);
    }
  }

  /**
   * CreateEndpoint: the endpoint's veth pair, made now if its network's overlay is up and was
   * built or checked by this process (a cold network's Join builds the namespace first). Never
   * fails: without a prepared pair, Join makes it as usual.
   */
  async prepare(attachment: EndpointAttachment): Promise<void> {
    const { networkId, endpointId } = attachment;
    await this.kernel.run(networkId, async () => {
      const overlay = this.find(networkId);
      if (!overlay || !this.specs.has(networkId)) return;
      try {
        const attached = await this.dataplane.attachEndpoint(attachment);
        this.prepared.set(endpointId, { networkId, epoch: overlay.epoch, attached });
        this.memberSet(networkId).add(endpointId);
      } catch (err) {
        this.logger.debug('veth pair not prepared; Join will make it', { networkId, endpointId, error: errorMessage(err) });
      }
    });
  }

  /** Undoes `prepare` (the endpoint record was not written after all). Never fails. */
  async unprepare(networkId: string, endpointId: string): Promise<void> {
    if (!this.prepared.has(endpointId)) return;
    await this.kernel.run(networkId, async () => {
      if (!this.prepared.has(endpointId)) return;
      await this.detachNow(networkId, endpointId).catch((err: unknown) =>
        this.logger.warn('cannot remove the veth pair of an endpoint that was not created', { networkId, endpointId, error: errorMessage(err) }),
      );
    });
  }

  /** The endpoint's veth pair, prepared or joined, is deleted. */
  detach(networkId: string, endpointId: string): Promise<void> {
    return this.kernel.run(networkId, () => this.detachNow(networkId, endpointId));
  }

  private async detachNow(networkId: string, endpointId: string): Promise<void> {
    this.prepared.delete(endpointId);
    await this.dataplane.detachEndpoint(networkId, endpointId);
    this.members.get(networkId)?.delete(endpointId);
  }

  /** After a restart: an overlay that outlived the process is put right and gets its peers again. */
  async resume(spec: OverlaySpec, network: NetworkRecord): Promise<void> {
    await this.kernel.run(spec.networkId, async () => {
      await this.encryptionUp(spec.networkId, network);
      await this.dataplane.ensureOverlay(spec);
      this.specs.set(spec.networkId, spec);
    });
    await this.peerSync?.networkActive(spec.networkId, network);
  }

  /** The overlay goes: peers stop being programmed, then its namespace is removed. Idempotent. */
  release(networkId: string): Promise<void> {
    return this.kernel.run(networkId, () => this.releaseNow(networkId));
  }

  private async releaseNow(networkId: string): Promise<void> {
    await this.peerSync?.networkInactive(networkId);
    this.specs.delete(networkId);
    this.members.delete(networkId);
    this.releaseSkipped.delete(networkId);
    for (const [endpointId, port] of this.prepared) if (port.networkId === networkId) this.prepared.delete(endpointId);
    await this.dataplane.removeOverlay(networkId);
    await this.encryptionDown(networkId).catch((err: unknown) =>
      this.logger.warn('cannot remove the IPsec state of the last encrypted network; the next reconcile retries', { networkId, error: errorMessage(err) }),
    );
  }

  /** The overlay goes if it is up and no endpoint of this host on the network is joined any more. */
  async releaseIfUnused(networkId: string, network: NetworkRecord): Promise<void> {
    if (!this.find(networkId)) return;
    await this.kernel.run(networkId, async () => {
      if (!this.find(networkId)) return;
      if (this.joiningOn(networkId)) {
        // That Join makes it used; if it fails, its rollback looks again.
        this.releaseSkipped.add(networkId);
        return;
      }
      if (!(await this.unused(networkId, network))) return;
      await this.releaseNow(networkId);
      this.logger.info('overlay removed: no local container left', { networkId });
    });
  }

  /** Whether the store holds no joined endpoint of this host on the network. */
  private async unused(networkId: string, network: NetworkRecord): Promise<boolean> {
    const endpoints = await this.records.list(endpointRecordSchema, keys.endpoints(network.key));
    return !endpoints.some((e) => e.value.host === this.host.name && e.value.networkId === networkId && e.value.joined);
  }

  /**
   * Periodic repair of kernel drift: re-asserts every local overlay (br0, vxlan0, the ports'
   * master) from the spec of its last Join, so a device deleted by hand comes back; if anything
   * had to be rebuilt, its peers are re-programmed at once. Needs no store.
   */
  async repairAll(): Promise<string[]> {
    const repaired: string[] = [];
    for (const networkId of [...this.specs.keys()]) {
      await this.kernel.run(networkId, async () => {
        const spec = this.specs.get(networkId);
        if (!spec || !this.find(networkId)) return; // removed meanwhile: nothing to repair
        if (!(await this.dataplane.repairOverlay(spec))) return;
        repaired.push(networkId);
        await this.peerSync?.resync?.(networkId, 'overlay repaired');
      });
    }
    return repaired;
  }
}
