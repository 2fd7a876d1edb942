/**
 * The managed plugin in end-to-end tests, built and shipped the way users get it:
 *
 * - startBuildHost(): a dockerd in the root network namespace (so that `docker build
 *   --network host` reaches the npm registry), with overlay2 when this kernel and /tmp allow
 *   it (the classic builder on vfs copies the whole rootfs per step: ~3 min instead of ~1),
 *   else vfs.
 * - buildPlugin(): plugin/local-base.sh makes the stand-in for node:20 from this machine's
 *   node + npm (no registry reachable here), then plugin/build.sh — the script users run with
 *   the official base — builds the Dockerfile, assembles config.json (repository root) + rootfs/, runs
 *   `docker plugin create` and `docker plugin push`.
 * - startRegistry(): Debian's docker-registry (`docker-registry serve CONFIG`) listening on
 *   the underlay gateway address, storage under the run directory; every test dockerd is
 *   started with `--insecure-registry 10.251.0.0/16` (plain HTTP, see INSECURE_REGISTRY_ARGS).
 * - installPlugin(): `docker plugin install --grant-all-permissions --alias tsoverlay REF K=V…`.
 *
 * Every piece registers its own cleanup (plugins `docker plugin rm -f`, the registry killed by
 * PID, directories removed).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { startSingleDockerHost, type DockerHost } from './docker';
import { listProcs, nsId, recordResource, registerCleanup, run, runDir, spawnTracked, waitFor, type ManagedProcess } from './proc';

export const REPO_ROOT = path.resolve(__dirname, '../../..');
export const BUILD_SCRIPT = path.join(REPO_ROOT, 'plugin/build.sh');
export const LOCAL_BASE_SCRIPT = path.join(REPO_ROOT, 'plugin/local-base.sh');
export const LOCAL_BASE_IMAGE = 'tsoverlay-node-base:local';
export const REGISTRY_BIN = '/usr/bin/docker-registry';
/** The test underlays are 10.251.X.0/24: their registries speak plain HTTP. */
export const INSECURE_REGISTRY_ARGS: readonly string[] = ['--insecure-registry', '10.251.0.0/16'];
/** Alias every test installs the plugin under; Docker resolves managed drivers by name:tag. */
export const PLUGIN_ALIAS = 'tsoverlay';
export const PLUGIN_DRIVER = 'tsoverlay:latest';
/** The host /run/tsoverlay/netns, where the managed plugin keeps its namespace files. */
export const MANAGED_NETNS_DIR = '/run/tsoverlay/netns';
/** The host /run/tsoverlay/inflight, its journal of requests being answered. */
export const MANAGED_INFLIGHT_DIR = '/run/tsoverlay/inflight';
/** Where config.json lives (plugin/build.sh copies it beside the exported rootfs). */
export const PLUGIN_CONFIG = path.join(REPO_ROOT, 'config.json');

function overlayUsable(dir: string): boolean {
  try {
    if (!fs.readFileSync('/proc/filesystems', 'utf8').split('\n').some((l) => l.trim().endsWith('overlay'))) return false;
    // overlay2 refuses upper dirs on overlayfs / tmpfs-less setups; ext4 and xfs are fine.
    const r = fs.statfsSync(dir);
    const OVERLAYFS_MAGIC = 0x794c7630;
    const TMPFS_MAGIC = 0x01021994;
    return r.type !== OVERLAYFS_MAGIC && r.type !== TMPFS_MAGIC;
  } catch {
    return false;
  }
}

export interface BuildHost {
  host: DockerHost;
  storageDriver: string;
}

/** A dockerd in the root network namespace for `docker build` (overlay2 if possible, else vfs). */
export async function startBuildHost(): Promise<BuildHost> {
  const extra = [...INSECURE_REGISTRY_ARGS];
  if (overlayUsable(runDir())) {
    try {
      const host = await startSingleDockerHost({ name: 'build', extraArgs: [...extra, '--storage-driver', 'overlay2'] });
      return { host, storageDriver: 'overlay2' };
    } catch {
      // fall through to vfs (the directory of the failed attempt is removed by its stop())
    }
  }
  const host = await startSingleDockerHost({ name: 'buildvfs', extraArgs: extra });
  return { host, storageDriver: 'vfs' };
}

export interface BuiltPlugin {
  /** Full reference, e.g. 10.251.7.1:5000/tsoverlay:e2e. */
  ref: string;
  /** config.json + rootfs/ as made by plugin/build.sh. */
  dir: string;
  baseMs: number;
  buildMs: number;
  /** build.sh output (docker build steps …). */
  log: string;
}

/**
 * plugin/local-base.sh, then plugin/build.sh REF with PUSH=1 against the build host.
 * TSO_PLUGIN_DIR (a directory from an earlier build.sh run) skips the docker build, for
 * iterating on tests only: the plugin is then created from it and pushed.
 */
export async function buildPlugin(build: DockerHost, ref: string): Promise<BuiltPlugin> {
  const env = { ...process.env, DOCKER: '/usr/bin/docker', DOCKER_HOST: build.dockerHost };
  const prebuilt = process.env.TSO_PLUGIN_DIR ?? builtInThisProcess ?? builtInThisRun();
  if (prebuilt) {
    const t = Date.now();
    await build.cli(['plugin', 'create', ref, prebuilt], { timeoutMs: 180_000 });
    await build.cli(['plugin', 'push', ref], { timeoutMs: 180_000 });
    return { ref, dir: prebuilt, baseMs: 0, buildMs: Date.now() - t, log: `prebuilt ${prebuilt}` };
  }
  let t = Date.now();
  await run([LOCAL_BASE_SCRIPT, LOCAL_BASE_IMAGE], { env, timeoutMs: 180_000 });
  const baseMs = Date.now() - t;
  t = Date.now();
  const dir = path.join(runDir(), 'plugin-dir');
  const proc: ManagedProcess = spawnTracked([BUILD_SCRIPT, ref], {
    name: 'build.sh',
    env: { ...env, BASE_IMAGE: LOCAL_BASE_IMAGE, BUILD_ARGS: '--network host', PLUGIN_DIR: dir, PUSH: '1' },
    logFile: path.join(runDir(), 'build.log'),
    keepChars: 200_000,
  });
  const exit = await Promise.race([
    proc.exited,
    new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 480_000).unref()),
  ]);
  if (!exit) await proc.stop();
  if (!exit || exit.code !== 0) throw new Error(`plugin/build.sh failed (${JSON.stringify(exit)}):\n${proc.output().slice(-6000)}`);
  return { ref, dir: keepBuild(dir), baseMs, buildMs: Date.now() - t, log: proc.output() };
}

/**
 * TSO_PLUGIN_CACHE (set by .ci/run, which removes it at the end): a directory where the first
 * test process that builds the plugin leaves build.sh's output under a hash of everything the
 * build reads, so that the other test files of the same run (Docker 20.10's managed plugin and
 * swarm, Docker 28's) create and push it from there instead of running the same build again.
 * The first one still runs plugin/build.sh as users do.
 */
function cacheEntry(): string | undefined {
  const cache = process.env.TSO_PLUGIN_CACHE;
  if (!cache) return undefined;
  const hash = createHash('sha256').update(process.version);
  const inputs = ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'Dockerfile', '.dockerignore', 'config.json', 'plugin/build.sh', 'plugin/local-base.sh'];
  const walk = (rel: string): void => {
    const abs = path.join(REPO_ROOT, rel);
    if (fs.statSync(abs).isDirectory()) {
      for (const name of fs.readdirSync(abs).sort()) walk(path.join(rel, name));
    } else {
      hash.update(`\0${rel}\0`).update(fs.readFileSync(abs));
    }
  };
  for (const rel of [...inputs, 'src']) walk(rel);
  return path.join(cache, hash.digest('hex').slice(0, 24));
}

function builtInThisRun(): string | undefined {
  const entry = cacheEntry();
  return entry && fs.existsSync(path.join(entry, 'config.json')) && fs.existsSync(path.join(entry, 'rootfs')) ? entry : undefined;
}

/**
 * A plugin built earlier in this test process (same sources): when one process runs several
 * suites that need the plugin (test/e2e/docker28/managed-plugin-swarm), the later ones create
 * and push it from this directory instead of building it again.
 */
let builtInThisProcess: string | undefined;

/** Moves build.sh's output out of the run directory (whose cleanup runs after every suite) to one removed at process exit. */
function keepBuild(dir: string): string {
  const entry = cacheEntry();
  if (entry) {
    // Kept for the run's other test processes; .ci/run removes the cache.
    fs.mkdirSync(path.dirname(entry), { recursive: true });
    fs.rmSync(entry, { recursive: true, force: true });
    try {
      fs.renameSync(dir, entry);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
      fs.cpSync(dir, entry, { recursive: true, verbatimSymlinks: true });
      fs.rmSync(dir, { recursive: true, force: true });
    }
    builtInThisProcess = entry;
    return entry;
  }
  const kept = `${runDir()}-plugin-build`;
  fs.rmSync(kept, { recursive: true, force: true });
  fs.renameSync(dir, kept);
  recordResource({ kind: 'dir', path: kept }); // a run killed with SIGKILL: the next run removes it
  const remove = (): void => fs.rmSync(kept, { recursive: true, force: true });
  process.once('exit', remove);
  builtInThisProcess = kept;
  return kept;
}

export interface Registry {
  /** host:port */
  address: string;
  pid: number;
  stop(): Promise<void>;
}

function freePortOn(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Debian's docker-registry on `host` (a free port), storage in the run directory. */
export async function startRegistry(host: string): Promise<Registry> {
  if (!fs.existsSync(REGISTRY_BIN)) throw new Error(`${REGISTRY_BIN} missing (apt-get install docker-registry)`);
  const port = await freePortOn(host);
  const dir = path.join(runDir(), `registry-${port}`);
  fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
  const config = path.join(dir, 'config.yml');
  fs.writeFileSync(
    config,
    [
      'version: 0.1',
      'log:',
      '  level: warn',
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${path.join(dir, 'data')}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: ${host}:${port}`,
      '',
    ].join('\n'),
  );
  const proc = spawnTracked([REGISTRY_BIN, 'serve', config], { name: 'docker-registry', logFile: path.join(dir, 'registry.log') });
  const address = `${host}:${port}`;
  const stop = async (): Promise<void> => {
    await proc.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const unregister = registerCleanup(`registry ${address}`, stop);
  try {
    await waitFor(
      async () => {
        if (!proc.running()) throw new Error(`docker-registry exited: ${proc.output()}`);
        const r = await fetch(`http://${address}/v2/`).catch(() => undefined);
        return r?.status === 200;
      },
      { timeoutMs: 15_000, what: `registry on ${address}` },
    );
  } catch (err) {
    unregister();
    await stop();
    throw err;
  }
  return {
    address,
    pid: proc.pid,
    async stop() {
      unregister();
      await stop();
    },
  };
}

/**
 * What a test host needs before the plugin is enabled: its /run/tsoverlay (a private tmpfs
 * in the harness) made a shared mount, as /run is on a systemd host, so that the namespace
 * files the plugin mounts under its /host/run/tsoverlay/netns propagate to the host and
 * outlive the plugin's container; and the two directories config.json mounts, which Docker
 * does not create (docs/install.md: a tmpfiles.d line on a real host).
 */
export async function prepareHost(host: DockerHost): Promise<void> {
  await host.exec(['mount', '--make-shared', '/run/tsoverlay']);
  await host.exec(['mkdir', '-p', MANAGED_NETNS_DIR, MANAGED_INFLIGHT_DIR]);
}

/** PID of the managed plugin's daemon on `host` (found by its command line and network namespace). */
export function pluginPid(host: DockerHost): number | undefined {
  const net = nsId(host.nsPid(), 'net');
  return listProcs().find((p) => p.cmdline.some((a) => a === '/opt/tsoverlay/dist/src/cli/main.js') && nsId(p.pid, 'net') === net)?.pid;
}

/**
 * Every socket the plugin's process can reach through its mounts (the image's own rootfs holds
 * none): a walk of each mount point in its mount namespace but /proc, /sys and /dev.
 */
export function socketsVisibleTo(pid: number): string[] {
  const root = `/proc/${pid}/root`;
  const points = fs
    .readFileSync(`/proc/${pid}/mountinfo`, 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((mp): mp is string => mp !== undefined && mp !== '/' && !/^\/(proc|sys|dev)(\/|$)/.test(mp));
  const found = new Set<string>();
  const walk = (rel: string, depth: number): void => {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(root + rel);
    } catch {
      return;
    }
    if (st.isSocket()) found.add(rel);
    if (!st.isDirectory() || depth > 6) return;
    for (const name of fs.readdirSync(root + rel)) walk(`${rel === '/' ? '' : rel}/${name}`, depth + 1);
  };
  for (const mp of points) walk(mp, 0);
  return [...found].sort();
}

/** `docker plugin install --grant-all-permissions --alias tsoverlay REF K=V…`; removed (rm -f) at cleanup. */
export async function installPlugin(host: DockerHost, ref: string, settings: Record<string, string>): Promise<void> {
  await prepareHost(host);
  const args = ['plugin', 'install', '--grant-all-permissions', '--alias', PLUGIN_ALIAS, ref];
  // A test host's API socket is not /var/run/docker.sock (the mount's default source).
  for (const [k, v] of Object.entries({ 'docker-sock.source': host.socketPath, ...settings })) args.push(`${k}=${v}`);
  registerCleanup(`plugin rm ${host.name}`, () => removePlugin(host));
  await host.cli(args, { timeoutMs: 180_000 });
}

/** Removes every container and network, then every plugin (before dockerd stops). Best effort. */
export async function removePlugin(host: DockerHost): Promise<void> {
  if (!host.running()) return;
  const ids = (await host.cli(['ps', '-aq'], { allowFailure: true })).stdout.split('\n').filter(Boolean);
  if (ids.length > 0) await host.cli(['rm', '-f', ...ids], { allowFailure: true, timeoutMs: 60_000 });
  const nets = (await host.cli(['network', 'ls', '--format', '{{.Name}}'], { allowFailure: true })).stdout
    .split('\n')
    .filter((n) => n && !['bridge', 'host', 'none', 'docker_gwbridge', 'ingress'].includes(n));
  for (const n of nets) await host.cli(['network', 'rm', n], { allowFailure: true, timeoutMs: 30_000 });
  const plugins = (await host.cli(['plugin', 'ls', '-q'], { allowFailure: true })).stdout.split('\n').filter(Boolean);
  for (const p of plugins) await host.cli(['plugin', 'rm', '-f', p], { allowFailure: true, timeoutMs: 60_000 });
}

/** The plugin's log lines (dockerd logs plugin stdout/stderr with plugin=<id>). */
export function pluginLog(host: DockerHost, max = 6000): string {
  let text = '';
  try {
    text = fs.readFileSync(host.logFile, 'utf8');
  } catch {
    text = host.logs(400_000);
  }
  return text
    .split('\n')
    .filter((l) => l.includes('plugin='))
    .join('\n')
    .slice(-max);
}
