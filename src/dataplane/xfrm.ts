/**
 * IPsec state and policy through NETLINK_XFRM on an NlSocket, and the probe for what the kernel
 * supports. The message layouts are in xfrm-messages.ts.
 */
import { CLONE_NEWNET, unshare } from './libc';
import { hostNetnsFd, withNetns } from './netns';
import { NLM_F_CREATE, NLM_F_EXCL, NlSocket, isNetlinkError } from './nlsock';
import {
  AEAD_KEY_BYTES,
  AEAD_NAME,
  NETLINK_XFRM,
  type ParsedPolicy,
  type ParsedSa,
  type PolicyDir,
  XFRM_MSG_DELPOLICY,
  XFRM_MSG_DELSA,
  XFRM_MSG_GETPOLICY,
  XFRM_MSG_GETSA,
  XFRM_MSG_NEWPOLICY,
  XFRM_MSG_NEWSA,
  XFRM_MSG_UPDPOLICY,
  type XfrmPolicy,
  type XfrmSa,
  type XfrmSelector,
  describeSa,
  describeSelector,
  encodeNewSa,
  encodePolicy,
  encodePolicyId,
  encodeSaId,
  parsePolicy,
  parseSa,
} from './xfrm-messages';

export * from './xfrm-messages';

// ---------------------------------------------------------------- client

/** An xfrm netlink socket of the namespace it was opened in (the host's, for the VXLAN sockets). */
export class XfrmClient {
  constructor(readonly sock: NlSocket) {}

  static open(): XfrmClient {
    return new XfrmClient(new NlSocket({ protocol: NETLINK_XFRM }));
  }

  close(): void {
    this.sock.close();
  }

  /** Adds an SA; fails with EEXIST when one with the same destination, SPI and protocol exists. */
  async addSa(sa: XfrmSa): Promise<void> {
    await this.sock.request(XFRM_MSG_NEWSA, NLM_F_CREATE | NLM_F_EXCL, encodeNewSa(sa), `add SA ${describeSa(sa)}`);
  }

  /** Deletes an SA; one that does not exist is not an error. Returns whether one was deleted. */
  async deleteSa(id: { dst: string; spi: number; src?: string }): Promise<boolean> {
    try {
      await this.sock.request(XFRM_MSG_DELSA, 0, encodeSaId(id), `delete SA ${id.src ?? '*'}->${id.dst} spi 0x${id.spi.toString(16)}`);
      return true;
    } catch (e) {
      if (isNetlinkError(e, 'ENOENT', 'ESRCH')) return false;
      throw e;
    }
  }

  async listSas(): Promise<ParsedSa[]> {
    const msgs = await this.sock.dump(XFRM_MSG_GETSA, Buffer.alloc(0), 'dump SAs');
    return msgs.filter((m) => m.type === XFRM_MSG_NEWSA).map((m) => parseSa(m.data));
  }

  /** Creates or replaces the policy with this selector and direction (one atomic update). */
  async setPolicy(p: XfrmPolicy): Promise<void> {
    await this.sock.request(XFRM_MSG_UPDPOLICY, NLM_F_CREATE, encodePolicy(p), `set ${p.dir} policy ${describeSelector(p.selector)}`);
  }

  /** Deletes a policy; one that does not exist is not an error. Returns whether one was deleted. */
  async deletePolicy(p: { dir: PolicyDir; selector: XfrmSelector }): Promise<boolean> {
    try {
      await this.sock.request(XFRM_MSG_DELPOLICY, 0, encodePolicyId(p), `delete ${p.dir} policy ${describeSelector(p.selector)}`);
      return true;
    } catch (e) {
      if (isNetlinkError(e, 'ENOENT')) return false;
      throw e;
    }
  }

  async listPolicies(): Promise<ParsedPolicy[]> {
    const msgs = await this.sock.dump(XFRM_MSG_GETPOLICY, Buffer.alloc(0), 'dump policies');
    return msgs.filter((m) => m.type === XFRM_MSG_NEWPOLICY).map((m) => parsePolicy(m.data));
  }
}

// ---------------------------------------------------------------- capability

/** What the kernel lacks for encrypted networks; empty when it has everything. */
export interface EspSupport {
  ok: boolean;
  /** Human-readable list of what is missing. */
  missing: string[];
  detail?: string;
}

const PROBE_SA: XfrmSa = {
  // TEST-NET-1 addresses in a namespace of its own: nothing can ever match this SA.
  src: '192.0.2.1',
  dst: '192.0.2.2',
  spi: 0x100,
  reqid: 0,
  key: Buffer.alloc(AEAD_KEY_BYTES, 0x5a),
};

/**
 * An xfrm socket in a new, empty network namespace that nothing else holds: the namespace goes
 * away with the socket. The main thread unshares into it only while the socket is created.
 */
export function openXfrmInScratchNetns(): NlSocket {
  return withNetns(hostNetnsFd(), () => {
    unshare(CLONE_NEWNET);
    return new NlSocket({ protocol: NETLINK_XFRM });
  });
}

/**
 * Whether this kernel can do what encrypted networks need, found by doing it: in a scratch
 * network namespace (gone with the probe's socket), open an xfrm socket (needs xfrm_user) and
 * add an ESP SA with rfc4106(gcm(aes)) (needs esp4 and the AEAD; the kernel loads their modules
 * on demand when it can). Nothing is left behind in the host's tables.
 */
export async function probeEspSupport(openInScratchNetns: () => NlSocket = openXfrmInScratchNetns): Promise<EspSupport> {
  let sock: NlSocket;
  try {
    sock = openInScratchNetns();
  } catch (e) {
    return { ok: false, missing: ['xfrm_user (CONFIG_XFRM_USER: the kernel has no IPsec netlink interface)'], detail: (e as Error).message };
  }
  const client = new XfrmClient(sock);
  try {
    await client.addSa(PROBE_SA);
    await client.deleteSa({ dst: PROBE_SA.dst, spi: PROBE_SA.spi, src: PROBE_SA.src });
    return { ok: true, missing: [] };
  } catch (e) {
    if (isNetlinkError(e, 'ENOSYS')) {
      return { ok: false, missing: [`${AEAD_NAME} (CONFIG_CRYPTO_GCM and AES: the kernel has no AES-GCM for ESP)`], detail: (e as Error).message };
    }
    if (isNetlinkError(e, 'EPROTONOSUPPORT')) {
      return { ok: false, missing: ['esp4 (CONFIG_INET_ESP: the kernel has no IPsec ESP for IPv4)'], detail: (e as Error).message };
    }
    return { ok: false, missing: [`a working IPsec ESP SA (${(e as Error).message})`], detail: (e as Error).message };
  } finally {
    client.close();
  }
}
