/**
 * Benchmark 4 — data plane: iperf3 (TCP, one stream) between two Docker hosts four ways, the
 * runs interleaved in a random order per round, the median reported:
 *
 *  - tsoverlay: container on A → container on B on a tsoverlay network;
 *  - hand-built VXLAN: the same topology made with `ip` only, no Docker, no plugin: in each host
 *    namespace a VXLAN device (same VNI on both, port 4789, proxy, a static FDB and neighbour
 *    entry for the other end) moved into a bridge namespace with a bridge, and an endpoint
 *    namespace joined to the bridge by a veth — the hops a tsoverlay container's packets take;
 *  - Docker overlay: container to container on an attachable swarm overlay network;
 *  - underlay: host namespace A → host namespace B, no tunnel.
 *
 * All overlay variants run at MTU 1450 on the 1500-byte underlay.
 *
 *   node dist/bench/dataplane.js [--seconds 10] [--runs 3] [--json FILE]
 */
import type { DockerHost } from '../test/helpers/docker';
import { forgetResource, recordResource, registerCleanup, run, runPrefix, runSync, sleep, spawnTracked, type ManagedProcess } from '../test/helpers/proc';
import { startBenchCluster } from './lib/cluster';
import { containerIp } from './lib/docker-util';
import { IPERF3 } from './lib/image';
import { runBench } from './lib/main';
import { target } from './lib/report';
import { fmt, fmtRatio, median, ratio, shuffled } from './lib/stats';

type Variant = 'tsoverlay' | 'tsoverlayNs' | 'vxlan' | 'vxlanNat' | 'overlay' | 'overlayNs' | 'underlay';
const LABEL: Record<Variant, string> = {
  tsoverlay: 'tsoverlay, container → container',
  tsoverlayNs: "tsoverlay, the same containers' network namespaces, iperf3 run from the host (nsenter)",
  vxlan: 'hand-built kernel VXLAN (ip link, no Docker)',
  vxlanNat: "hand-built kernel VXLAN, endpoints with Docker's DNS NAT rules (conntrack on)",
  overlay: 'Docker overlay (swarm), container → container',
  overlayNs: "Docker overlay, the same containers' network namespaces, iperf3 run from the host (nsenter)",
  underlay: 'underlay, host → host (no tunnel)',
};

interface IperfResult {
  bitsPerSecond: number;
  retransmits: number;
}

/** Receiver-side throughput of an `iperf3 -J` TCP test. */
function parseIperf(json: string): IperfResult {
  const start = json.indexOf('{');
  const data = JSON.parse(json.slice(start)) as {
    error?: string;
    end?: { sum_received?: { bits_per_second?: number }; sum_sent?: { retransmits?: number } };
  };
  if (data.error) throw new Error(`iperf3: ${data.error}`);
  const bps = data.end?.sum_received?.bits_per_second;
  if (typeof bps !== 'number') throw new Error(`iperf3 gave no result: ${json.slice(0, 300)}`);
  return { bitsPerSecond: bps, retransmits: data.end?.sum_sent?.retransmits ?? 0 };
}

/**
 * The NAT rules dockerd puts into every container's namespace on a user-defined network for its
 * embedded DNS server (127.0.0.11), whatever the driver and even with --iptables=false: they
 * turn connection tracking on for all of the container's traffic.
 */
const DOCKER_DNS_NAT = [
  ['-t', 'nat', '-N', 'DOCKER_OUTPUT'],
  ['-t', 'nat', '-N', 'DOCKER_POSTROUTING'],
  ['-t', 'nat', '-A', 'OUTPUT', '-d', '127.0.0.11/32', '-j', 'DOCKER_OUTPUT'],
  ['-t', 'nat', '-A', 'POSTROUTING', '-d', '127.0.0.11/32', '-j', 'DOCKER_POSTROUTING'],
  ['-t', 'nat', '-A', 'DOCKER_OUTPUT', '-d', '127.0.0.11/32', '-p', 'udp', '--dport', '53', '-j', 'DNAT', '--to-destination', '127.0.0.11:53000'],
  ['-t', 'nat', '-A', 'DOCKER_POSTROUTING', '-s', '127.0.0.11/32', '-p', 'udp', '--sport', '53000', '-j', 'SNAT', '--to-source', ':53'],
];

/** Namespaces and devices of a hand-built VXLAN (`n` 1 or 2: VNI, names, subnet); registers their removal. */
async function handBuiltVxlan(a: DockerHost, b: DockerHost, n: number, dockerNat: boolean): Promise<{ serverNs: string; clientNs: string; serverIp: string }> {
  const prefix = runPrefix();
  const names = { brA: `${prefix}v${n}b1`, epA: `${prefix}v${n}e1`, brB: `${prefix}v${n}b2`, epB: `${prefix}v${n}e2` };
  const net = `10.${202 + n}.0`;
  const vni = String(7776 + n);
  const all = Object.values(names);
  const remove = (): void => {
    for (const n of all) {
      runSync(['ip', 'netns', 'del', n], { allowFailure: true });
      forgetResource({ kind: 'netns', name: n });
    }
  };
  registerCleanup(`hand-built vxlan ${n}`, remove, { sync: remove });
  const macA = `02:42:0a:${(202 + n).toString(16)}:00:01`;
  const macB = `02:42:0a:${(202 + n).toString(16)}:00:02`;
  const hosts = [
    { host: a, br: names.brA, ep: names.epA, ip: `${net}.1`, mac: macA, peer: b, peerIp: `${net}.2`, peerMac: macB },
    { host: b, br: names.brB, ep: names.epB, ip: `${net}.2`, mac: macB, peer: a, peerIp: `${net}.1`, peerMac: macA },
  ];
  for (const h of hosts) {
    for (const n of [h.br, h.ep]) {
      recordResource({ kind: 'netns', name: n });
      await run(['ip', 'netns', 'add', n]);
    }
    const underlay = h.host.underlay!;
    // The VXLAN device is made in the host namespace (its UDP socket stays there), then moved.
    await underlay.exec(['ip', 'link', 'add', 'hvx0', 'mtu', '1450', 'type', 'vxlan', 'id', vni, 'dstport', '4789', 'local', underlay.address, 'proxy']);
    await underlay.exec(['ip', 'link', 'set', 'hvx0', 'netns', h.br]);
    const br = ['link set lo up', 'link add br0 mtu 1450 type bridge', 'link set hvx0 master br0', 'link set hvx0 up', 'link set br0 up',
      `link add hve0 mtu 1450 type veth peer name eth0 netns ${h.ep}`, 'link set hve0 master br0', 'link set hve0 up',
      `neigh add ${h.peerIp} lladdr ${h.peerMac} dev hvx0 nud permanent`, ''].join('\n');
    await run(['nsenter', `--net=/run/netns/${h.br}`, '--', 'ip', '-batch', '-'], { input: br });
    await run(['nsenter', `--net=/run/netns/${h.br}`, '--', 'bridge', 'fdb', 'add', h.peerMac, 'dev', 'hvx0', 'dst', h.peer.underlay!.address, 'self', 'permanent']);
    const ep = ['link set lo up', `link set eth0 address ${h.mac}`, `addr add ${h.ip}/24 dev eth0`, 'link set eth0 up', ''].join('\n');
    await run(['nsenter', `--net=/run/netns/${h.ep}`, '--', 'ip', '-batch', '-'], { input: ep });
    if (dockerNat) for (const rule of DOCKER_DNS_NAT) await run(['nsenter', `--net=/run/netns/${h.ep}`, '--', 'iptables', ...rule]);
  }
  return { serverNs: `/run/netns/${names.epB}`, clientNs: `/run/netns/${names.epA}`, serverIp: `${net}.2` };
}

runBench(
  {
    name: 'dataplane',
    title: '4. Data plane: iperf3 between two hosts',
    description: 'TCP throughput container to container on tsoverlay vs a hand-built kernel VXLAN vs Docker overlay vs the underlay.',
    options: {
      seconds: { full: 10, smoke: 1, help: 'iperf3 test length (-t)' },
      runs: { full: 5, smoke: 1, help: 'runs per variant' },
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
    const vx = await handBuiltVxlan(a, b, 1, false);
    const vxNat = await handBuiltVxlan(a, b, 2, true);
    const secs = Math.max(1, Math.round(p.seconds));
    const omit = Math.round(p.omit);
    const pin = Math.round(p.pin) === 1 ? ['-A', '0,1'] : [];
    const clientArgs = (ip: string, port = 5201) => ['iperf3', '-c', ip, '-p', String(port), '-t', String(secs), '-O', String(omit), ...pin, '-J'];
    const timeoutMs = (secs + omit + 60) * 1000;

    // Servers, one per variant, each serving one test at a time.
    const servers: ManagedProcess[] = [];
    const containerServer = async (net: string): Promise<string> => {
      const id = (await bc.docker(b, ['run', '-d', '--name', `iperf-${net}`, '--net', net, bc.image, 'iperf3', '-s'])).stdout.trim();
      return containerIp(b, id, net);
    };
    const serverIp: Record<Variant, string> = {
      tsoverlay: await containerServer('tsnet'),
      overlay: await containerServer('ovnet'),
      tsoverlayNs: '',
      overlayNs: '',
      vxlan: vx.serverIp,
      vxlanNat: vxNat.serverIp,
      underlay: b.underlay!.address,
    };
    serverIp.tsoverlayNs = serverIp.tsoverlay;
    serverIp.overlayNs = serverIp.overlay;
    // Client containers stay up; each test is a `docker exec` in them (no container start next to the measurement).
    for (const net of ['tsnet', 'ovnet']) await bc.docker(a, ['run', '-d', '--name', `iperf-client-${net}`, '--net', net, bc.image, 'sleep', '1000000']);
    // The same containers' network namespaces, entered from the host: the overlay path without the
    // containers' cgroups (here cgroup v1, where a container group competes with every busy task
    // of the root group as one entity, so other jobs' load hits containers harder than host processes).
    const sandbox = async (host: DockerHost, name: string) =>
      (await bc.docker(host, ['inspect', '-f', '{{.NetworkSettings.SandboxKey}}', name])).stdout.trim();
    const nsPath: Record<'tsnet' | 'ovnet', { client: string; server: string }> = {
      tsnet: { client: await sandbox(a, 'iperf-client-tsnet'), server: await sandbox(b, 'iperf-tsnet') },
      ovnet: { client: await sandbox(a, 'iperf-client-ovnet'), server: await sandbox(b, 'iperf-ovnet') },
    };
    for (const net of ['tsnet', 'ovnet'] as const) {
      servers.push(b.exec(['nsenter', `--net=${nsPath[net].server}`, '--', IPERF3, '-s', '-p', '5202'], { background: true, name: `iperf3-${net}-ns` }));
    }
    servers.push(spawnTracked(['nsenter', `--net=${vx.serverNs}`, '--', IPERF3, '-s'], { name: 'iperf3-vxlan' }));
    servers.push(spawnTracked(['nsenter', `--net=${vxNat.serverNs}`, '--', IPERF3, '-s'], { name: 'iperf3-vxlan-nat' }));
    servers.push(spawnTracked(['nsenter', `--net=${b.underlay!.netnsPath}`, '--', IPERF3, '-s', '-B', b.underlay!.address], { name: 'iperf3-underlay' }));
    await sleep(1000);
    for (const s of servers) if (!s.running()) throw new Error(`${s.name} exited: ${s.output()}`);

    const once = async (v: Variant): Promise<IperfResult> => {
      switch (v) {
        case 'tsoverlay':
        case 'overlay': {
          const client = `iperf-client-${v === 'tsoverlay' ? 'tsnet' : 'ovnet'}`;
          return parseIperf((await bc.docker(a, ['exec', client, ...clientArgs(serverIp[v])], timeoutMs)).stdout);
        }
        case 'tsoverlayNs':
        case 'overlayNs': {
          const ns = nsPath[v === 'tsoverlayNs' ? 'tsnet' : 'ovnet'].client;
          const [, ...args] = clientArgs(serverIp[v], 5202);
          return parseIperf((await a.exec(['nsenter', `--net=${ns}`, '--', IPERF3, ...args], { timeoutMs })).stdout);
        }
        case 'vxlan':
        case 'vxlanNat': {
          const ns = v === 'vxlan' ? vx.clientNs : vxNat.clientNs;
          return parseIperf((await run(['nsenter', `--net=${ns}`, '--', ...clientArgs(serverIp[v])], { timeoutMs })).stdout);
        }
        case 'underlay':
          return parseIperf((await run(['nsenter', `--net=${a.underlay!.netnsPath}`, '--', ...clientArgs(serverIp.underlay)], { timeoutMs })).stdout);
      }
    };

    const variants: Variant[] = ['tsoverlay', 'tsoverlayNs', 'vxlan', 'vxlanNat', 'overlay', 'overlayNs', 'underlay'];
    // One untimed test each: ARP, first connection, caches warmed.
    for (const v of p.warmup ? variants : []) {
      const r = await once(v).catch((e: unknown) => e as Error);
      if (r instanceof Error) throw new Error(`warm-up of ${v} failed: ${r.message}`);
    }
    const results: Record<Variant, IperfResult[]> = { tsoverlay: [], tsoverlayNs: [], vxlan: [], vxlanNat: [], overlay: [], overlayNs: [], underlay: [] };
    const runs = Math.max(1, Math.round(p.runs));
    const pairRatios: number[] = [];
    const nsRatios: number[] = [];
    const natRatios: number[] = [];
    for (let i = 1; i <= runs; i++) {
      // tsoverlay and the hand-built VXLANs run back to back (in a random order) so that each
      // round gives ratios measured under the same background load; the others go before or after.
      const order = shuffled<Variant[]>([shuffled<Variant>(['tsoverlay', 'tsoverlayNs', 'vxlan', 'vxlanNat']), shuffled<Variant>(['overlay', 'overlayNs']), ['underlay']]).flat();
      for (const v of order) {
        const r = await once(v);
        results[v].push(r);
        ctx.log(`run ${i}/${runs} ${v}: ${(r.bitsPerSecond / 1e9).toFixed(2)} Gbit/s, ${r.retransmits} retransmits`);
      }
      pairRatios.push(results.tsoverlay[i - 1]!.bitsPerSecond / results.vxlan[i - 1]!.bitsPerSecond);
      natRatios.push(results.tsoverlay[i - 1]!.bitsPerSecond / results.vxlanNat[i - 1]!.bitsPerSecond);
      nsRatios.push(results.tsoverlayNs[i - 1]!.bitsPerSecond / results.vxlan[i - 1]!.bitsPerSecond);
    }
    const gbps = (v: Variant) => median(results[v].map((r) => r.bitsPerSecond / 1e9));
    const rows = variants.map((v) => [
      LABEL[v],
      fmt(gbps(v), 2),
      results[v].map((r) => (r.bitsPerSecond / 1e9).toFixed(2)).join(', '),
      fmtRatio(ratio(gbps(v), gbps('vxlan'))),
      fmtRatio(ratio(gbps(v), gbps('vxlanNat'))),
      fmtRatio(ratio(gbps(v), gbps('underlay'))),
      String(median(results[v].map((r) => r.retransmits))),
    ]);
    return {
      tables: [
        {
          title: `iperf3 TCP, 1 stream, ${secs} s per run (first ${omit} s omitted), median of ${runs}${pin.length > 0 ? ", client pinned to CPU 0 and server to CPU 1 (iperf3 -A 0,1)" : ""}`,
          columns: ['path', 'Gbit/s (median)', 'runs, Gbit/s', 'vs hand-built VXLAN', 'vs hand-built VXLAN with Docker NAT', 'vs underlay', 'retransmits (median)'],
          rows,
        },
      ],
      targets: [
        target('throughput, tsoverlay container → container / hand-built VXLAN (median of per-round ratios)', median(pairRatios), '>=', 0.97),
        target("throughput, tsoverlay path from the containers' namespaces, iperf3 outside their cgroups / hand-built VXLAN (median of per-round ratios)", median(nsRatios), '>=', 0.97),
      ],
      notes: [
        `Per-round ratios (the tsoverlay and hand-built rows run back to back): container → container / hand-built ${pairRatios.map((x) => x.toFixed(2)).join(', ')}; from the containers' namespaces / hand-built ${nsRatios.map((x) => x.toFixed(2)).join(', ')}; container → container / hand-built with Docker's NAT rules ${natRatios.map((x) => x.toFixed(2)).join(', ')}.`,
        "Rows \"the same containers' network namespaces\": iperf3 (the host's binary) is started with `nsenter --net=<the container's sandbox>` from the host, on both ends: exactly the containers' network path (their eth0, tsoverlay's or Docker's veth, bridge and VXLAN device), but the processes are scheduled like the hand-built rows' instead of inside the containers' cgroups. On this machine (cgroup v1, other jobs' processes in the root cgroup) a container's cgroup competes with every busy root task as a single entity, so when other jobs load the machine, container processes can get less CPU than the host processes of the hand-built rows (in an earlier full run at load 5–6 both Docker's overlay and tsoverlay came out at 0.7–0.8× in the container rows; at load 3 all rows were within noise of each other). These rows measure the overlay path without that effect.",
        "Docker puts NAT rules for its embedded DNS server (127.0.0.11) into the namespace of every container on a user-defined network, whatever the network driver and even with `--iptables=false` (seen with `iptables-save` in the containers here). They switch on connection tracking for all the container's traffic, on both ends — a cost of Docker's containers, not of the overlay. The third row gives the hand-built VXLAN's endpoint namespaces the same rules (`iptables -t nat`: DOCKER_OUTPUT/DOCKER_POSTROUTING, DNAT/SNAT for 127.0.0.11), so that tsoverlay's tunnel path can be compared on equal terms.",
        'Two Docker hosts in network namespaces on one machine, joined by veths to a bridge (MTU 1500): every byte crosses the same kernel, so the figures measure per-packet CPU cost (encapsulation, bridging, veth hops) on this 2-core machine, not a network.',
        `Variants interleaved in a random order per round after one untimed warm-up test each. The container clients run with \`docker exec\` in containers started beforehand. Containers use the tso-bench image (busybox + Debian's iperf3 ${'3.12'} with its libraries); the host-side tests run the same binary with \`nsenter --net\`.`,
        'Hand-built VXLAN: in each host namespace `ip link add hvx0 type vxlan id 7777 dstport 4789 local <host> proxy` (7778 for the NAT variant; MTU 1450), moved into a bridge namespace with `br0`, a veth to an endpoint namespace, and a static `fdb … dst <other host> self permanent` plus a PERMANENT neighbour entry for the other end — what tsoverlay programs, built by hand.',
      ],
      complete: variants.every((v) => results[v].length === runs),
    };
  },
);
