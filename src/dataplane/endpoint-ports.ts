/**
 * The veth pair of each local endpoint: the container's end in the plugin's namespace (Docker
 * moves it into the container), the other a br0 port in the overlay namespace. The overlay
 * itself is overlay-builder.ts's; Dataplane is the one entry point for both.
 */
import type { Logger } from '../log';
import type { AttachedEndpoint, EndpointAttachment } from './types';
import { formatMac, parseUnicastMac } from './encode';
import { isNetlinkError } from './nlsock';
import { hostNetnsFd } from './netns';
import { type OverlayNamespaces, vethNames } from './overlay-namespaces';
import { BRIDGE_NAME, PORT_VETH_NAME, portDifferences, validateMtu } from './overlay-check';
import { deviceState } from './overlay-state';
import { createVeth, deleteLink, getLink, listLinks, setLink } from './links';

export class EndpointPorts {
  constructor(
    private readonly ns: OverlayNamespaces,
    private readonly log: Logger,
  ) {}

  /**
   * The endpoint's veth pair: `vc…` in the plugin's namespace (MAC, MTU; Docker moves it into the
   * container) and `ve…` in the overlay namespace as a br0 port, up. A pair that already exists is
   * kept (and corrected); a host end already moved away by Docker is fine; a broken pair is rebuilt.
   */
  attach(a: EndpointAttachment): Promise<AttachedEndpoint> {
    return this.ns.serial(a.networkId, async () => {
      const names = vethNames(a.endpointId);
      const mac = parseUnicastMac(a.mac);
      validateMtu(a.mtu);
      const o = this.ns.required(a.networkId);
      const master = o.bridgeIndex ?? (await this.ns.indexOf(o, BRIDGE_NAME));
      const veth = { hostName: names.srcName, peerName: names.bridgePortName, mtu: a.mtu, mac, masterIndex: master };
      const create = async (): Promise<AttachedEndpoint> => {
        await createVeth(o.sock, hostNetnsFd(), veth);
        this.log.debug('endpoint attached', { network: a.networkId, endpoint: a.endpointId, ...names });
        return names;
      };
      // The common case first (nothing there yet); EEXIST means a retried Join or a leftover pair.
      try {
        return await create();
      } catch (e) {
        if (!isNetlinkError(e, 'EEXIST')) throw e;
      }
      const hostSock = this.ns.hostSocket();
      const peer = await getLink(o.sock, names.bridgePortName);
      const hostEnd = await getLink(hostSock, names.srcName);

      const paired =
        peer?.kind === 'veth' &&
        (!hostEnd || (hostEnd.kind === 'veth' && hostEnd.link === peer.index && peer.link === hostEnd.index));
      if (peer && paired) {
        if (hostEnd && (hostEnd.mac !== formatMac(mac) || hostEnd.mtu !== a.mtu)) {
          await setLink(hostSock, hostEnd.index, { mac, mtu: a.mtu });
        }
        if (peer.mtu !== a.mtu) await setLink(o.sock, peer.index, { mtu: a.mtu });
        const wrong = new Set(portDifferences(deviceState(peer, (i) => (i === master ? BRIDGE_NAME : undefined)), peer.name).map((d) => d.field));
        if (wrong.has('master')) await setLink(o.sock, peer.index, { master });
        if (wrong.has('up')) await setLink(o.sock, peer.index, { up: true });
        this.log.debug('endpoint already attached', { network: a.networkId, endpoint: a.endpointId, moved: !hostEnd });
        return names;
      }
      if (peer) await deleteLink(o.sock, peer.index);
      if (hostEnd) await deleteLink(hostSock, hostEnd.index);
      return create();
    });
  }

  /** Deletes the endpoint's pair through whichever end still exists; none is fine. */
  detach(networkId: string, endpointId: string): Promise<void> {
    return this.ns.serial(networkId, async () => {
      const names = vethNames(endpointId);
      await deleteLink(this.ns.hostSocket(), names.srcName);
      const o = this.ns.existing(networkId);
      if (o) await deleteLink(o.sock, names.bridgePortName);
      this.log.debug('endpoint detached', { network: networkId, endpoint: endpointId });
    });
  }

  /** How many veths are br0 ports in the network's namespace (0 if it has none). */
  count(networkId: string): Promise<number> {
    return this.ns.withOverlay(networkId, 0, async (o) => {
      const master = await this.ns.indexOf(o, BRIDGE_NAME);
      return (await listLinks(o.sock)).filter((l) => l.kind === 'veth' && l.master === master).length;
    });
  }

  /** Names of the endpoint ports (`ve…`) in the network's namespace (empty if it has none). */
  names(networkId: string): Promise<string[]> {
    return this.ns.withOverlay(networkId, [], async (o) =>
      (await listLinks(o.sock)).filter((l) => l.kind === 'veth' && PORT_VETH_NAME.test(l.name)).map((l) => l.name),
    );
  }
}
