/**
 * A tiny container image without any registry: a rootfs holding Debian's static
 * /bin/busybox (package busybox-static) plus a symlink per applet (sh, ip, ping, nc, sleep,
 * cat, ifconfig, hostname, wget, …), packed once per run into /tmp/<prefix>/image/ and
 * imported with the Docker API (POST /images/create?fromSrc=-, dockerode importImage).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type Dockerode from 'dockerode';
import { run, runDir, runSync } from './proc';

export const BUSYBOX_IMAGE = 'tso-busybox:latest';

/** Applets that must exist in the image (checked against `busybox --list`). */
export const REQUIRED_APPLETS: readonly string[] = [
  'sh', 'ip', 'ping', 'nc', 'sleep', 'cat', 'echo', 'ifconfig', 'hostname', 'wget', 'ls', 'arp', 'route', 'grep', 'true', 'false',
];

export interface BusyboxTarballOptions {
  /** Path of a statically linked busybox. Default /bin/busybox. */
  busybox?: string;
  /** Directory for the rootfs and the tarball. Default /tmp/<prefix>/image. */
  dir?: string;
}

const tarballs = new Map<string, Promise<string>>();

function assertStaticBusybox(bin: string): void {
  if (!fs.existsSync(bin)) throw new Error(`${bin} not found: install busybox-static`);
  const head = Buffer.alloc(4096);
  const fd = fs.openSync(bin, 'r');
  try {
    fs.readSync(fd, head, 0, head.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  if (head.subarray(0, 4).toString('latin1') !== '\x7fELF') throw new Error(`${bin} is not an ELF binary`);
  // A dynamically linked ELF has a PT_INTERP program header naming the loader.
  if (head.includes(Buffer.from('/lib64/ld-linux')) || head.includes(Buffer.from('/lib/ld-linux'))) {
    throw new Error(`${bin} is dynamically linked: install busybox-static (it replaces the busybox package)`);
  }
}

async function buildTarball(bin: string, dir: string): Promise<string> {
  assertStaticBusybox(bin);
  const rootfs = path.join(dir, 'rootfs');
  const tarball = path.join(dir, 'tso-busybox.tar');
  fs.rmSync(rootfs, { recursive: true, force: true });
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'proc', 'sys', 'dev', 'root', 'var/run', 'run']) {
    fs.mkdirSync(path.join(rootfs, d), { recursive: true });
  }
  fs.mkdirSync(path.join(rootfs, 'tmp'), { recursive: true, mode: 0o1777 });
  fs.chmodSync(path.join(rootfs, 'tmp'), 0o1777);
  fs.copyFileSync(bin, path.join(rootfs, 'bin/busybox'));
  fs.chmodSync(path.join(rootfs, 'bin/busybox'), 0o755);
  const applets = (await run([bin, '--list'])).stdout.split('\n').map((s) => s.trim()).filter((s) => /^[\w.[-]+$/.test(s));
  const missing = REQUIRED_APPLETS.filter((a) => !applets.includes(a));
  if (missing.length > 0) throw new Error(`${bin} lacks applets: ${missing.join(', ')}`);
  for (const a of applets) {
    if (a === 'busybox') continue; // the binary itself: a link would point at itself
    fs.symlinkSync('busybox', path.join(rootfs, 'bin', a));
  }
  fs.writeFileSync(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
  fs.writeFileSync(path.join(rootfs, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
  fs.writeFileSync(path.join(rootfs, 'etc/nsswitch.conf'), 'hosts: files dns\n');
  await run(['tar', '--numeric-owner', '--owner=0', '--group=0', '-C', rootfs, '-cf', `${tarball}.tmp`, '.']);
  fs.renameSync(`${tarball}.tmp`, tarball);
  fs.rmSync(rootfs, { recursive: true, force: true });
  return tarball;
}

/** Builds (once per run and busybox path) the rootfs tarball and returns its path. */
export async function busyboxTarball(opts: BusyboxTarballOptions = {}): Promise<string> {
  const bin = opts.busybox ?? '/bin/busybox';
  const dir = opts.dir ?? path.join(runDir(), 'image');
  const key = `${bin}\0${dir}`;
  const cached = tarballs.get(key);
  if (cached) {
    const file = await cached.catch(() => undefined);
    // The run directory may have been removed by a cleanup meanwhile.
    if (file && fs.existsSync(file)) return file;
    if (tarballs.get(key) !== cached) return busyboxTarball(opts);
  }
  fs.mkdirSync(dir, { recursive: true });
  const p = buildTarball(bin, dir);
  tarballs.set(key, p);
  p.catch(() => {
    if (tarballs.get(key) === p) tarballs.delete(key);
  });
  return p;
}

export interface ImportImageOptions extends BusyboxTarballOptions {
  /** repo:tag; default tso-busybox:latest. */
  tag?: string;
  /** Dockerfile-style changes; default CMD ["sh"] and a PATH. */
  changes?: readonly string[];
}

export interface ImportedImage {
  /** sha256:… */
  id: string;
  tag: string;
  durationMs: number;
}

interface ProgressLine {
  status?: string;
  error?: string;
  errorDetail?: { message?: string };
}

async function readProgress(stream: NodeJS.ReadableStream): Promise<ProgressLine[]> {
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    stream.on('data', (c: Buffer | string) => chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c)));
    stream.on('end', () => resolve());
    stream.on('close', () => resolve());
    stream.on('error', reject);
  });
  const lines: ProgressLine[] = [];
  for (const l of Buffer.concat(chunks).toString('utf8').split(/\r?\n/)) {
    if (!l.trim()) continue;
    try {
      lines.push(JSON.parse(l) as ProgressLine);
    } catch {
      lines.push({ error: `unparsable import output: ${l}` });
    }
  }
  return lines;
}

/** Imports the busybox image into the daemon behind `docker` (idempotent: re-tags). */
export async function importBusyboxImage(docker: Dockerode, opts: ImportImageOptions = {}): Promise<ImportedImage> {
  const tag = opts.tag ?? BUSYBOX_IMAGE;
  const colon = tag.lastIndexOf(':');
  const repo = colon > tag.lastIndexOf('/') ? tag.slice(0, colon) : tag;
  const version = colon > tag.lastIndexOf('/') ? tag.slice(colon + 1) : 'latest';
  const tarball = await busyboxTarball(opts);
  const started = Date.now();
  const changes = opts.changes ?? ['CMD ["sh"]', 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'];
  const stream = await docker.importImage(fs.createReadStream(tarball), {
    repo,
    tag: version,
    changes: [...changes],
    message: 'tsoverlay e2e busybox',
  });
  const progress = await readProgress(stream);
  const failed = progress.find((p) => p.error || p.errorDetail);
  if (failed) throw new Error(`docker import of ${tag} failed: ${failed.error ?? failed.errorDetail?.message}`);
  const info = await docker.getImage(`${repo}:${version}`).inspect();
  return { id: info.Id, tag: `${repo}:${version}`, durationMs: Date.now() - started };
}

/** Whether this machine can build the image (static busybox present). */
export function canBuildImage(busybox = '/bin/busybox'): boolean {
  try {
    assertStaticBusybox(busybox);
    return runSync([busybox, 'true'], { allowFailure: true }).code === 0;
  } catch {
    return false;
  }
}
