/**
 * Benchmark 4 — data plane: iperf3 (TCP, one stream) between two Docker hosts, the runs
 * interleaved in a random order per round, the median reported:
 *
 *  - tsoverlay: container on A → container on B on a tsoverlay network (their eth0);
 *  - hand-built VXLAN between the same two containers: the same topology made with `ip` only,
 *    no plugin: in each host namespace a VXLAN device (same VNI on both, port 4789, proxy, a
 *    static FDB and neighbour entry for the other end) moved into a bridge namespace with a
 *    bridge, and a veth from that bridge into the same container, as a second interface with an
 *    address of its own. iperf3 runs in the same containers (same processes' cgroups, same
 *    Docker NAT rules), so the two differ only in who built the tunnel path: the target's baseline;
 *  - the same hand-built VXLAN between plain namespaces (no Docker at all);
 *  - Docker overlay: container to container on an attachable swarm overlay network;
 *  - underlay: host namespace A → host namespace B, no tunnel.
 *
 * tsoverlay and the hand-built VXLAN in the same containers run as A B B A (or B A A B) in each
 * round, so that a load that drifts during a round weighs on both alike; the round's ratio is
 * the ratio of the sums. All tunnel variants run at MTU 1450 on the 1500-byte underlay: the
 * benchmark refuses to report if their TCP MSS differs.
 *
 *   node dist/bench/dataplane.js [--seconds 8] [--runs 6] [--pin 0|1] [--json FILE]
 */
import type { DockerHost } from '../test/helpers/docker';
import { forgetResource, recordResource, registerCleanup, run, runPrefix, runSync, sleep, spawnTracked, type ManagedProcess } from '../test/helpers/proc';
import { startBenchCluster } from './lib/cluster';
import { containerIp } from './lib/docker-util';
import { IPERF3 } from './lib/image';
import { runBench } from './lib/main';
import { target } from './lib/report';
import { fmt, fmtRatio, median, quantile, ratio, shuffled } from './lib/stats';

type Variant = 'tsoverlay' | 'vxlanSame' | 'vxlan' | 'overlay' | 'underlay';
const LABEL: Record<Variant, string> = {
  tsoverlay: 'tsoverlay, container → container',
  vxlanSame: 'hand-built kernel VXLAN between the same two containers (a second interface, ip link)',
  vxlan: 'hand-built kernel VXLAN between plain namespaces (no Docker)',
  overlay: 'Docker overlay (swarm), container → container',
  underlay: 'underlay, host → host (no tunnel)',
};

interface IperfResult {
  bitsPerSecond: number;
  retransmits: number;
  /** The sender's MSS: paths compared must carry the same payload per segment. */
  mss: number | undefined;
}

/** Receiver-side throughput of an `iperf3 -J` TCP test. */
function parseIperf(json: string): IperfResult {
  const start = json.indexOf('{');
  const data = JSON.parse(json.slice(start)) as {
    error?: string;
    start?: { tcp_mss_default?: number };
    end?: { sum_received?: { bits_per_second?: number }; sum_sent?: { retransmits?: number } };
  };
  if (data.error) throw new Error(`iperf3: ${data.error}`);
  const bps = data.end?.sum_received?.bits_per_second;
  if (typeof bps !== 'number') throw new Error(`iperf3 gave no result: ${json.slice(0, 300)}`);
  return { bitsPerSecond: bps, retransmits: data.end?.sum_sent?.retransmits ?? 0, mss: data.start?.tcp_mss_default };
}

/** Where a hand-built VXLAN's two ends live: namespaces of its own, or containers (by init PID) on A and B. */
type HandBuiltEnds = { kind: 'namespaces' } | { kind: 'containers'; pidA: number; pidB: number };

/**
 * A hand-built VXLAN (`n`: VNI, names, subnet) between `ends`; registers the removal of what it
 * made (devices inside a container go with the container). Returns the ends' network namespace
 * paths, as seen from the root namespaces, and the server's address.
 */
async function handBuiltVxlan(a: DockerHost, b: DockerHost, n: number, ends: HandBuiltEnds): Promise<{ serverNs: string; clientNs: string; serverIp: string }> {
  const prefix = runPrefix();
  const ownNamespaces = ends.kind === 'namespaces';
  const names = { brA: `${prefix}v${n}b1`, epA: `${prefix}v${n}e1`, brB: `${prefix}v${n}b2`, epB: `${prefix}v${n}e2` };
  const net = `10.${202 + n}.0`;
  const vni = String(7776 + n);
  const made = ownNamespaces ? Object.values(names) : [names.brA, names.brB];
  const remove = (): void => {
    for (const n of made) {
      runSync(['ip', 'netns', 'del', n], { allowFailure: true });
      forgetResource({ kind: 'netns', name: n });
    }
  };
  registerCleanup(`hand-built vxlan ${n}`, remove, { sync: remove });
  const macA = `02:42:0a:${(202 + n).toString(16)}:00:01`;
  const macB = `02:42:0a:${(202 + n).toString(16)}:00:02`;
  /** An end's namespace as `ip … netns` takes it (a name, or the PID of a process in it) and as a path. */
  const end = (ownName: string, pid: number | undefined) =>
    pid === undefined ? { own: ownName, ipArg: ownName, path: `/run/netns/${ownName}` } : { own: undefined, ipArg: String(pid), path: `/proc/${pid}/ns/net` };
  const hosts = [
    { host: a, br: names.brA, ep: end(names.epA, ends.kind === 'containers' ? ends.pidA : undefined), ip: `${net}.1`, mac: macA, peer: b, peerIp: `${net}.2`, peerMac: macB },
    { host: b, br: names.brB, ep: end(names.epB, ends.kind === 'containers' ? ends.pidB : undefined), ip: `${net}.2`, mac: macB, peer: a, peerIp: `${net}.1`, peerMac: macA },
  ];
  // Inside a container the interface needs a name its own eth0 does not have.
  const dev = ownNamespaces ? 'eth0' : `hv${n}`;
  for (const h of hosts) {
    for (const name of [h.br, h.ep.own]) {
      if (name === undefined) continue;
      recordResource({ kind: 'netns', name });
      await run(['ip', 'netns', 'add', name]);
    }
    const underlay = h.host.underlay!;
    // The VXLAN device is made in the host namespace (its UDP socket stays there), then moved.
    await underlay.exec(['ip', 'link', 'add', 'hvx0', 'mtu', '1450', 'type', 'vxlan', 'id', vni, 'dstport', '4789', 'local', underlay.address, 'proxy']);
    await underlay.exec(['ip', 'link', 'set', 'hvx0', 'netns', h.br]);
    const br = ['link set lo up', 'link add br0 mtu 1450 type bridge', 'link set hvx0 master br0', 'link set hvx0 up', 'link set br0 up',
      // Both ends at 1450: a veth peer left at 1500 would let that endpoint's TCP use a larger MSS than the containers'.
      `link add hve0 mtu 1450 type veth peer name ${dev} mtu 1450 netns ${h.ep.ipArg}`, 'link set hve0 master br0', 'link set hve0 up',
      `neigh add ${h.peerIp} lladdr ${h.peerMac} dev hvx0 nud permanent`, ''].join('\n');
    await run(['nsenter', `--net=/run/netns/${h.br}`, '--', 'ip', '-batch', '-'], { input: br });
    await run(['nsenter', `--net=/run/netns/${h.br}`, '--', 'bridge', 'fdb', 'add', h.peerMac, 'dev', 'hvx0', 'dst', h.peer.underlay!.address, 'self', 'permanent']);
    const ep = ['link set lo up', `link set ${dev} address ${h.mac}`, `addr add ${h.ip}/24 dev ${dev}`, `link set ${dev} up`, ''].join('\n');
    await run(['nsenter', `--net=${h.ep.path}`, '--', 'ip', '-batch', '-'], { input: ep });
  }
  return { serverNs: hosts[1]!.ep.path, clientNs: hosts[0]!.ep.path, serverIp: `${net}.2` };
}

runBench(
  {
    name: 'dataplane',
    title: '4. Data plane: iperf3 between two hosts',
    description: 'TCP throughput container to container on tsoverlay vs a hand-built kernel VXLAN between the same containers vs Docker overlay vs the underlay.',
    options: {
      seconds: { full: 8, smoke: 1, help: 'iperf3 test length (-t)' },
      runs: { full: 6, smoke: 1, help: 'rounds; tsoverlay and the hand-built VXLAN in the same containers run twice per round' },
      omit: { full: 1, smoke: 0, help: 'seconds of each test not counted (-O, TCP slow start)' },
      warmup: { full: 1, smoke: 0, help: '1: one short uncounted test per variant first' },
      pin: { full: 0, smoke: 0, help: "1: iperf3 -A 0,1 (client on CPU 0, server on CPU 1) for every variant, so that the scheduler's placement is the same for all" },
    },
  },
  async (p, ctx) => {
    const bc = await startBenchCluster({ tsoverlay: true, swarm: true, log: ctx.log });
    const [a, b] = bc.hosts as [DockerHost, DockerHost];
    await bc.createTsNetwork('tsnet', '10.201.0.0/24');
    await bc.createSwarmNetwork('ovnet', '10.202.0.0/24');
    const secs = Math.max(1, Math.round(p.seconds));
    const omit = Math.round(p.omit);
    const pin = Math.round(p.pin) === 1 ? ['-A', '0,1'] : [];
    const clientArgs = (ip: string, port = 5201) => ['iperf3', '-c', ip, '-p', String(port), '-t', String(secs), '-O', String(omit), ...pin, '-J'];
    const timeoutMs = (secs + omit + 60) * 1000;

    // Server containers on B, client containers on A: they stay up, and each test is a
    // `docker exec` in them (no container start next to the measurement).
    const containerServer = async (net: string): Promise<string> => {
      const id = (await bc.docker(b, ['run', '-d', '--name', `iperf-${net}`, '--net', net, bc.image, 'iperf3', '-s'])).stdout.trim();
      return containerIp(b, id, net);
    };
    const tsServerIp = await containerServer('tsnet');
    const ovServerIp = await containerServer('ovnet');
    for (const net of ['tsnet', 'ovnet']) await bc.docker(a, ['run', '-d', '--name', `iperf-client-${net}`, '--net', net, bc.image, 'sleep', '1000000']);
    const initPid = async (host: DockerHost, name: string): Promise<number> => Number((await bc.docker(host, ['inspect', '-f', '{{.State.Pid}}', name])).stdout.trim());
    const same = await handBuiltVxlan(a, b, 1, { kind: 'containers', pidA: await initPid(a, 'iperf-client-tsnet'), pidB: await initPid(b, 'iperf-tsnet') });
    const plain = await handBuiltVxlan(a, b, 2, { kind: 'namespaces' });
    // The server container's iperf3 serves one test at a time: a second one for the hand-built interface.
    await bc.docker(b, ['exec', '-d', 'iperf-tsnet', 'iperf3', '-s', '-p', '5203']);

    const servers: ManagedProcess[] = [];
    servers.push(spawnTracked(['nsenter', `--net=${plain.serverNs}`, '--', IPERF3, '-s'], { name: 'iperf3-vxlan' }));
    servers.push(spawnTracked(['nsenter', `--net=${b.underlay!.netnsPath}`, '--', IPERF3, '-s', '-B', b.underlay!.address], { name: 'iperf3-underlay' }));
    await sleep(1000);
    for (const s of servers) if (!s.running()) throw new Error(`${s.name} exited: ${s.output()}`);

    const once = async (v: Variant): Promise<IperfResult> => {
      switch (v) {
        case 'tsoverlay':
          return parseIperf((await bc.docker(a, ['exec', 'iperf-client-tsnet', ...clientArgs(tsServerIp)], timeoutMs)).stdout);
        case 'vxlanSame':
          return parseIperf((await bc.docker(a, ['exec', 'iperf-client-tsnet', ...clientArgs(same.serverIp, 5203)], timeoutMs)).stdout);
        case 'overlay':
          return parseIperf((await bc.docker(a, ['exec', 'iperf-client-ovnet', ...clientArgs(ovServerIp)], timeoutMs)).stdout);
        case 'vxlan':
          return parseIperf((await run(['nsenter', `--net=${plain.clientNs}`, '--', ...clientArgs(plain.serverIp)], { timeoutMs })).stdout);
        case 'underlay':
          return parseIperf((await run(['nsenter', `--net=${a.underlay!.netnsPath}`, '--', ...clientArgs(b.underlay!.address)], { timeoutMs })).stdout);
      }
    };

    const variants: Variant[] = ['tsoverlay', 'vxlanSame', 'vxlan', 'overlay', 'underlay'];
    // One untimed test each: ARP, first connection, caches warmed.
    for (const v of p.warmup ? variants : []) {
      const r = await once(v).catch((e: unknown) => e as Error);
      if (r instanceof Error) throw new Error(`warm-up of ${v} failed: ${r.message}`);
    }
    const results: Record<Variant, IperfResult[]> = { tsoverlay: [], vxlanSame: [], vxlan: [], overlay: [], underlay: [] };
    const runs = Math.max(1, Math.round(p.runs));
    const pairRatios: number[] = [];
    for (let i = 1; i <= runs; i++) {
      const [first, second] = shuffled<Variant>(['tsoverlay', 'vxlanSame']) as [Variant, Variant];
      const pair: Variant[] = [first, second, second, first];
      const order = shuffled<Variant[]>([pair, ['vxlan'], ['overlay'], ['underlay']]).flat();
      const round: Record<Variant, number> = { tsoverlay: 0, vxlanSame: 0, vxlan: 0, overlay: 0, underlay: 0 };
      for (const v of order) {
        const r = await once(v);
        results[v].push(r);
        round[v] += r.bitsPerSecond;
        ctx.log(`round ${i}/${runs} ${v}: ${(r.bitsPerSecond / 1e9).toFixed(2)} Gbit/s, ${r.retransmits} retransmits, MSS ${r.mss ?? '?'}`);
      }
      pairRatios.push(round.tsoverlay / round.vxlanSame);
    }
    const mssOf = (v: Variant): string => [...new Set(results[v].map((r) => r.mss ?? '?'))].join(', ');
    // A tunnel path whose endpoints run at another MTU sends more or less payload per segment:
    // its throughput is then no baseline for tsoverlay's.
    for (const v of ['vxlanSame', 'vxlan', 'overlay'] as const) {
      if (mssOf(v) !== mssOf('tsoverlay')) throw new Error(`TCP MSS of ${v} (${mssOf(v)}) differs from tsoverlay's (${mssOf('tsoverlay')}): the paths are not comparable`);
    }
    const gbps = (v: Variant) => median(results[v].map((r) => r.bitsPerSecond / 1e9));
    const rows = variants.map((v) => [
      LABEL[v],
      fmt(gbps(v), 2),
      results[v].map((r) => (r.bitsPerSecond / 1e9).toFixed(2)).join(', '),
      fmtRatio(ratio(gbps(v), gbps('vxlanSame'))),
      fmtRatio(ratio(gbps(v), gbps('vxlan'))),
      fmtRatio(ratio(gbps(v), gbps('underlay'))),
      String(median(results[v].map((r) => r.retransmits))),
      mssOf(v),
    ]);
    const q = (x: number) => quantile(pairRatios, x).toFixed(2);
    return {
      tables: [
        {
          title: `iperf3 TCP, 1 stream, ${secs} s per test (first ${omit} s omitted), ${runs} rounds${pin.length > 0 ? ', client pinned to CPU 0 and server to CPU 1 (iperf3 -A 0,1)' : ''}`,
          columns: ['path', 'Gbit/s (median)', 'tests, Gbit/s', 'vs hand-built VXLAN, same containers', 'vs hand-built VXLAN, plain namespaces', 'vs underlay', 'retransmits (median)', 'TCP MSS'],
          rows,
        },
      ],
      targets: [target('throughput, tsoverlay container → container / hand-built VXLAN between the same containers (median of per-round ratios)', median(pairRatios), '>=', 0.97)],
      notes: [
        `Per-round ratios, tsoverlay / hand-built VXLAN in the same containers (each the ratio of two tests' sums, run A B B A): ${pairRatios.map((x) => x.toFixed(2)).join(', ')}; quartiles ${q(0.25)}, ${q(0.5)}, ${q(0.75)}.`,
        "The baseline of the target is a VXLAN built by hand with `ip` between the very containers tsoverlay connects: in each host namespace `ip link add hvx0 type vxlan id 7777 dstport 4789 local <host> proxy` (MTU 1450), moved into a bridge namespace with `br0`, a static `fdb … dst <other host> self permanent` and a PERMANENT neighbour entry for the other end (what tsoverlay programs), and a veth from `br0` into the container as a second interface (`hv1`, 10.203.0.0/24). Both tests are `docker exec iperf3` in the same client container against the same server container (a second iperf3 server on port 5203), so the containers' cgroups and the NAT rules Docker puts into every container on a user-defined network (for its embedded DNS: connection tracking for all the container's traffic, even with `--iptables=false`) weigh on both alike.",
        'The row "plain namespaces" is the same hand-built VXLAN between two namespaces with no container and no NAT rules: what a Docker container costs on top of the tunnel (connection tracking, cgroup scheduling), for tsoverlay and Docker\'s overlay alike.',
        'Two Docker hosts in network namespaces on one machine, joined by veths to a bridge (MTU 1500): every byte crosses the same kernel, so the figures measure per-packet CPU cost (encapsulation, bridging, veth hops) on this 2-core machine, not a network.',
        "Containers use the tso-bench image (busybox + Debian's iperf3 3.12 with its libraries); the host-side tests run the same binary with `nsenter --net`. The TCP MSS column is the sender's: 1398 on every tunnel path (MTU 1450), or the comparison would be refused.",
      ],
      complete: variants.every((v) => results[v].length === (v === 'tsoverlay' || v === 'vxlanSame' ? 2 * runs : runs)),
    };
  },
);
