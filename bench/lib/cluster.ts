/**
 * Two (or more) Docker hosts on one machine for the benchmarks, from the e2e harness
 * (test/helpers): an underlay bridge, a dockerd per host namespace, the tso-bench image, and
 * optionally tsoverlay (etcd on the underlay, `tsoverlay serve` per host) and Docker's swarm
 * overlay (swarm init on the first host, the others join). One cleanup, registered last and so
 * run first, leaves the swarm, tears the cluster down and then stops etcd (the plugins need the
 * store while the hosts remove their containers).
 */
import { startCluster, type Cluster, type DockerHost } from '../../test/helpers/docker';
import { startEtcd, type EtcdServer } from '../../test/helpers/etcd';
import { startPlugin, type PluginProcess } from '../../test/helpers/plugin';
import { registerCleanup, type RunResult } from '../../test/helpers/proc';
import { BENCH_IMAGE, importBenchImage } from './image';

export interface BenchClusterOptions {
  hosts?: number;
  tsoverlay?: boolean;
  swarm?: boolean;
  log?: (m: string) => void;
}

export interface BenchCluster {
  cluster: Cluster;
  hosts: DockerHost[];
  image: string;
  etcd?: EtcdServer;
  plugins: PluginProcess[];
  /** `docker …` (20.10 CLI) against a host; throws on failure. */
  docker(host: DockerHost, args: readonly string[], timeoutMs?: number): Promise<RunResult>;
  /** Creates a tsoverlay network (driver and IPAM) with the same subnet on every host. */
  createTsNetwork(name: string, subnet: string): Promise<void>;
  /** Creates an attachable swarm overlay network on the manager. */
  createSwarmNetwork(name: string, subnet: string): Promise<void>;
  teardown(): Promise<void>;
}

export async function startBenchCluster(opts: BenchClusterOptions = {}): Promise<BenchCluster> {
  const log = opts.log ?? (() => undefined);
  const n = opts.hosts ?? 2;
  log(`starting ${n} Docker hosts`);
  const cluster = await startCluster({ hosts: n, image: false });
  const hosts = [...cluster.hosts];
  let etcd: EtcdServer | undefined;
  let swarm = false;
  let tornDown = false;
  const docker = (host: DockerHost, args: readonly string[], timeoutMs = 120_000) => host.cli(args, { timeoutMs });

  const teardown = async (): Promise<void> => {
    if (tornDown) return;
    tornDown = true;
    if (swarm) {
      // Workers first, then the manager; best effort (the data roots are removed anyway).
      for (const h of [...hosts].reverse()) {
        if (h.running()) await h.cli(['swarm', 'leave', '--force'], { timeoutMs: 30_000, allowFailure: true }).catch(() => undefined);
      }
    }
    await cluster.teardown();
    await etcd?.stop();
  };
  const unregister = registerCleanup('bench cluster', teardown);

  try {
    await Promise.all(hosts.map((h) => importBenchImage(h.docker)));
    const plugins: PluginProcess[] = [];
    if (opts.tsoverlay) {
      etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
      const endpoint = etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway));
      if (!endpoint) throw new Error('etcd does not listen on the underlay');
      log(`etcd on ${endpoint}; starting tsoverlay on each host`);
      for (const h of hosts) plugins.push(await startPlugin(h, { store: `etcd://${endpoint}`, extraArgs: ['--log-level', 'info', '--docker-socket', h.socketPath] }));
    }
    if (opts.swarm) {
      const [manager, ...workers] = hosts as [DockerHost, ...DockerHost[]];
      const addr = manager.underlay!.address;
      log(`swarm init on ${manager.name} (${addr}), ${workers.length} worker(s) join`);
      swarm = true;
      await docker(manager, ['swarm', 'init', '--advertise-addr', addr, '--listen-addr', `${addr}:2377`]);
      const token = (await docker(manager, ['swarm', 'join-token', '-q', 'worker'])).stdout.trim();
      for (const w of workers) {
        await docker(w, ['swarm', 'join', '--token', token, '--advertise-addr', w.underlay!.address, '--listen-addr', `${w.underlay!.address}:2377`, `${addr}:2377`]);
      }
    }
    const bc: BenchCluster = {
      cluster,
      hosts,
      image: BENCH_IMAGE,
      ...(etcd ? { etcd } : {}),
      plugins,
      docker,
      async createTsNetwork(name, subnet) {
        for (const h of hosts) await docker(h, ['network', 'create', '-d', 'tsoverlay', '--ipam-driver', 'tsoverlay', '--subnet', subnet, name]);
      },
      async createSwarmNetwork(name, subnet) {
        await docker(hosts[0]!, ['network', 'create', '-d', 'overlay', '--attachable', '--subnet', subnet, name]);
      },
      async teardown() {
        unregister();
        await teardown();
      },
    };
    return bc;
  } catch (err) {
    unregister();
    await teardown();
    throw err;
  }
}
