/**
 * Real dockerd "hosts" for end-to-end tests: one network and mount namespace each on this machine.
 *
 * Each host is a dockerd (20.10 or 28: see Engine, chosen with TSO_ENGINE) started as
 *
 *   nsenter --net=/run/netns/<prefix>h1 unshare -m --propagation private \
 *     docker-init -s -p SIGTERM -- sh -c 'mount -t tmpfs none /run/docker/plugins; …; exec dockerd
 *       --data-root /tmp/<prefix>/h1/data --exec-root /run/<prefix>-h1 -H unix:///run/<prefix>-h1.sock
 *       --pidfile /tmp/<prefix>/h1/dockerd.pid --storage-driver vfs --iptables=false --ip-masq=false
 *       --bridge=none --config-file /tmp/<prefix>/h1/daemon.json --shutdown-timeout 5'
 *
 * - its own network namespace (a test-underlay host), or the root one (startSingleDockerHost);
 * - its own mount namespace with private tmpfs on /run/docker/plugins (so each host has
 *   its own plugin socket directory), /run/containerd (so a system containerd's socket
 *   is never picked up: each dockerd starts its own managed containerd under its
 *   exec-root) and /run/tsoverlay (the plugin's default netns directory);
 * - docker-init (tini, from docker.io) as a subreaper: containerd shims that daemonize are
 *   re-parented to it instead of PID 1 (so they are reaped and traceable), and it sends
 *   dockerd SIGTERM if the test process dies without cleaning up.
 *
 * host.exec(argv) runs a command in the host's network + mount namespaces
 * (nsenter -t <dockerd pid> -n -m): that is how a plugin process is started so that its
 * socket lands in that host's private /run/docker/plugins.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import Dockerode from 'dockerode';
import { BUSYBOX_IMAGE, canBuildImage, importBusyboxImage } from './image';
import { createUnderlay, listLinks, listNetns, type Underlay, type UnderlayHost, type UnderlayOptions } from './hosts';
import {
  descendants,
  forgetResource,
  isAlive,
  keepLogs,
  killPids,
  killPidsSync,
  listProcs,
  nsId,
  nsIdOfFile,
  readProc,
  reapStaleRuns,
  recordResource,
  registerCleanup,
  removeTree,
  run,
  runDir,
  runPrefix,
  runSync,
  sleep,
  sleepSync,
  sleepUnref,
  spawnTracked,
  tail,
  type ManagedProcess,
  type PidRef,
  type RunOptions,
  type RunResult,
} from './proc';

/** The Docker 20.10 CLI from docker.io (/usr/local/bin/docker, first on PATH, is a 28.x client). */
export const DOCKER_CLI = '/usr/bin/docker';
export const DOCKERD = '/usr/sbin/dockerd';
export const DOCKER_INIT = '/usr/bin/docker-init';

/**
 * The Docker engines the end-to-end suites run on. "20.10" is Debian 12's docker.io; "28" is
 * Docker 28.5.2 from Debian sid, unpacked by .ci/provision-extras.sh into one folder (its
 * dockerd, docker CLI, containerd, shim, docker-init and a link to the system's runc) that is
 * put first on that dockerd's PATH so it starts its own containerd.
 */
export type EngineName = '20.10' | '28';
export const ENGINE_NAMES: readonly EngineName[] = ['20.10', '28'];

export interface Engine {
  readonly name: EngineName;
  readonly dockerd: string;
  /** The CLI of the same version. */
  readonly cli: string;
  readonly dockerInit: string;
  /** Folder put first on dockerd's PATH, or undefined for the system's packages. */
  readonly binDir: string | undefined;
  /** A folder holding the docker-compose CLI plugin, when provisioned. */
  readonly cliPluginsDir: string | undefined;
  /** dockerd flags this engine needs beside the common ones. */
  readonly extraArgs: readonly string[];
  /** 20.10 keeps its engine ID in a key file whose path daemon.json can move; 28 refuses that key. */
  readonly keyPathOption: boolean;
}

const EXTRAS_CACHE = process.env.TSO_EXTRAS_CACHE ?? '/var/cache/tsoverlay-ci';

/** Where .ci/provision-extras.sh leaves Docker 28 (its env file names it; this is its default). */
export function docker28Dir(): string {
  return process.env.TSO_DOCKER28_DIR ?? path.join(EXTRAS_CACHE, 'docker-28.5.2', 'bin');
}

function composePluginsDir(): string | undefined {
  const dir = process.env.TSO_DOCKER28_CLI_PLUGINS ?? path.join(EXTRAS_CACHE, 'docker-28.5.2', 'cli-plugins');
  return fs.existsSync(path.join(dir, 'docker-compose')) ? dir : undefined;
}

export function engineByName(name: EngineName): Engine {
  if (name === '20.10') {
    return {
      name,
      dockerd: DOCKERD,
      cli: DOCKER_CLI,
      dockerInit: DOCKER_INIT,
      binDir: undefined,
      cliPluginsDir: composePluginsDir(),
      extraArgs: [],
      keyPathOption: true,
    };
  }
  const dir = docker28Dir();
  return {
    name,
    dockerd: path.join(dir, 'dockerd'),
    cli: path.join(dir, 'docker'),
    dockerInit: path.join(dir, 'docker-init'),
    binDir: dir,
    cliPluginsDir: composePluginsDir(),
    // 28 programs ip6tables by default; the test hosts must not touch the machine's firewall.
    extraArgs: ['--ip6tables=false'],
    keyPathOption: false,
  };
}

/** TSO_ENGINE (default 20.10): the engine this test process runs its hosts on. */
export function currentEngine(): Engine {
  const raw = process.env.TSO_ENGINE ?? '20.10';
  if (raw !== '20.10' && raw !== '28') throw new Error(`TSO_ENGINE must be 20.10 or 28, not ${JSON.stringify(raw)}`);
  return engineByName(raw);
}

/** Why an engine's binaries are unusable here, or false. */
export function engineMissing(engine: Engine): string | false {
  for (const bin of [engine.dockerd, engine.cli, engine.dockerInit]) {
    if (!fs.existsSync(bin)) {
      return engine.binDir === undefined
        ? `${bin} missing (.ci/run installs it)`
        : `${bin} missing (run .ci/provision-extras.sh, or set TSO_DOCKER28_DIR)`;
    }
  }
  return false;
}

/** Under CI a missing prerequisite is a failure, never a silent skip. */
export function isCi(): boolean {
  return /^(1|true|yes)$/i.test(process.env.CI ?? '');
}

/**
 * For the heaviest cases of the suites that run on both engines: a named skip on Docker 28.
 * CI runs the matrix within its time budget by running these once, on 20.10, where what they
 * measure does not depend on the engine (test/README.md lists them).
 */
export function heavyCaseSkip(what: string): string | false {
  return currentEngine().name === '20.10' ? false : `${what}: runs on Docker 20.10 only (CI time budget)`;
}

/**
 * Why end-to-end tests cannot run here, or false: node:test's `skip` value for them, so a
 * missing prerequisite shows up as a named skip rather than a failure or a silent pass.
 * `binaries` lists further programs a test needs (e.g. /usr/bin/etcd). The engine's own
 * binaries are checked too; in CI (CI=true) a missing Docker 28 throws instead, so the
 * matrix cannot shrink to one engine unnoticed.
 */
export function e2eSkipReason(binaries: readonly string[] = [], engine: Engine = currentEngine()): string | false {
  if (process.getuid?.() !== 0) return 'needs root';
  const missingEngine = engineMissing(engine);
  if (missingEngine) {
    if (isCi()) throw new Error(`Docker ${engine.name} is required in CI: ${missingEngine}`);
    return missingEngine;
  }
  for (const bin of binaries) if (!fs.existsSync(bin)) return `${bin} missing (.ci/run installs it)`;
  if (!canBuildImage()) return 'static /bin/busybox missing (apt-get install busybox-static)';
  return false;
}

/** Directories that get a private tmpfs inside each host's mount namespace. */
export const DEFAULT_PRIVATE_TMPFS: readonly string[] = ['/run/docker/plugins', '/run/containerd', '/run/tsoverlay'];

export interface DockerHostOptions {
  /** Short host name used in paths and messages ("h1", "single", …): [a-z0-9-], at most 12 characters. */
  name: string;
  /**
   * Network namespace: an underlay host, a netns name (/run/netns/NAME) or a path.
   * Omitted: the root network namespace (single-host variant).
   */
  netns?: UnderlayHost | string;
  /** Default DEFAULT_PRIVATE_TMPFS. */
  privateTmpfs?: readonly string[];
  /**
   * Mount a fresh sysfs in the host's mount namespace so that /sys/class/net shows the
   * host's network namespace (cgroup mounts are carried over). Default true; ignored in
   * the root network namespace.
   */
  freshSysfs?: boolean;
  /** Extra dockerd arguments (appended). */
  extraArgs?: readonly string[];
  /** Extra daemon.json settings. */
  daemonConfig?: Readonly<Record<string, unknown>>;
  /** Default 60 s. */
  startTimeoutMs?: number;
  /** Import tso-busybox:latest once the API answers. Default false. */
  importImage?: boolean;
  /** Environment for dockerd. */
  env?: NodeJS.ProcessEnv;
  /** Default currentEngine() (TSO_ENGINE). */
  engine?: Engine;
}

export interface HostExecOptions extends RunOptions {
  background?: false;
}

export interface BackgroundExecOptions {
  background: true;
  /** Name for messages and the log file (default: basename of argv[0]). */
  name?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Default <host dir>/<name>-<n>.log. */
  logFile?: string;
  /** Grace period between SIGTERM and SIGKILL (default 5 s). */
  stopTimeoutMs?: number;
}

export interface DockerHostTimings {
  /** Spawn until the API answered _ping. */
  startMs: number;
  /** Image import (when importImage was set). */
  imageImportMs?: number;
  /** Last stop(), when done. */
  stopMs?: number;
}

export interface DockerHost {
  readonly name: string;
  readonly prefix: string;
  readonly engine: Engine;
  /** /run/<prefix>-<name>.sock */
  readonly socketPath: string;
  /** unix:///run/<prefix>-<name>.sock (for DOCKER_HOST). */
  readonly dockerHost: string;
  /** dockerd's PID. */
  readonly pid: number;
  /** A live process in the host's namespaces: dockerd, or while it is down (restartDaemon) a placeholder. */
  nsPid(): number;
  /** dockerode client for this daemon. */
  readonly docker: Dockerode;
  /** The underlay host when started in one. */
  readonly underlay: UnderlayHost | undefined;
  /** Network namespace file, or undefined for the root network namespace. */
  readonly netnsPath: string | undefined;
  /** Per-host scratch directory /tmp/<prefix>/<name> (removed by stop()): put plugin state here. */
  readonly dir: string;
  readonly dataRoot: string;
  readonly execRoot: string;
  readonly pidFile: string;
  readonly logFile: string;
  /** "mnt:[inode]" of the host's private mount namespace. */
  readonly mountNs: string;
  /** "net:[inode]" of its network namespace. */
  readonly netNs: string;
  readonly timings: DockerHostTimings;
  /**
   * Runs argv inside the host (its network + mount namespaces) and waits for it;
   * with `{background: true}` starts it and returns the tracked process instead
   * (stopped by host.stop() after dockerd, unless stopped earlier).
   */
  exec(argv: readonly string[], opts?: HostExecOptions): Promise<RunResult>;
  exec(argv: readonly string[], opts: BackgroundExecOptions): ManagedProcess;
  /**
   * Runs the engine's own docker CLI against this daemon (from the root namespaces), with a
   * per-host DOCKER_CONFIG whose cli-plugins holds docker-compose when it is provisioned.
   */
  cli(args: readonly string[], opts?: RunOptions): Promise<RunResult>;
  /** Environment under which a `docker` command talks to this daemon (DOCKER_HOST, DOCKER_CONFIG, PATH). */
  cliEnv(): NodeJS.ProcessEnv;
  /** Tail of dockerd's log. */
  logs(maxChars?: number): string;
  running(): boolean;
  /**
   * Stops dockerd (SIGTERM, letting it stop its containers; `{kill: true}`: SIGKILL, a crash)
   * and, unless `{start: false}`, starts it again in the same namespaces with the same
   * arguments and data, as a service manager restarting Docker would. Background exec
   * processes (the plugin) keep running, and exec() keeps working while dockerd is down.
   * Resolves when the new daemon's API answers (or once the old one is gone).
   */
  restartDaemon(opts?: { kill?: boolean; start?: boolean }): Promise<void>;
  /** Starts dockerd again after restartDaemon({start: false}) or crash(). */
  startDaemon(): Promise<void>;
  /**
   * A power loss: SIGKILL to every process of the host (dockerd, containerd, shims, containers,
   * background exec processes such as the plugin), then what a reboot does to /run: every mount
   * below the exec-root and the private tmpfs directories goes and they are emptied. The network
   * namespace (the machine's NIC) and Docker's data root survive; startDaemon() boots it again.
   */
  crash(): Promise<void>;
  /**
   * Removes all containers and non-default networks (while plugins still answer), stops
   * dockerd (SIGTERM, then SIGKILL), stops background exec processes, kills anything
   * left in the host's mount namespace / network namespace / using its exec-root, and
   * removes its directories. Idempotent.
   */
  stop(): Promise<void>;
}

let reaped = false;
function reapOnce(): void {
  if (reaped) return;
  reaped = true;
  const stale = reapStaleRuns();
  if (stale.length > 0) process.stderr.write(`[tso-harness] removed leftovers of dead runs: ${stale.join(', ')}\n`);
}

function shQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
      timer.unref();
    }),
  ]);
}

const DEFAULT_NETWORKS = new Set(['bridge', 'host', 'none']);

/** Removes every container (force) and every network but bridge/host/none. Best effort. */
export async function removeAllContainersAndNetworks(docker: Dockerode): Promise<void> {
  const containers = await docker.listContainers({ all: true });
  await Promise.all(
    containers.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true }).catch(() => undefined)),
  );
  const networks = await docker.listNetworks();
  await Promise.all(
    networks
      .filter((n) => !DEFAULT_NETWORKS.has(n.Name))
      .map((n) => docker.getNetwork(n.Id).remove().catch(() => undefined)),
  );
}

/** Starts one dockerd host. Registers a cleanup that stops it. */
export async function startDockerHost(opts: DockerHostOptions): Promise<DockerHost> {
  reapOnce();
  const prefix = runPrefix();
  const name = opts.name;
  if (!/^[a-z0-9][a-z0-9-]{0,11}$/.test(name)) throw new Error(`bad host name ${JSON.stringify(name)}`);
  const underlay = typeof opts.netns === 'object' ? opts.netns : undefined;
  const netnsPath =
    opts.netns === undefined
      ? undefined
      : typeof opts.netns === 'object'
        ? opts.netns.netnsPath
        : opts.netns.startsWith('/')
          ? opts.netns
          : `/run/netns/${opts.netns}`;
  if (netnsPath !== undefined && !fs.existsSync(netnsPath)) throw new Error(`network namespace ${netnsPath} does not exist`);

  const dir = path.join(runDir(), name);
  if (fs.existsSync(dir)) throw new Error(`${dir} exists: host ${name} already started in this run?`);
  fs.mkdirSync(dir, { recursive: true });
  const dataRoot = path.join(dir, 'data');
  const execRoot = `/run/${prefix}-${name}`;
  const socketPath = `/run/${prefix}-${name}.sock`;
  const pidFile = path.join(dir, 'dockerd.pid');
  const logFile = path.join(dir, 'dockerd.log');
  const configFile = path.join(dir, 'daemon.json');
  const engine = opts.engine ?? currentEngine();
  const missing = engineMissing(engine);
  if (missing) throw new Error(`host ${name}: Docker ${engine.name}: ${missing}`);
  recordResource({ kind: 'dir', path: execRoot });
  recordResource({ kind: 'dir', path: socketPath });
  recordResource({ kind: 'dir', path: `${execRoot}.cgroup` });
  recordResource({ kind: 'dir', path: dir });
  // A per-host engine key (20.10 otherwise writes /etc/docker/key.json, shared by all hosts
  // and giving them the same engine ID).
  // 28 keeps its engine ID in the data root already.
  fs.writeFileSync(
    configFile,
    JSON.stringify(
      { ...(engine.keyPathOption ? { 'deprecated-key-path': path.join(dir, 'key.json') } : {}), ...(opts.daemonConfig ?? {}) },
      null,
      2,
    ),
  );
  // The CLI's config folder: its cli-plugins makes `docker compose` available to either CLI.
  const cliConfigDir = path.join(dir, 'cli-config');
  fs.mkdirSync(cliConfigDir, { recursive: true });
  if (engine.cliPluginsDir !== undefined) fs.symlinkSync(engine.cliPluginsDir, path.join(cliConfigDir, 'cli-plugins'));
  const dockerdEnv: NodeJS.ProcessEnv = {
    ...process.env,
    ...(engine.binDir !== undefined ? { PATH: `${engine.binDir}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}` } : {}),
    ...(opts.env ?? {}),
  };

  const dockerdArgs = [
    engine.dockerd,
    '--data-root', dataRoot,
    '--exec-root', execRoot,
    '-H', `unix://${socketPath}`,
    '--pidfile', pidFile,
    '--storage-driver', 'vfs',
    '--iptables=false',
    '--ip-masq=false',
    '--bridge=none',
    '--config-file', configFile,
    '--shutdown-timeout', '5',
    // In the root network namespace leave net.ipv4.ip_forward alone (nothing must be routed off the machine).
    ...(netnsPath === undefined ? ['--ip-forward=false'] : []),
    ...engine.extraArgs,
    ...(opts.extraArgs ?? []),
  ];
  const tmpfs = opts.privateTmpfs ?? DEFAULT_PRIVATE_TMPFS;
  // sysfs shows the network namespace of whoever mounted it: in a host namespace, remount
  // it so that /sys/class/net lists the host's own interfaces, keeping the cgroup mounts
  // under /sys/fs/cgroup (losing those is why `ip netns exec` breaks dockerd).
  const cgTmp = `${execRoot}.cgroup`;
  const freshSysfs =
    netnsPath !== undefined && opts.freshSysfs !== false
      ? [
          `mkdir -p ${shQuote(cgTmp)}`,
          `mount --rbind /sys/fs/cgroup ${shQuote(cgTmp)}`,
          'mount -t sysfs sysfs /sys',
          `mount --move ${shQuote(cgTmp)} /sys/fs/cgroup`,
          `rmdir ${shQuote(cgTmp)}`,
        ]
      : [];
  const script = [
    'set -e',
    ...freshSysfs,
    ...tmpfs.map((d) => `mkdir -p ${shQuote(d)} && mount -t tmpfs -o mode=0755 none ${shQuote(d)}`),
    `exec ${dockerdArgs.map(shQuote).join(' ')}`,
  ].join('\n');
  const dockerInit = engine.dockerInit;
  const useInit = fs.existsSync(dockerInit);
  const argv = [
    ...(netnsPath !== undefined ? ['nsenter', `--net=${netnsPath}`, '--'] : []),
    'unshare', '-m', '--propagation', 'private', '--',
    ...(useInit ? [dockerInit, '-s', '-p', 'SIGTERM', '--'] : []),
    'sh', '-c', script,
  ];

  const started = Date.now();
  const launcher = spawnTracked(argv, {
    name: `dockerd-${name}`,
    logFile,
    env: dockerdEnv,
    registerCleanup: false,
    keepChars: 64 * 1024,
  });
  recordResource({ kind: 'pid', pid: launcher.pid, startTime: launcher.startTime });

  // State shared by stop() and its synchronous exit-time twin.
  let dockerdRef: PidRef | undefined;
  let mountNs = '';
  let netNs = '';
  const background: ManagedProcess[] = [];
  let stopped = false;
  const rootMnt = nsId('self', 'mnt');
  const rootNet = nsId('self', 'net');

  /** Everything that belongs to this host and is still alive (never the test process itself). */
  const strayProcesses = (snapshot: readonly PidRef[] = []): PidRef[] => {
    const procs = listProcs();
    const mine = new Map<number, PidRef>();
    const add = (p: { pid: number; startTime: number }): void => {
      if (p.pid !== process.pid && p.pid !== launcher.pid) mine.set(p.pid, { pid: p.pid, startTime: p.startTime });
    };
    if (isAlive({ pid: launcher.pid, startTime: launcher.startTime })) {
      for (const d of descendants(launcher.pid, procs)) if (d.state !== 'Z') add(d);
    }
    for (const p of procs) {
      if (p.state === 'Z' || p.pid === process.pid) continue;
      if (mountNs && mountNs !== rootMnt && nsId(p.pid, 'mnt') === mountNs) add(p);
      else if (netnsPath !== undefined && netNs && netNs !== rootNet && nsId(p.pid, 'net') === netNs) add(p);
      else if (p.cmdline.some((a) => a.includes(execRoot) || a.includes(dataRoot))) add(p);
    }
    for (const r of snapshot) if (isAlive(r)) add({ pid: r.pid, startTime: r.startTime ?? 0 });
    return [...mine.values()];
  };

  const removeDirs = (): void => {
    for (const d of [execRoot, socketPath, `${execRoot}.cgroup`]) {
      try {
        removeTree(d);
      } catch {
        /* best effort */
      }
      forgetResource({ kind: 'dir', path: d });
    }
    try {
      if (keepLogs()) removeTree(dataRoot);
      else removeTree(dir);
    } catch {
      /* best effort */
    }
    forgetResource({ kind: 'dir', path: dir });
  };

  const stopSync = (): void => {
    if (stopped) return;
    stopped = true;
    if (dockerdRef && isAlive(dockerdRef)) {
      // No promises at exit: the engine's CLI, synchronously, so that plugins still get their
      // Leave/DeleteEndpoint/DeleteNetwork calls and root-netns bridges (single host) go.
      const cli = (args: string[]): string =>
        runSync([engine.cli, '-H', `unix://${socketPath}`, ...args], { allowFailure: true, timeoutMs: 20_000 }).stdout;
      const ids = cli(['ps', '-aq']).split('\n').filter(Boolean);
      if (ids.length > 0) cli(['rm', '-f', ...ids]);
      const nets = cli(['network', 'ls', '--format', '{{.Name}}']).split('\n').filter((n) => n && !DEFAULT_NETWORKS.has(n));
      if (nets.length > 0) cli(['network', 'rm', ...nets]);
    }
    const snapshot = dockerdRef ? descendants(dockerdRef.pid).map((p) => ({ pid: p.pid, startTime: p.startTime })) : [];
    if (dockerdRef) killPidsSync([dockerdRef], { timeoutMs: 8000 });
    killPidsSync(background.map((b) => ({ pid: b.pid, startTime: b.startTime })), { timeoutMs: 3000 });
    killPidsSync(strayProcesses(snapshot), { timeoutMs: 2000 });
    killPidsSync([{ pid: launcher.pid, startTime: launcher.startTime }], { timeoutMs: 2000 });
    const deadline = Date.now() + 2000;
    while (Date.now() < deadline && strayProcesses().length > 0) sleepSync(50);
    removeDirs();
    forgetResource({ kind: 'pid', pid: launcher.pid, startTime: launcher.startTime });
    if (dockerdRef) forgetResource({ kind: 'pid', pid: dockerdRef.pid, startTime: dockerdRef.startTime ?? 0 });
    for (const b of background) forgetResource({ kind: 'pid', pid: b.pid, startTime: b.startTime });
  };

  const docker = new Dockerode({ socketPath });
  let unregister: () => void = () => undefined;
  const timings: DockerHostTimings = { startMs: 0 };

  const fail = async (why: string): Promise<never> => {
    const log = tail(launcher.output(), 6000);
    await stopAsync().catch(() => undefined);
    throw new Error(`dockerd host ${name}: ${why}\n--- dockerd output ---\n${log}`);
  };

  const stopAsync = async (): Promise<void> => {
    if (stopped) return;
    const t0 = Date.now();
    if (dockerdRef && isAlive(dockerdRef)) {
      try {
        await withTimeout(removeAllContainersAndNetworks(docker), 30_000, `removing containers of ${name}`);
      } catch {
        /* dockerd unhappy: it is killed below anyway */
      }
    }
    stopped = true;
    const snapshot = dockerdRef ? descendants(dockerdRef.pid).map((p) => ({ pid: p.pid, startTime: p.startTime })) : [];
    if (dockerdRef) await killPids([dockerdRef], { timeoutMs: 15_000 });
    await Promise.all(background.map((b) => b.stop()));
    await killPids(strayProcesses(snapshot), { timeoutMs: 3000 });
    await Promise.race([launcher.exited, sleepUnref(5000)]);
    if (launcher.running()) await launcher.stop({ timeoutMs: 1000 });
    for (let i = 0; i < 40 && strayProcesses().length > 0; i++) await sleep(50);
    const left = strayProcesses();
    if (left.length > 0) await killPids(left, { signal: 'SIGKILL', timeoutMs: 2000 });
    removeDirs();
    forgetResource({ kind: 'pid', pid: launcher.pid, startTime: launcher.startTime });
    if (dockerdRef) forgetResource({ kind: 'pid', pid: dockerdRef.pid, startTime: dockerdRef.startTime ?? 0 });
    for (const b of background) forgetResource({ kind: 'pid', pid: b.pid, startTime: b.startTime });
    unregister();
    timings.stopMs = Date.now() - t0;
  };
  unregister = registerCleanup(`dockerd host ${name}`, stopAsync, { sync: stopSync });

  // Wait for the pidfile (dockerd's own PID) and for the API.
  const deadline = started + (opts.startTimeoutMs ?? 60_000);
  for (;;) {
    if (!launcher.running()) return fail(`exited early (${JSON.stringify(launcher.exitInfo())})`);
    if (Date.now() > deadline) return fail(`API did not answer within ${opts.startTimeoutMs ?? 60_000} ms`);
    if (!dockerdRef && fs.existsSync(pidFile)) {
      const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
      const info = pid > 0 ? readProc(pid) : undefined;
      if (info && info.comm === 'dockerd') {
        dockerdRef = { pid, startTime: info.startTime };
        recordResource({ kind: 'pid', pid, startTime: info.startTime });
        mountNs = nsId(pid, 'mnt') ?? '';
        netNs = nsId(pid, 'net') ?? '';
      }
    }
    if (dockerdRef) {
      try {
        await withTimeout(docker.ping(), 2000, 'ping');
        break;
      } catch {
        /* not yet */
      }
    }
    await sleep(50);
  }
  timings.startMs = Date.now() - started;
  if (!mountNs || mountNs === rootMnt) return fail('dockerd is not in a private mount namespace');
  if (netnsPath !== undefined && netNs !== nsIdOfFile(netnsPath, 'net')) return fail(`dockerd is not in ${netnsPath}`);
  let dockerdPid = (dockerdRef as PidRef).pid;
  /** Keeps the host's namespaces enterable while dockerd is down (restartDaemon). */
  let anchor: ManagedProcess | undefined;
  const nsTarget = (): number | undefined =>
    dockerdRef && isAlive(dockerdRef) ? dockerdRef.pid : anchor?.running() ? anchor.pid : undefined;

  let bgCount = 0;
  function exec(argv2: readonly string[], o?: HostExecOptions): Promise<RunResult>;
  function exec(argv2: readonly string[], o: BackgroundExecOptions): ManagedProcess;
  function exec(argv2: readonly string[], o?: HostExecOptions | BackgroundExecOptions): Promise<RunResult> | ManagedProcess {
    const target = stopped ? undefined : nsTarget();
    if (target === undefined) throw new Error(`host ${name} is not running`);
    const full = ['nsenter', '-t', String(target), '-n', '-m', '--', ...argv2];
    if (o && o.background) {
      const pname = o.name ?? path.basename(argv2[0] ?? 'proc');
      const p = spawnTracked(full, {
        name: `${name}:${pname}`,
        env: o.env,
        cwd: o.cwd,
        logFile: o.logFile ?? path.join(dir, `${pname}-${++bgCount}.log`),
        registerCleanup: false,
        stopTimeoutMs: o.stopTimeoutMs,
      });
      background.push(p);
      recordResource({ kind: 'pid', pid: p.pid, startTime: p.startTime });
      void p.exited.then(() => forgetResource({ kind: 'pid', pid: p.pid, startTime: p.startTime }));
      return p;
    }
    return run(full, o);
  }

  const cliEnv = (): NodeJS.ProcessEnv => ({
    ...process.env,
    DOCKER_HOST: `unix://${socketPath}`,
    DOCKER_CONFIG: cliConfigDir,
    PATH: `${path.dirname(engine.cli)}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`,
  });

  const host: DockerHost = {
    name,
    prefix,
    socketPath,
    dockerHost: `unix://${socketPath}`,
    get pid() {
      return dockerdPid;
    },
    nsPid: () => nsTarget() ?? dockerdPid,
    docker,
    underlay,
    netnsPath,
    dir,
    dataRoot,
    execRoot,
    pidFile,
    logFile,
    mountNs,
    netNs,
    timings,
    exec,
    engine,
    cli: (args, o) => run([engine.cli, '-H', `unix://${socketPath}`, ...args], { ...o, env: { ...cliEnv(), ...(o?.env ?? {}) } }),
    cliEnv,
    logs: (max = 8000) => tail(launcher.output(), max),
    running: () => !stopped && dockerdRef !== undefined && isAlive(dockerdRef),
    restartDaemon: async (ro = {}) => {
      if (stopped || !dockerdRef) throw new Error(`host ${name} is not running`);
      if (!anchor?.running()) anchor = exec(['sleep', '2147483647'], { background: true, name: 'ns-anchor', stopTimeoutMs: 1000 });
      if (isAlive(dockerdRef)) {
        await killPids([dockerdRef], { signal: ro.kill ? 'SIGKILL' : 'SIGTERM', timeoutMs: 20_000 });
      }
      if (ro.start !== false) await startAgain();
    },
    startDaemon: () => startAgain(),
    crash: async () => {
      if (stopped || !dockerdRef) throw new Error(`host ${name} is not running`);
      if (!anchor?.running()) anchor = exec(['sleep', '2147483647'], { background: true, name: 'ns-anchor', stopTimeoutMs: 1000 });
      const keep = anchor.pid;
      for (let round = 0; round < 5; round++) {
        const victims = strayProcesses().filter((p) => p.pid !== keep);
        if (victims.length === 0) break;
        await killPids(victims, { signal: 'SIGKILL', timeoutMs: 3000 });
      }
      const dirs = [execRoot, ...tmpfs];
      const pattern = dirs.map((d) => `${d}/`).join('|').replace(/\./g, '\\.');
      const wipe = [
        `awk '{print $5}' /proc/self/mountinfo | grep -E '^(${pattern})' | sort -r | while read -r m; do umount -l "$m" || true; done`,
        ...dirs.map((d) => `rm -rf ${shQuote(d)}/* 2>/dev/null || true`),
      ].join('\n');
      await exec(['sh', '-c', wipe], { allowFailure: true });
    },
    stop: stopAsync,
  };

  /** dockerd again, inside the anchor's namespaces, with the original arguments. */
  const startAgain = async (): Promise<void> => {
    try {
      await startOnce();
    } catch (err) {
      // After a SIGKILL the old managed containerd may still be winding down; dockerd gives up
      // when it cannot dial it in time. One more try, as a service manager would.
      process.stderr.write(`[tso-harness] dockerd ${name} did not come back (${String(err).slice(0, 200)}); starting it once more\n`);
      await sleep(1000);
      await startOnce();
    }
  };
  const startOnce = async (): Promise<void> => {
    if (stopped || !anchor?.running()) throw new Error(`host ${name}: restartDaemon() first`);
    if (dockerdRef && isAlive(dockerdRef)) return;
    const previous = dockerdRef?.pid;
    const relaunch = spawnTracked(
      ['nsenter', '-t', String(anchor.pid), '-n', '-m', '--', ...(useInit ? [dockerInit, '-s', '-p', 'SIGTERM', '--'] : []), ...dockerdArgs],
      { name: `dockerd-${name}`, logFile, env: dockerdEnv, registerCleanup: false, keepChars: 64 * 1024 },
    );
    background.push(relaunch);
    recordResource({ kind: 'pid', pid: relaunch.pid, startTime: relaunch.startTime });
    const until = Date.now() + (opts.startTimeoutMs ?? 60_000);
    for (;;) {
      if (!relaunch.running()) throw new Error(`dockerd ${name} exited at restart:\n${tail(relaunch.output(), 4000)}`);
      if (Date.now() > until) throw new Error(`dockerd ${name} did not answer after restart`);
      const pid = fs.existsSync(pidFile) ? Number(fs.readFileSync(pidFile, 'utf8').trim()) : 0;
      const info = pid > 0 && pid !== previous ? readProc(pid) : undefined;
      if (info && info.comm === 'dockerd') {
        dockerdRef = { pid, startTime: info.startTime };
        dockerdPid = pid;
        recordResource({ kind: 'pid', pid, startTime: info.startTime });
        try {
          await withTimeout(docker.ping(), 2000, 'ping');
          return;
        } catch {
          /* not yet */
        }
      }
      await sleep(50);
    }
  };

  if (opts.importImage) {
    try {
      timings.imageImportMs = (await importBusyboxImage(docker)).durationMs;
    } catch (err) {
      return fail(`image import failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  return host;
}

/** A dockerd in the root network namespace (still with its own mount namespace, dirs, socket, pidfile). */
export function startSingleDockerHost(opts: Omit<DockerHostOptions, 'netns' | 'name'> & { name?: string } = {}): Promise<DockerHost> {
  return startDockerHost({ ...opts, name: opts.name ?? 'single' });
}

// ---------------------------------------------------------------------------
// containers

export interface RunContainerOptions {
  /** NetworkMode: "none" (default), "host", or a network name. */
  network?: string;
  name?: string;
  /** Remove the container afterwards (default true). */
  remove?: boolean;
  /** Default 60 s. */
  timeoutMs?: number;
  /** Merged into HostConfig. */
  hostConfig?: Dockerode.HostConfig;
}

export interface ContainerRunResult {
  id: string;
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Splits Docker's multiplexed (non-TTY) log stream into stdout and stderr. */
export function demuxDockerStream(buf: Buffer): { stdout: string; stderr: string } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let i = 0;
  while (i + 8 <= buf.length) {
    const kind = buf[i];
    const size = buf.readUInt32BE(i + 4);
    const payload = buf.subarray(i + 8, i + 8 + size);
    if (kind === 2) err.push(payload);
    else out.push(payload);
    i += 8 + size;
  }
  return { stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
}

/** `docker run [--rm] --net <network> image cmd…` through the API; waits for the exit. */
export async function runContainer(
  docker: Dockerode,
  image: string,
  cmd: readonly string[],
  opts: RunContainerOptions = {},
): Promise<ContainerRunResult> {
  const container = await docker.createContainer({
    Image: image,
    Cmd: [...cmd],
    name: opts.name,
    HostConfig: { NetworkMode: opts.network ?? 'none', ...(opts.hostConfig ?? {}) },
  });
  try {
    await container.start();
    const waited = (await withTimeout(container.wait(), opts.timeoutMs ?? 60_000, `container ${cmd.join(' ')}`)) as {
      StatusCode: number;
    };
    const logs = await container.logs({ stdout: true, stderr: true, follow: false });
    return { id: container.id, exitCode: waited.StatusCode, ...demuxDockerStream(logs) };
  } finally {
    if (opts.remove !== false) await container.remove({ force: true }).catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------
// clusters

export interface ClusterOptions {
  hosts: number;
  /** Import tso-busybox:latest into every host (default true). */
  image?: boolean;
  underlay?: Omit<UnderlayOptions, 'hosts'>;
  docker?: Omit<DockerHostOptions, 'name' | 'netns' | 'importImage'>;
}

export interface Cluster {
  readonly prefix: string;
  readonly underlay: Underlay;
  readonly hosts: readonly DockerHost[];
  /** Image reference imported into each host. */
  readonly image: string;
  /** Stops every dockerd, then removes the underlay. Idempotent. */
  teardown(): Promise<void>;
}

/** Underlay with `hosts` namespaces and a dockerd in each (started in parallel). */
export async function startCluster(opts: ClusterOptions): Promise<Cluster> {
  reapOnce();
  const underlay = await createUnderlay({ hosts: opts.hosts, ...(opts.underlay ?? {}) });
  const results = await Promise.allSettled(
    underlay.hosts.map((h) =>
      startDockerHost({ ...(opts.docker ?? {}), name: h.shortName, netns: h, importImage: opts.image ?? true }),
    ),
  );
  const hosts = results.filter((r): r is PromiseFulfilledResult<DockerHost> => r.status === 'fulfilled').map((r) => r.value);
  const teardown = async (): Promise<void> => {
    await Promise.all(hosts.map((h) => h.stop()));
    await underlay.teardown();
  };
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await teardown();
    throw failed.reason;
  }
  return { prefix: underlay.prefix, underlay, hosts, image: BUSYBOX_IMAGE, teardown };
}

// ---------------------------------------------------------------------------
// leftovers

export interface Leftovers {
  netns: string[];
  links: string[];
  /** "PID cmdline" of live processes whose command line mentions the prefix. */
  processes: string[];
  /** Mount points in this (root) mount namespace mentioning the prefix. */
  mounts: string[];
  /** Paths /tmp/<prefix>, /run/<prefix>-*, /run/netns/<prefix>*. */
  paths: string[];
}

/** What of a run is still on the machine (all empty after a clean teardown). */
export function findLeftovers(prefix: string = runPrefix()): Leftovers {
  const processes = listProcs()
    .filter((p) => p.pid !== process.pid && p.state !== 'Z' && p.cmdline.join(' ').includes(prefix))
    .map((p) => `${p.pid} ${p.cmdline.join(' ')}`);
  const mounts = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.includes(prefix));
  const paths: string[] = [];
  if (fs.existsSync(`/tmp/${prefix}`)) paths.push(`/tmp/${prefix}`);
  for (const d of ['/run', '/run/netns']) {
    try {
      for (const f of fs.readdirSync(d)) if (f.startsWith(prefix)) paths.push(path.join(d, f));
    } catch {
      /* absent */
    }
  }
  return { netns: listNetns(prefix), links: listLinks(prefix), processes, mounts, paths };
}
