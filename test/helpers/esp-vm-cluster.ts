/**
 * Real daemons with `-o encrypted`, run inside the qemu VM by
 * test/integration/encryption-qemu.test.ts (the VM's kernel has ESP; this machine's has not).
 *
 * In the VM: an etcd on the underlay bridge's own address, and up to three "hosts" as network
 * namespaces on that bridge, each with a real `tsoverlay serve` (its own state directory, netns
 * directory and VTEP). They are driven over their plugin sockets as dockerd drives them
 * (Plugin.Activate, IpamDriver.RequestPool/RequestAddress, NetworkDriver.CreateNetwork with
 * `com.docker.network.generic` {"encrypted": ""}, CreateEndpoint, Join), and the Join's veth is
 * moved into a "container" namespace and configured as Docker does. The checks then use only
 * what a user has: ping, tcpdump on the underlay, `ip xfrm`, `tsoverlay rotate-keys` and
 * `tsoverlay inspect --check`.
 *
 *   node esp-vm-cluster.js '{"encryptedPort":4793}'
 *
 * Prints `RESULT rd_<name>=<value>` lines (read by the test), and progress lines without the
 * prefix. The VM is thrown away afterwards, so nothing here is cleaned up but the processes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { PluginClient, dockerId } from '../../bench/lib/plugin';
import { NODE_FLAGS } from '../../src/node-flags';
import { PLUGIN_MAIN } from './plugin';
import { type ManagedProcess, run, sleep, spawnTracked } from './proc';

const argsSchema = z.object({ encryptedPort: z.number().int().min(1).max(65535) });

const NET = '10.98.0';
const ETCD_URL = `etcd://${NET}.254:2379`;
const GLOBAL_SPACE = 'tsoverlay-global';
const GATEWAY_OPTION = { RequestAddressType: 'com.docker.network.gateway' };
const ROOT = '/tmp/rd';

const say = (k: string, v: string | number | boolean): void => {
  process.stdout.write(`RESULT rd_${k}=${String(v)}\n`);
};
const note = (m: string): void => {
  process.stdout.write(`rd: ${m}\n`);
};
const t0 = Date.now();
const elapsed = (): string => `${((Date.now() - t0) / 1000).toFixed(1)}s`;

async function sh(argv: readonly string[], timeoutMs = 120_000): Promise<string> {
  return (await run(argv, { timeoutMs })).stdout;
}

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined | false>): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(250);
  }
}

// ---------------------------------------------------------------- hosts and daemons

interface Network {
  id: string;
  poolId: string;
}

interface Host {
  name: string;
  vtep: string;
  netns: string;
  argv: string[];
  proc: ManagedProcess;
  client: PluginClient;
  networks: Map<string, Network>;
}

async function makeUnderlay(): Promise<void> {
  // The VM's init brings no interface up, not even loopback (etcd's peer URL is on it).
  const lines = ['link set lo up', 'link add rdul type bridge', `addr add ${NET}.254/24 dev rdul`, 'link set rdul up'];
  for (const i of [1, 2, 3]) {
    lines.push(`netns add rd${i}`, `link add rdh${i} type veth peer name eth0 netns rd${i}`, `link set rdh${i} master rdul up`);
  }
  await run(['ip', '-batch', '-'], { input: `${lines.join('\n')}\n` });
  for (const i of [1, 2, 3]) {
    await run(['ip', '-n', `rd${i}`, '-batch', '-'], { input: `addr add ${NET}.${i}/24 dev eth0\nlink set eth0 up\nlink set lo up\n` });
  }
}

async function startEtcd(): Promise<void> {
  const dir = path.join(ROOT, 'etcd');
  fs.mkdirSync(dir, { recursive: true });
  const peer = 'http://127.0.0.1:2380';
  const etcd = spawnTracked(
    ['etcd', '--name', 'vm', '--data-dir', path.join(dir, 'data'), '--listen-client-urls', `http://${NET}.254:2379`, '--advertise-client-urls', `http://${NET}.254:2379`,
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `vm=${peer}`],
    { name: 'etcd', logFile: path.join(dir, 'etcd.log'), keepChars: 16 * 1024 },
  );
  await until('etcd health', 120_000, async () => {
    if (!etcd.running()) throw new Error('etcd exited');
    const r = await run(['etcdctl', `--endpoints=http://${NET}.254:2379`, 'endpoint', 'health'], { allowFailure: true, timeoutMs: 20_000 });
    return r.code === 0;
  }).catch((err: Error) => {
    throw new Error(`${err.message}\netcd: ${etcd.output().slice(-3000)}`);
  });
}

/**
 * rd2 is the host restarted: a restart keeps the SAs only while its records outlive it, and
 * emulated its restart takes tens of seconds, so its lease is long. The others' are short, so
 * that rd3's death is seen quickly.
 */
const leaseTtl = (name: string): number => (name === 'rd2' ? 120 : 15);

function daemonArgv(name: string, vtep: string): string[] {
  const dir = path.join(ROOT, name);
  return [
    'nsenter', `--net=/run/netns/${name}`, '--',
    process.execPath, ...NODE_FLAGS, PLUGIN_MAIN, 'serve',
    '--socket', path.join(dir, 'tsoverlay.sock'),
    '--store', ETCD_URL,
    '--netns-dir', path.join(dir, 'netns'),
    '--host-name', name,
    '--state-dir', path.join(dir, 'state'),
    '--vtep', vtep,
    // Emulated, a store call can take seconds (the first ones, while grpc warms up, ten): the
    // deployed default would time requests out before the machine does anything wrong.
    '--store-timeout', '60',
    // Longer than the pauses of an emulated machine shared with other jobs, or a live host's
    // records (and with them its SAs on the others) would come and go.
    '--lease-ttl', String(leaseTtl(name)),
    '--dns', 'off',
    '--log-level', 'info',
  ];
}

function spawnDaemon(name: string, argv: readonly string[]): ManagedProcess {
  return spawnTracked(argv, { name: `tsoverlay-${name}`, logFile: path.join(ROOT, name, 'plugin.log'), keepChars: 64 * 1024, stopTimeoutMs: 10_000 });
}

/** Until the daemon has registered in the store and answers (requests before that get 503s). */
async function waitServing(h: Host, from = 0): Promise<void> {
  await until(`${h.name} serving`, 240_000, async () => {
    if (!h.proc.running()) throw new Error(`${h.name} exited:\n${h.proc.output().slice(-3000)}`);
    return h.proc.output().indexOf('tsoverlay serving', from) >= 0;
  });
  await h.client.call('Plugin.Activate');
}

async function startHost(i: number): Promise<Host> {
  const name = `rd${i}`;
  const vtep = `${NET}.${i}`;
  fs.mkdirSync(path.join(ROOT, name), { recursive: true });
  const argv = daemonArgv(name, vtep);
  const h: Host = { name, vtep, netns: `/run/netns/${name}`, argv, proc: spawnDaemon(name, argv), client: new PluginClient(path.join(ROOT, name, 'tsoverlay.sock'), 8), networks: new Map() };
  await waitServing(h);
  return h;
}

/** `docker network create -d tsoverlay --ipam-driver tsoverlay --subnet S [-o encrypted] N` as dockerd sends it. */
async function createNetwork(h: Host, name: string, subnet: string, generic: Record<string, string>): Promise<void> {
  const { PoolID } = await h.client.call<{ PoolID: string }>('IpamDriver.RequestPool', { AddressSpace: GLOBAL_SPACE, Pool: subnet, SubPool: '', Options: {}, V6: false });
  const { Address: gateway } = await h.client.call<{ Address: string }>('IpamDriver.RequestAddress', { PoolID, Address: '', Options: GATEWAY_OPTION });
  const id = dockerId();
  await h.client.call('NetworkDriver.CreateNetwork', {
    NetworkID: id,
    Options: { 'com.docker.network.enable_ipv6': false, 'com.docker.network.generic': generic },
    IPv4Data: [{ AddressSpace: GLOBAL_SPACE, Pool: subnet, Gateway: gateway }],
    IPv6Data: [],
  });
  h.networks.set(name, { id, poolId: PoolID });
}

/**
 * `docker run --network N`: an address, CreateEndpoint, Join, then what dockerd does with the
 * answer: the veth named SrcName moves into the container's namespace, becomes eth0 and gets the
 * endpoint's address and MAC. Returns the container's address.
 */
async function runContainer(h: Host, network: string, container: string): Promise<string> {
  const net = h.networks.get(network);
  if (!net) throw new Error(`${h.name} has no network ${network}`);
  const { Address } = await h.client.call<{ Address: string }>('IpamDriver.RequestAddress', { PoolID: net.poolId, Address: '', Options: {} });
  const EndpointID = dockerId();
  const ep = await h.client.call<{ Interface?: { MacAddress?: string } }>('NetworkDriver.CreateEndpoint', {
    NetworkID: net.id,
    EndpointID,
    Interface: { Address, AddressIPv6: '', MacAddress: '' },
    Options: {},
  });
  await run(['ip', 'netns', 'add', container]);
  const join = await h.client.call<{ InterfaceName: { SrcName: string; DstPrefix: string } }>('NetworkDriver.Join', {
    NetworkID: net.id,
    EndpointID,
    SandboxKey: `/run/netns/${container}`,
    Options: {},
  });
  const src = join.InterfaceName.SrcName;
  const eth = `${join.InterfaceName.DstPrefix}0`;
  await run(['ip', '-n', h.name, 'link', 'set', src, 'netns', container]);
  const mac = ep.Interface?.MacAddress;
  const batch = [`link set ${src} name ${eth}`, ...(mac ? [`link set ${eth} address ${mac}`] : []), `addr add ${Address} dev ${eth}`, `link set ${eth} up`, 'link set lo up'];
  await run(['ip', '-n', container, '-batch', '-'], { input: `${batch.join('\n')}\n` });
  return Address.split('/')[0]!;
}

// ---------------------------------------------------------------- observing

const inNs = (ns: string, argv: readonly string[]): string[] => ['ip', 'netns', 'exec', ns, ...argv];

/** Percentage of lost pings (ping's own summary). */
async function pingLoss(from: string, to: string, count: number, waitS = 10): Promise<number> {
  const r = await run(inNs(from, ['ping', '-c', String(count), '-i', '0.2', '-W', String(waitS), to]), { allowFailure: true, timeoutMs: 120_000 });
  const m = /([0-9.]+)% packet loss/.exec(r.stdout);
  return m ? Number(m[1]) : 100;
}

/** Waits until one ping gets through (the peers reached the other side); the time it took, in ms. */
async function reachable(from: string, to: string, timeoutMs = 90_000): Promise<number> {
  const start = Date.now();
  await until(`${from} reaching ${to}`, timeoutMs, async () => {
    const r = await run(inNs(from, ['ping', '-c', '1', '-W', '2', to]), { allowFailure: true, timeoutMs: 30_000 });
    return r.code === 0;
  });
  return Date.now() - start;
}

/** A ping at 10/s in the background; `stop()` gives the pings lost between the first and the last reply, and the number sent. */
function pingFlow(from: string, to: string, label: string): { stop(): Promise<{ lost: number; sent: number }> } {
  const p = spawnTracked(inNs(from, ['ping', '-i', '0.1', '-W', '10', to]), { name: `ping-${label}`, keepChars: 1 << 20, stopTimeoutMs: 5000 });
  return {
    async stop() {
      await p.stop({ signal: 'SIGINT' });
      const out = p.output();
      // Those still in flight when SIGINT came are not losses: only gaps between replies are.
      const seqs = [...new Set([...out.matchAll(/icmp_seq=(\d+)/g)].map((m) => Number(m[1])))].sort((a, b) => a - b);
      const sent = Number(/^(\d+) packets transmitted/m.exec(out)?.[1] ?? -1);
      if (seqs.length === 0) return { lost: -1, sent };
      const last = seqs[seqs.length - 1]!;
      // Pings sent after the last reply: beyond two seconds' worth, they were lost, not in flight.
      const trailing = Math.max(0, sent - last - 20);
      return { lost: last - seqs[0]! + 1 - seqs.length + trailing, sent };
    },
  };
}

/** tcpdump on a host's underlay interface; `stop()` returns the capture file. */
async function capture(host: string, label: string): Promise<{ stop(): Promise<string> }> {
  const file = path.join(ROOT, `${label}.pcap`);
  const p = spawnTracked(inNs(host, ['tcpdump', '-i', 'eth0', '-n', '-U', '-s', '200', '-w', file]), { name: `tcpdump-${label}`, stopTimeoutMs: 5000 });
  // Emulated and loaded, tcpdump may take seconds to start: it writes the file's header once it captures.
  await until(`tcpdump ${label}`, 60_000, async () => fs.existsSync(file) && fs.statSync(file).size > 0);
  await sleep(500);
  return {
    async stop() {
      await sleep(1500);
      await p.stop({ signal: 'SIGINT' });
      return file;
    },
  };
}

/** The capture's packets matching `filter`, one line each, as tcpdump decodes them. */
async function packets(file: string, filter: string): Promise<string[]> {
  const out = await sh(['tcpdump', '-r', file, '-n', ...(filter ? [filter] : [])]).catch(() => '');
  return out.split('\n').filter((l) => l.trim() !== '');
}

interface XfrmView {
  sas: string[];
  policies: string[];
}

/** A host's SAs (src>dst spi) and our out policies (their template SPI) in its namespace. */
async function xfrm(host: string): Promise<XfrmView> {
  const state = await sh(['ip', '-n', host, 'xfrm', 'state']);
  const sas = [...state.matchAll(/^src (\S+) dst (\S+)\s*\n\s*proto esp spi (0x[0-9a-f]+)/gm)].map((m) => `${m[1]}>${m[2]} ${m[3]}`).sort();
  const pol = await sh(['ip', '-n', host, 'xfrm', 'policy']);
  const policies = pol
    .split(/\n(?=src )/)
    .filter((b) => b.startsWith('src '))
    .map((b) => `${b.split('\n')[0]!.trim()} ${/spi (0x[0-9a-f]+)/.exec(b)?.[1] ?? ''}`.trim())
    .sort();
  return { sas, policies };
}

/** SAs and policies of `v` with `addr` at either end. */
function about(v: XfrmView, addr: string): number {
  const re = new RegExp(`(^|[ >])${addr.replace(/\./g, '\\.')}([/> ]|$)`);
  return [...v.sas, ...v.policies].filter((l) => re.test(l)).length;
}

async function cli(args: readonly string[], ns?: string): Promise<{ code: number | null; out: string }> {
  const argv = [process.execPath, PLUGIN_MAIN, ...args];
  const r = await run(ns ? ['nsenter', `--net=${ns}`, '--', ...argv] : argv, { allowFailure: true, timeoutMs: 120_000 });
  return { code: r.code, out: `${r.stdout}${r.stderr}`.trim() };
}

// ---------------------------------------------------------------- the scenario

async function main(): Promise<void> {
  const args = argsSchema.parse(JSON.parse(process.argv[2] ?? '{}'));
  const P = args.encryptedPort;
  fs.mkdirSync(ROOT, { recursive: true });
  await makeUnderlay();
  await startEtcd();
  note(`etcd up at ${elapsed()}`);
  const [h1, h2] = await Promise.all([startHost(1), startHost(2)]);
  note(`rd1, rd2 serving at ${elapsed()}`);

  // 1. An encrypted network on both hosts, a container on each: pings pass as ESP, never VXLAN.
  for (const h of [h1, h2]) await createNetwork(h, 'enc', '10.51.0.0/24', { encrypted: '' });
  const e1 = await runContainer(h1, 'enc', 'rc1');
  const e2 = await runContainer(h2, 'enc', 'rc2');
  say('enc_converge_ms', await reachable('rc1', e2));
  say('enc_sas_h1', (await xfrm('rd1')).sas.length);
  const encCap = await capture('rd2', 'enc');
  say('enc_loss', await pingLoss('rc1', e2, 5));
  const encFile = await encCap.stop();
  say('enc_esp', (await packets(encFile, 'esp')).length);
  say('enc_vxlan', (await packets(encFile, `udp port ${P} or udp port 4789`)).length);
  // The containers' addresses would show in a cleartext capture of any kind.
  say('enc_clear_ips', (await packets(encFile, '')).filter((l) => l.includes(` ${e1} `) || l.includes(` ${e2}:`) || l.includes(` ${e2} `)).length);
  note(`encrypted network checked at ${elapsed()}`);

  // 2. A plain network between the same hosts stays plain VXLAN on 4789: its pings are visible.
  for (const h of [h1, h2]) await createNetwork(h, 'plain', '10.52.0.0/24', {});
  await runContainer(h1, 'plain', 'rp1');
  const p2 = await runContainer(h2, 'plain', 'rp2');
  await reachable('rp1', p2);
  const plainCap = await capture('rd2', 'plain');
  say('plain_loss', await pingLoss('rp1', p2, 3));
  const plainFile = await plainCap.stop();
  say('plain_clear_icmp', (await packets(plainFile, 'udp port 4789')).filter((l) => /ICMP echo (request|reply)/.test(l) && l.includes(p2)).length);
  say('plain_on_enc_port', (await packets(plainFile, `udp port ${P}`)).length);
  note(`plain network checked at ${elapsed()}`);

  // 3. `tsoverlay rotate-keys` twice under 10 pings/s: nothing lost, the send SPIs change.
  const before = await xfrm('rd1');
  const rot = pingFlow('rc1', e2, 'rotate');
  await sleep(2000);
  const rotStart = Date.now();
  const prev = [(await xfrm('rd1')).policies.join(), (await xfrm('rd2')).policies.join()];
  // Refused while a host has not applied the previous epoch (the ring was just made): retried.
  const accepted = await until('rotate-keys accepted', 240_000, async () => {
    const c = await cli(['rotate-keys', '--store', ETCD_URL, '--store-timeout', '60']);
    note(`rotate-keys (exit ${c.code}) at ${elapsed()}: ${c.out}`);
    return c.code === 0;
  });
  // Both hosts switch over: their out policies name the new epoch's SPIs.
  await until('both hosts on the new epoch', 120_000, async () => {
    const now = [(await xfrm('rd1')).policies.join(), (await xfrm('rd2')).policies.join()];
    return now[0] !== prev[0] && now[1] !== prev[1];
  });
  const rotMs = Date.now() - rotStart;
  await sleep(2000);
  const rotRes = await rot.stop();
  say('rot_sent', rotRes.sent);
  say('rot_lost', rotRes.lost);
  say('rot_accepted', accepted);
  say('rot_spi_changed', (await xfrm('rd1')).policies.join() !== before.policies.join());
  say('rot_switch_ms', rotMs);
  note(`rotations checked at ${elapsed()}`);

  // 4. A third host joins later: it gets SAs with both and its container reaches both.
  const h3 = await startHost(3);
  await createNetwork(h3, 'enc', '10.51.0.0/24', { encrypted: '' });
  const joined = Date.now();
  await runContainer(h3, 'enc', 'rc3');
  await reachable('rc3', e1);
  await reachable('rc3', e2);
  say('join_reach_ms', Date.now() - joined);
  say('join_loss_1', await pingLoss('rc3', e1, 3));
  say('join_loss_2', await pingLoss('rc3', e2, 3));
  say('join_sas_h1_with_h3', about(await xfrm('rd1'), `${NET}.3`));
  say('join_sas_h3', (await xfrm('rd3')).sas.length);
  note(`third host checked at ${elapsed()}`);

  // 5. rd2's daemon SIGKILLed and restarted under 10 pings/s: the SAs stay, nothing is lost,
  //    the restart changes nothing in the kernel and `inspect --check` is clean.
  const kept = await xfrm('rd2');
  const flow = pingFlow('rc1', e2, 'restart');
  await sleep(1500);
  await h2.proc.stop({ signal: 'SIGKILL' });
  const afterKill = await xfrm('rd2');
  say('restart_sas_kept', afterKill.sas.join() === kept.sas.join() && kept.sas.length > 0);
  h2.proc = spawnDaemon(h2.name, h2.argv);
  await waitServing(h2);
  note(`rd2 serving again at ${elapsed()}`);
  // Long enough for the restarted daemon's first reconciliation to have run.
  await sleep(5000);
  const restartRes = await flow.stop();
  say('restart_sent', restartRes.sent);
  say('restart_lost', restartRes.lost);
  say('restart_kernel_same', (await xfrm('rd2')).sas.join() === kept.sas.join());
  const check = await cli(['inspect', '--check', '--store', ETCD_URL, '--netns-dir', path.join(ROOT, 'rd2', 'netns'), '--host-name', 'rd2', '--state-dir', path.join(ROOT, 'rd2', 'state'), '--store-timeout', '60'], h2.netns);
  note(`inspect --check on rd2 (exit ${check.code}):\n${check.out}`);
  say('restart_check_exit', check.code ?? -1);
  note(`restart checked at ${elapsed()}`);

  // 6. rd3 dies (daemon killed; its lease expires): its SAs and policies go on rd1 and rd2.
  await h3.proc.stop({ signal: 'SIGKILL' });
  const died = Date.now();
  const gone = await until('rd3 forgotten', 120_000, async () => {
    const n = about(await xfrm('rd1'), `${NET}.3`) + about(await xfrm('rd2'), `${NET}.3`);
    return n === 0 ? true : undefined;
  }).catch(() => false);
  say('dead_forgotten', gone);
  say('dead_forget_ms', Date.now() - died);
  say('dead_left_h1', about(await xfrm('rd1'), `${NET}.3`));
  say('dead_left_h2', about(await xfrm('rd2'), `${NET}.3`));
  const still = await pingLoss('rc1', e2, 3);
  say('dead_still_12', still);
  if (still !== 0) {
    for (const h of ['rd1', 'rd2']) {
      note(`${h} after rd3 died:\n${await sh(['ip', '-n', h, 'xfrm', 'state'])}\n${await sh(['ip', '-n', h, 'xfrm', 'policy'])}\n${await sh(['cat', `/proc/${h === 'rd1' ? h1.proc.pid : h2.proc.pid}/net/xfrm_stat`])}`);
    }
    say('dead_plain_12', await pingLoss('rp1', p2, 3));
    say('dead_enc_21', await pingLoss('rc2', e1, 3));
    for (const h of [h1, h2]) note(`${h.name} log:\n${h.proc.output().split('\n').filter((l) => /ncrypt|ipsec|SA|rd3|peer/.test(l)).slice(-25).join('\n')}`);
  }
  note(`host death checked at ${elapsed()}`);

  for (const h of [h1, h2]) await h.proc.stop();
  say('done', 'yes');
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    say('error', JSON.stringify(err instanceof Error ? err.message : String(err)));
    if (err instanceof Error) note(err.stack ?? '');
    for (const n of ['rd1', 'rd2', 'rd3']) {
      const f = path.join(ROOT, n, 'plugin.log');
      if (fs.existsSync(f)) note(`${n} log tail:\n${fs.readFileSync(f, "utf8").slice(-3000)}`);
    }
    process.exit(1);
  },
);
