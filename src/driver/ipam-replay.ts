/**
 * Recognising Docker's start-up replay of its IPAM requests.
 *
 * Docker's replay at its start (RequiresRequestReplay) asks again, for every endpoint it kept,
 * for the address it has, as an explicit address, with no container name, endpoint id or any
 * other option (moby's `reservePools`; 20.10 and 28 alike): on the wire it is the same request
 * as a second container asking for a held `--ip`. What tells them apart is the order and the
 * count. Docker replays a network's pool first (asking for a pool this host already holds,
 * which nothing else does but a duplicate `network create` that then fails), then its
 * gateway, then each of its endpoints' addresses once, back to back, before it serves its API.
 * So an explicit request for an address this host holds is taken as that replay only while
 * such a replay is under way (it ends at the first request that is no part of one, or when
 * none follows in time), and only once per address: a container asking after the replay
 * re-confirmed the address is refused even if it comes in time. A replay refused would be
 * harmless anyway (Docker only logs it; the store keeps the address for its container):
 * accepting a second container would not be.
 */

/**
 * How long, beyond the request timeout, after Docker re-requests a pool this host already holds
 * (and after each request of the replay that follows) its explicit requests for this host's
 * addresses count as Docker's start-up replay.
 */
export const DOCKER_REPLAY_SLACK_MS = 5_000;

/** Docker's start-up replay of one subnet: until when it may last, and the addresses it re-confirmed. */
export interface DockerReplay {
  until: number;
  confirmed: Set<string>;
}

/** The replays under way, per subnet. */
export class DockerReplays {
  private readonly bySubnet = new Map<string, DockerReplay>();

  constructor(private readonly requestTimeoutMs: number) {}

  /** Docker asked again for a pool this host already holds: a replay of `subnet` may follow. */
  begin(subnet: string): void {
    this.bySubnet.set(subnet, { until: performance.now() + this.windowMs(), confirmed: new Set() });
  }

  /** A request that is no part of any replay arrived: whatever replay was under way is over. */
  end(): void {
    this.bySubnet.clear();
  }

  /** The replay of `subnet` under way, its window extended by this request; undefined if none. */
  current(subnet: string): DockerReplay | undefined {
    const replay = this.bySubnet.get(subnet);
    if (replay === undefined) return undefined;
    const now = performance.now();
    if (now > replay.until) {
      this.bySubnet.delete(subnet);
      return undefined;
    }
    replay.until = now + this.windowMs();
    return replay;
  }

  /** Docker sends the replay's requests one after the other: each may take a request timeout. */
  private windowMs(): number {
    return this.requestTimeoutMs + DOCKER_REPLAY_SLACK_MS;
  }
}
