/**
 * A throwaway virtual machine running Debian's own kernel, for kernel features the test
 * machine's kernel lacks (IPsec ESP, AES-GCM).
 *
 * `runInVm(script)` boots `/boot/vmlinuz-*` (package linux-image-amd64) under qemu with software
 * emulation and a small initramfs built here: static busybox plus the virtio and 9p modules
 * taken from that kernel's module tree. The init mounts this machine's root read-only over 9p
 * (so node, iproute2, tcpdump and the built tests are all there), tmpfs on /tmp and /run, a
 * writable 9p share at /run/out, and runs the script as root in the new root. The script's
 * output comes back through the serial console and files it writes under /run/out; its exit
 * status through /run/out/exit-code. The VM powers off when the script ends, and the qemu
 * process is killed by PID if it runs past the timeout or the test process ends.
 *
 * It is for functional tests only: emulated crypto is slow, so nothing measured in it is a
 * performance figure.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runDir, spawnTracked } from './proc';

export type VmAvailability =
  | { ok: true; qemu: string; kernel: string; release: string; busybox: string }
  | { ok: false; reason: string };

const BUSYBOX = '/bin/busybox';
/** Modules the initramfs loads to reach the root over virtio-9p (with their dependencies). */
const ROOT_MODULES = ['virtio_pci', '9pnet_virtio', '9p'];

function which(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(dir, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** What is missing to boot a VM here, or where everything is. */
export function vmAvailability(): VmAvailability {
  const qemu = which('qemu-system-x86_64');
  if (!qemu) return { ok: false, reason: 'qemu-system-x86_64 is not installed (package qemu-system-x86; .ci/provision-qemu.sh installs it)' };
  let kernels: string[] = [];
  try {
    kernels = fs.readdirSync('/boot').filter((f) => /^vmlinuz-.*-amd64$/.test(f));
  } catch {
    // no /boot
  }
  const usable = kernels
    .map((f) => f.slice('vmlinuz-'.length))
    .filter((r) => fs.existsSync(path.join('/lib/modules', r, 'modules.dep')))
    .sort();
  const release = usable[usable.length - 1];
  if (!release) {
    return { ok: false, reason: 'no Debian kernel with its modules in /boot and /lib/modules (package linux-image-amd64; .ci/provision-qemu.sh installs it)' };
  }
  if (!fs.existsSync(BUSYBOX)) return { ok: false, reason: `${BUSYBOX} is missing (package busybox-static)` };
  if (process.getuid?.() !== 0) return { ok: false, reason: 'needs root (the kernel and the 9p share of / must be readable)' };
  return { ok: true, qemu, kernel: `/boot/vmlinuz-${release}`, release, busybox: BUSYBOX };
}

/** Module files (relative to /lib/modules/<release>) in load order: dependencies first. */
export function moduleLoadOrder(release: string, wanted: readonly string[]): string[] {
  const dir = path.join('/lib/modules', release);
  const deps = new Map<string, string[]>();
  for (const line of fs.readFileSync(path.join(dir, 'modules.dep'), 'utf8').split('\n')) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    deps.set(line.slice(0, i), line.slice(i + 1).trim().split(/\s+/).filter(Boolean));
  }
  const byName = new Map<string, string>();
  for (const f of deps.keys()) byName.set(path.basename(f).replace(/\.ko(\.(xz|gz|zst))?$/, '').replace(/-/g, '_'), f);
  const order: string[] = [];
  const visit = (f: string): void => {
    if (order.includes(f)) return;
    for (const d of deps.get(f) ?? []) visit(d);
    order.push(f);
  };
  for (const w of wanted) {
    const f = byName.get(w.replace(/-/g, '_'));
    // Built into this kernel: nothing to load.
    if (f) visit(f);
  }
  for (const f of order) {
    if (!/\.ko$/.test(f)) throw new Error(`${f}: compressed modules are not supported by the initramfs (busybox insmod)`);
  }
  return order;
}

// ---------------------------------------------------------------- initramfs (cpio "newc")

interface CpioEntry {
  name: string;
  mode: number;
  data?: Buffer;
}

function cpioHeader(e: CpioEntry, ino: number, size: number): Buffer {
  const hex = (n: number): string => n.toString(16).padStart(8, '0');
  const name = Buffer.from(`${e.name}\0`);
  const fields = ['070701', hex(ino), hex(e.mode), hex(0), hex(0), hex(1), hex(0), hex(size), hex(0), hex(0), hex(0), hex(0), hex(name.length), hex(0)];
  const head = Buffer.concat([Buffer.from(fields.join('')), name]);
  return Buffer.concat([head, Buffer.alloc((4 - (head.length % 4)) % 4)]);
}

/** An uncompressed initramfs archive (the kernel's "newc" cpio format). */
export function cpioArchive(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const data = e.data ?? Buffer.alloc(0);
    parts.push(cpioHeader(e, ino++, data.length), data, Buffer.alloc((4 - (data.length % 4)) % 4));
  }
  parts.push(cpioHeader({ name: 'TRAILER!!!', mode: 0 }, 0, 0));
  return Buffer.concat(parts);
}

const DIR = 0o040755;
const FILE = 0o100755;

/**
 * The checkout the tests run from, when the VM's own tmpfs mounts would hide it (a clone under
 * /tmp or /run): it is shared on its own and mounted back at the same path.
 */
const REPO_ROOT = path.resolve(__dirname, '../../..');
const HIDDEN_BY_VM_TMPFS = /^\/(tmp|run)(\/|$)/.test(REPO_ROOT);

function initScript(modules: readonly string[]): string {
  const bb = '/bin/busybox';
  const repo = HIDDEN_BY_VM_TMPFS
    ? [
        `${bb} mkdir -p /newroot${REPO_ROOT}`,
        `${bb} mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 repo /newroot${REPO_ROOT} || { echo "tso-vm: cannot mount the checkout"; ${bb} poweroff -f; }`,
      ]
    : [];
  return [
    `#!${bb} sh`,
    `${bb} mount -t proc proc /proc`,
    `${bb} mount -t sysfs sys /sys`,
    `${bb} mount -t devtmpfs dev /dev`,
    ...modules.map((m) => `${bb} insmod /mods/${path.basename(m)} || echo "tso-vm: insmod ${path.basename(m)} failed"`),
    `${bb} mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 root /newroot || { echo "tso-vm: cannot mount the host root"; ${bb} poweroff -f; }`,
    `${bb} mount -t tmpfs -o mode=1777 tmp /newroot/tmp`,
    `${bb} mount -t tmpfs -o mode=755 run /newroot/run`,
    `${bb} mkdir -p /newroot/run/out`,
    `${bb} mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=262144 out /newroot/run/out || { echo "tso-vm: cannot mount the output share"; ${bb} poweroff -f; }`,
    ...repo,
    `${bb} mount --move /proc /newroot/proc`,
    `${bb} mount --move /sys /newroot/sys`,
    `${bb} mount --move /dev /newroot/dev`,
    // The script runs in the new root; init (pid 1) must not exit, so it powers off itself.
    `exec ${bb} switch_root /newroot /bin/sh -c 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp; ` +
      `echo tso-vm: script start; /bin/sh /run/out/script.sh > /run/out/log 2>&1; echo $? > /run/out/exit-code; sync; ` +
      `cat /run/out/log; echo tso-vm: script end; echo o > /proc/sysrq-trigger; sleep 30'`,
    '',
  ].join('\n');
}

/** Builds the initramfs for `release` into `file`. */
export function buildInitramfs(release: string, file: string, busybox = BUSYBOX): void {
  const modules = moduleLoadOrder(release, ROOT_MODULES);
  const entries: CpioEntry[] = [
    { name: 'bin', mode: DIR },
    { name: 'dev', mode: DIR },
    { name: 'proc', mode: DIR },
    { name: 'sys', mode: DIR },
    { name: 'newroot', mode: DIR },
    { name: 'mods', mode: DIR },
    { name: 'bin/busybox', mode: FILE, data: fs.readFileSync(busybox) },
    { name: 'init', mode: FILE, data: Buffer.from(initScript(modules)) },
    ...modules.map((m) => ({ name: `mods/${path.basename(m)}`, mode: 0o100644, data: fs.readFileSync(path.join('/lib/modules', release, m)) })),
  ];
  fs.writeFileSync(file, cpioArchive(entries));
}

// ---------------------------------------------------------------- running

export interface VmRunOptions {
  /** Shell script run as root inside the VM (/bin/sh of this machine's root). */
  script: string;
  /** Kill the VM after this long. Default 10 minutes (emulated; a loaded machine is slow). */
  timeoutMs?: number;
  memoryMb?: number;
  cpus?: number;
  /** Files to place next to the script (name → content), readable in the VM under /run/out. */
  files?: Record<string, string | Buffer>;
}

export interface VmResult {
  /** The script's exit status; null when it never finished (timeout, crash). */
  exitCode: number | null;
  /** Everything the VM printed on its serial console. */
  console: string;
  /** The script's combined stdout and stderr. */
  log: string;
  /** The host directory shared as /run/out (files the script wrote). */
  outDir: string;
  durationMs: number;
  timedOut: boolean;
}

let vmCount = 0;

/** Boots the VM, runs `script`, and returns when the VM is off (or was killed). */
export async function runInVm(opts: VmRunOptions): Promise<VmResult> {
  const avail = vmAvailability();
  if (!avail.ok) throw new Error(`cannot boot a VM: ${avail.reason}`);
  const dir = path.join(runDir(), `vm-${++vmCount}`);
  const outDir = path.join(dir, 'out');
  fs.mkdirSync(outDir, { recursive: true });
  const initrd = path.join(dir, 'initramfs.cpio');
  buildInitramfs(avail.release, initrd, avail.busybox);
  fs.writeFileSync(path.join(outDir, 'script.sh'), opts.script);
  for (const [name, content] of Object.entries(opts.files ?? {})) fs.writeFileSync(path.join(outDir, name), content);

  const argv = [
    avail.qemu,
    '-accel', 'tcg',
    '-cpu', 'max',
    '-m', String(opts.memoryMb ?? 1024),
    '-smp', String(opts.cpus ?? 1),
    '-nographic',
    '-no-reboot',
    '-nic', 'none',
    '-kernel', avail.kernel,
    '-initrd', initrd,
    '-append', 'console=ttyS0 quiet panic=-1 rdinit=/init',
    '-virtfs', 'local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap',
    '-virtfs', `local,path=${outDir},mount_tag=out,security_model=none,multidevs=remap`,
    ...(HIDDEN_BY_VM_TMPFS ? ['-virtfs', `local,path=${REPO_ROOT},mount_tag=repo,security_model=none,readonly=on,multidevs=remap`] : []),
  ];
  const started = Date.now();
  const vm = spawnTracked(argv, { name: 'qemu', logFile: path.join(dir, 'console.log'), keepChars: 4 << 20, stopTimeoutMs: 1000 });
  const timeoutMs = opts.timeoutMs ?? 600_000;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    void vm.stop({ signal: 'SIGKILL' });
  }, timeoutMs);
  try {
    await vm.exited;
  } finally {
    clearTimeout(timer);
  }
  const read = (f: string): string | undefined => {
    try {
      return fs.readFileSync(path.join(outDir, f), 'utf8');
    } catch {
      return undefined;
    }
  };
  const code = read('exit-code');
  return {
    exitCode: code === undefined || code.trim() === '' ? null : Number(code.trim()),
    console: vm.output(),
    log: read('log') ?? '',
    outDir,
    durationMs: Date.now() - started,
    timedOut,
  };
}
