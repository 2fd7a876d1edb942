/**
 * The benchmark container image, built without a registry: Debian's static busybox (with an
 * applet link each: sh, ping, sleep, …) plus /usr/bin/iperf3 and the shared libraries `ldd`
 * lists for it, packed into a tarball once per run and `docker import`ed as tso-bench:latest.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type Dockerode from 'dockerode';
import { run, runDir, runSync } from '../../test/helpers/proc';

export const BENCH_IMAGE = 'tso-bench:latest';
export const IPERF3 = '/usr/bin/iperf3';
const BUSYBOX = '/bin/busybox';

let tarball: Promise<string> | undefined;

/** Absolute paths of the shared objects `ldd` resolves for `bin` (the loader included). */
export function sharedLibraries(bin: string): string[] {
  const out = runSync(['ldd', bin]).stdout;
  const libs: string[] = [];
  for (const line of out.split('\n')) {
    const arrow = /=>\s+(\/\S+)/.exec(line);
    const bare = /^\s*(\/\S+)\s+\(/.exec(line);
    const p = arrow?.[1] ?? bare?.[1];
    if (p) libs.push(p);
  }
  return libs;
}

async function build(): Promise<string> {
  for (const f of [BUSYBOX, IPERF3]) if (!fs.existsSync(f)) throw new Error(`${f} missing (apt-get install busybox-static iperf3)`);
  const dir = path.join(runDir(), 'bench-image');
  const rootfs = path.join(dir, 'rootfs');
  const file = path.join(dir, 'tso-bench.tar');
  fs.rmSync(rootfs, { recursive: true, force: true });
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'usr/bin', 'root']) fs.mkdirSync(path.join(rootfs, d), { recursive: true });
  fs.chmodSync(path.join(rootfs, 'tmp'), 0o1777);
  fs.copyFileSync(BUSYBOX, path.join(rootfs, 'bin/busybox'));
  fs.chmodSync(path.join(rootfs, 'bin/busybox'), 0o755);
  const applets = runSync([BUSYBOX, '--list']).stdout.split('\n').map((s) => s.trim()).filter(Boolean);
  for (const a of applets) if (a !== 'busybox') fs.symlinkSync('busybox', path.join(rootfs, 'bin', a));
  fs.copyFileSync(IPERF3, path.join(rootfs, 'usr/bin/iperf3'));
  fs.chmodSync(path.join(rootfs, 'usr/bin/iperf3'), 0o755);
  for (const lib of sharedLibraries(IPERF3)) {
    const dest = path.join(rootfs, lib);
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.copyFileSync(fs.realpathSync(lib), dest);
  }
  fs.writeFileSync(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
  fs.writeFileSync(path.join(rootfs, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
  fs.writeFileSync(path.join(rootfs, 'etc/nsswitch.conf'), 'hosts: files dns\n');
  await run(['tar', '--numeric-owner', '--owner=0', '--group=0', '-C', rootfs, '-cf', `${file}.tmp`, '.']);
  fs.renameSync(`${file}.tmp`, file);
  fs.rmSync(rootfs, { recursive: true, force: true });
  return file;
}

/** Imports tso-bench:latest into the daemon behind `docker`. */
export async function importBenchImage(docker: Dockerode): Promise<void> {
  if (!tarball) tarball = build();
  const file = await tarball;
  const stream = await docker.importImage(fs.createReadStream(file), {
    repo: 'tso-bench',
    tag: 'latest',
    changes: ['CMD ["sh"]', 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
  });
  const text = await new Promise<string>((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer | string) => chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c)));
    stream.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    stream.on('error', reject);
  });
  if (/"error"/.test(text)) throw new Error(`docker import of ${BENCH_IMAGE} failed: ${text.slice(0, 500)}`);
  await docker.getImage(BENCH_IMAGE).inspect();
}
