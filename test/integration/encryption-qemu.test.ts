/**
 * Encrypted networks against a kernel that has IPsec ESP: Debian's own kernel booted under qemu
 * (test/helpers/qemu.ts), since this machine's kernel has no ESP or AES-GCM.
 *
 * Inside one VM: three "hosts" as network namespaces on one bridge (the underlay). h1 and h2
 * share an encrypted overlay (VXLAN on the encrypted port) whose SAs and policies are programmed
 * by src/crypto + src/dataplane/xfrm.ts through test/helpers/esp-vm-agent.ts; h3 is a host
 * without keys that sends cleartext VXLAN to the same port. A plain overlay on 4789 runs
 * alongside. Then, in namespaces of their own, etcd and three real `tsoverlay serve` daemons
 * driven over their plugin sockets as dockerd drives them (test/helpers/esp-vm-cluster.ts): an
 * encrypted and a plain network, `tsoverlay rotate-keys`, a host joining, a daemon SIGKILLed and
 * restarted, a host dying. The script prints `RESULT key=value` lines that the tests below check.
 *
 * Skipped, saying why, where qemu or the Debian kernel is missing; under CI=true it must run.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { DEFAULT_ENCRYPTED_VXLAN_PORT } from '../../src/crypto/esp';
import { encryptedOverlayMtu } from '../../src/dataplane/xfrm';
import { cleanupAfter } from '../helpers/proc';
import { type VmResult, runInVm, vmAvailability } from '../helpers/qemu';

cleanupAfter();

const avail = vmAvailability();
const inCi = process.env.CI === 'true';
const skip = !avail.ok && !inCi ? `no VM with an ESP-capable kernel here: ${avail.reason}` : false;

const PORT = DEFAULT_ENCRYPTED_VXLAN_PORT;
const MTU = encryptedOverlayMtu(1500);
const AGENT = path.resolve(__dirname, '../helpers/esp-vm-agent.js');
const CLUSTER = path.resolve(__dirname, '../helpers/esp-vm-cluster.js');

function script(): string {
  return String.raw`
set -u
P=${PORT}
MTU=${MTU}
A="node ${AGENT}"
say() { echo "RESULT $*"; }
inns() { ns=$1; shift; ip netns exec "$ns" "$@"; }
json() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" | head -1; }
loss() { sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p' | head -1; }

say kernel=$(uname -r)
say probe=$($A probe | json ok)

ip link add ul type bridge && ip link set ul up
for i in 1 2 3; do
  ip netns add h$i
  ip link add h$i type veth peer name eth0 netns h$i
  ip link set h$i master ul up
  ip -n h$i addr add 10.99.0.$i/24 dev eth0
  ip -n h$i link set eth0 up
  ip -n h$i link set lo up
done
# Encrypted overlay (VNI 42 on the encrypted port): h1 <-> h2; h3 sends to h1 without keys.
ip -n h1 link add vx0 type vxlan id 42 dstport $P remote 10.99.0.2 dev eth0
ip -n h2 link add vx0 type vxlan id 42 dstport $P remote 10.99.0.1 dev eth0
ip -n h3 link add vx0 type vxlan id 42 dstport $P remote 10.99.0.1 dev eth0
for i in 1 2 3; do ip -n h$i link set vx0 mtu $MTU up; ip -n h$i addr add 192.168.50.$i/24 dev vx0; done
# Plain overlay alongside (VNI 43 on 4789).
ip -n h1 link add vx1 type vxlan id 43 dstport 4789 remote 10.99.0.2 dev eth0
ip -n h2 link add vx1 type vxlan id 43 dstport 4789 remote 10.99.0.1 dev eth0
for i in 1 2; do ip -n h$i link set vx1 mtu 1450 up; ip -n h$i addr add 192.168.60.$i/24 dev vx1; done

K1=$(inns h1 $A pubkey /tmp/k1 | sed -n 's/.*"publicKey":"\([^"]*\)".*/\1/p')
K2=$(inns h2 $A pubkey /tmp/k2 | sed -n 's/.*"publicKey":"\([^"]*\)".*/\1/p')
conf() { # file selfname selfinst keydir vtep epoch [peername peerinst peerkey peervtep]
  f=$1; sn=$2; si=$3; kd=$4; vt=$5; ep=$6; shift 6
  if [ -n "$1" ]; then peers="[{\"name\":\"$1\",\"instance\":\"$2\",\"publicKey\":\"$3\",\"vtep\":\"$4\"}]"; else peers="[]"; fi
  printf '{"self":{"name":"%s","instance":"%s","keyDir":"%s","vtep":"%s"},"peers":%s,"epoch":%s,"port":%s}\n' "$sn" "$si" "$kd" "$vt" "$peers" "$ep" "$P" > "$f"
}
c1() { conf /tmp/c1.json h1 i1 /tmp/k1 10.99.0.1 "$1" h2 i2 "$K2" 10.99.0.2; }
c2() { conf /tmp/c2.json h2 i2 /tmp/k2 10.99.0.2 "$1" h1 i1 "$K1" 10.99.0.1; }
apply1() { c1 "$1"; r=$(inns h1 $A apply /tmp/c1.json); echo "h1 apply $1: $r"; }
apply2() { c2 "$1"; r=$(inns h2 $A apply /tmp/c2.json); echo "h2 apply $1: $r"; }

apply1 0; say apply1_error=$(echo "$r" | json error); say apply1_sas=$(echo "$r" | json sas); say apply1_policies=$(echo "$r" | json policies)
apply2 0; say apply2_error=$(echo "$r" | json error)
inns h1 ip xfrm state | grep -E '^src|proto|aead' ; inns h1 ip xfrm policy

# Started without the inns function, so that $! is the process itself (signalled by PID).
# Emulated and on a loaded host, tcpdump may take seconds to start: it writes the file's header
# once it captures, so that is waited for (up to 60 s), not a fixed time.
capture() {
  rm -f /tmp/$2.pcap
  ip netns exec $1 tcpdump -i eth0 -n -U -s 128 -w /tmp/$2.pcap 2>/dev/null & CAP=$!
  t=0; while [ ! -s /tmp/$2.pcap ] && [ $t -lt 600 ]; do sleep 0.1; t=$((t + 1)); done
  sleep 0.5
}
endcap() { sleep 2; kill -INT $CAP; wait $CAP 2>/dev/null; }
# Pings lost between the first and the last reply (one stopped by SIGINT would count those
# still in flight as lost).
gaps() { grep -v DUP | sed -n 's/.*icmp_seq=\([0-9]*\).*/\1/p' | sort -n | uniq | awk 'NR==1{lo=$1} {hi=$1; n++} END{print (n ? hi - lo + 1 - n : -1)}'; }
count() { tcpdump -r /tmp/$1.pcap -n "$2" 2>/dev/null | wc -l; }

# 1. Pings through the encrypted overlay; on the wire only ESP, no VXLAN on the encrypted port.
capture h2 enc
say enc_loss=$(inns h1 ping -c 5 -i 0.2 -W 10 192.168.50.2 | loss)
say df_loss=$(inns h1 ping -M do -s $((MTU - 28)) -c 3 -i 0.3 -W 10 192.168.50.2 | loss)
endcap
say enc_esp=$(count enc 'esp')
say enc_clear=$(count enc "udp port $P")
say enc_frag=$(count enc 'ip[6:2] & 0x3fff != 0')
tcpdump -r /tmp/enc.pcap -n 2>/dev/null | head -4

# The MTU bound is tight: one byte more needs fragments.
inns h1 ip link set vx0 mtu $((MTU + 1)); inns h2 ip link set vx0 mtu $((MTU + 1))
capture h2 big
inns h1 ping -M do -s $((MTU - 27)) -c 2 -i 0.3 -W 10 192.168.50.2 >/dev/null
endcap
say big_frag=$(count big 'ip[6:2] & 0x3fff != 0')
inns h1 ip link set vx0 mtu $MTU; inns h2 ip link set vx0 mtu $MTU

# 2. The plain network alongside stays plain. The encrypted overlay is taken down meanwhile (its
#    SAs and policies stay): its own background traffic (neighbour probes) is ESP too, and would
#    be counted here on a slow VM whose capture window is longer.
inns h1 ip link set vx0 down; inns h2 ip link set vx0 down
capture h2 plain
say plain_loss=$(inns h1 ping -c 3 -i 0.3 -W 10 192.168.60.2 | loss)
endcap
inns h1 ip link set vx0 up; inns h2 ip link set vx0 up
say plain_vxlan=$(count plain 'udp port 4789')
say plain_esp=$(count plain 'esp')

# 3. Rotation under 10 pings/s: h1 first, then h2; then h2 first, then h1. No packet lost.
ip netns exec h1 ping -i 0.1 -W 10 192.168.50.2 > /tmp/rot.txt 2>&1 & PING=$!
sleep 2
spi0=$(inns h1 ip xfrm policy | sed -n 's/.*spi \(0x[0-9a-f]*\).*/\1/p')
apply1 1; apply2 1
apply2 2; apply1 2
sleep 2
kill -INT $PING; wait $PING
say rot_loss=$(gaps < /tmp/rot.txt)
say rot_sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' /tmp/rot.txt)
spi2=$(inns h1 ip xfrm policy | sed -n 's/.*spi \(0x[0-9a-f]*\).*/\1/p')
say spi_changed=$([ -n "$spi0" ] && [ "$spi0" != "$spi2" ] && echo yes || echo no)
say rot_h1_sas=$(inns h1 ip xfrm state | grep -c '^src')

# 4. A restart reconciles without touching anything: the same inputs give no step.
apply1 2; say restart_steps=$(echo "$r" | json steps)
c1 2; say check_diffs=$(inns h1 $A check /tmp/c1.json)

# 5. Cleartext VXLAN on the encrypted port (h3 has no keys) reaches nothing on h1. h2's end of
#    the encrypted overlay is down meanwhile, so that nothing legitimate arrives on h1's vx0
#    (neighbour probes, slow on a loaded VM) while it is counted.
inns h2 ip link set vx0 down
rx0=$(inns h1 cat /sys/class/net/vx0/statistics/rx_packets)
st0=$(inns h1 cat /proc/net/xfrm_stat | awk '$1=="XfrmInNoStates"||$1=="XfrmInTmplMismatch"||$1=="XfrmInNoPols"{s+=$2} END{print s+0}')
capture h1 inj
say inj_loss=$(inns h3 ping -c 4 -i 0.3 -W 2 192.168.50.1 | loss)
endcap
rx1=$(inns h1 cat /sys/class/net/vx0/statistics/rx_packets)
st1=$(inns h1 cat /proc/net/xfrm_stat | awk '$1=="XfrmInNoStates"||$1=="XfrmInTmplMismatch"||$1=="XfrmInNoPols"{s+=$2} END{print s+0}')
inns h2 ip link set vx0 up
say inj_arrived=$(count inj "src host 10.99.0.3 and udp port $P")
say inj_rx_delta=$((rx1 - rx0))
say inj_policy_drops=$((st1 - st0))

# The dump this test's parser is checked against (h2: SAs of three epochs, policies).
inns h2 $A dump > /run/out/dump-h2.json

# 6. h2 leaves h1's peer set: its SAs and policy go; nothing is sent in clear instead.
conf /tmp/c1.json h1 i1 /tmp/k1 10.99.0.1 2 "" "" "" ""
r=$(inns h1 $A apply /tmp/c1.json); echo "h1 apply without peers: $r"
say gone_sas=$(echo "$r" | json sas); say gone_policies=$(echo "$r" | json policies)
capture h2 gone
say gone_loss=$(inns h1 ping -c 3 -i 0.3 -W 2 192.168.50.2 | loss)
endcap
say gone_clear=$(count gone "src host 10.99.0.1 and udp port $P")
say gone_esp=$(count gone 'src host 10.99.0.1 and esp')

# 7. Two hosts' EncryptionControllers sharing one store: activation, two rotations under 10
#    pings/s, a host leaving, deactivation.
printf '{"storeDir":"/tmp/store","port":%s,"pingTarget":"192.168.50.2","hosts":[{"name":"h1","keyDir":"/tmp/k1","vtep":"10.99.0.1"},{"name":"h2","keyDir":"/tmp/k2","vtep":"10.99.0.2"}]}\n' $P > /tmp/ctl.json
say ctl=$($A controllers /tmp/ctl.json)

# 8. Real daemons (etcd, three tsoverlay serve) driven over their plugin sockets as dockerd
#    drives them, in namespaces of their own (rd*): it prints its own RESULT rd_* lines.
node ${CLUSTER} '{"encryptedPort":${PORT}}'
say done=yes
`;
}

function results(r: VmResult): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of r.log.split('\n')) {
    const x = /^RESULT ([a-z0-9_]+)=(.*)$/.exec(line.trim());
    if (x) m.set(x[1]!, x[2]!.trim());
  }
  return m;
}

describe('encrypted overlay in a VM with ESP', { skip }, () => {
  let vm: VmResult;
  let res: Map<string, string>;
  const get = (k: string): string => {
    const v = res.get(k);
    assert.ok(v !== undefined, `the VM script printed no ${k}; its log:\n${vm.log.slice(-6000)}`);
    return v;
  };
  const num = (k: string): number => Number(get(k));
  const all = (): string => JSON.stringify(Object.fromEntries(res));
  const eq = (k: string, want: number | string): void => {
    const v = typeof want === 'number' ? num(k) : get(k);
    assert.equal(v, want, `${k}=${get(k)}; all results: ${all()}`);
  };
  const atLeast = (k: string, min: number): void => assert.ok(num(k) >= min, `${k}=${get(k)} < ${min}; all results: ${all()}`);

  before(async () => {
    if (!avail.ok) throw new Error(`CI=true but no VM can boot here: ${avail.reason}`);
    // Two CPUs: the real daemons start side by side; the memory holds three of them and etcd.
    vm = await runInVm({ script: script(), timeoutMs: 20 * 60_000, cpus: 2, memoryMb: 1536 });
    res = results(vm);
    fs.writeFileSync(path.join(vm.outDir, 'results.json'), JSON.stringify(Object.fromEntries(res), null, 2));
    assert.ok(!vm.timedOut, `the VM timed out after ${vm.durationMs} ms; console:\n${vm.console.slice(-4000)}`);
    eq('done', 'yes');
  });

  test('the kernel can do ESP with rfc4106(gcm(aes)) (probe in a scratch namespace)', () => {
    eq('probe', 'true');
  });

  test('SAs and policies programmed with our encoder; pings go through as ESP, never as VXLAN', () => {
    eq('apply1_error', '');
    eq('apply2_error', '');
    eq('apply1_sas', 3);
    eq('apply1_policies', 3);
    eq('enc_loss', 0);
    atLeast('enc_esp', 10);
    eq('enc_clear', 0);
  });

  test('a DF ping at the overlay MTU passes unfragmented; one byte more would fragment', () => {
    eq('df_loss', 0);
    eq('enc_frag', 0);
    atLeast('big_frag', 1);
  });

  test('a plain network alongside stays plain', () => {
    eq('plain_loss', 0);
    atLeast('plain_vxlan', 6);
    eq('plain_esp', 0);
  });

  test('key rotation under 10 pings/s loses nothing, whichever host rotates first', () => {
    atLeast('rot_sent', 20);
    eq('rot_loss', 0);
    eq('spi_changed', 'yes');
    eq('rot_h1_sas', 4);
  });

  test('a restart with the same state changes nothing; check finds no difference', () => {
    eq('restart_steps', 0);
    eq('check_diffs', '{"differences":[]}');
  });

  test('cleartext VXLAN on the encrypted port arrives but reaches nothing', () => {
    atLeast('inj_arrived', 1);
    eq('inj_loss', 100);
    eq('inj_rx_delta', 0);
    atLeast('inj_policy_drops', 1);
  });

  test('a peer that leaves: its SAs and policy go, and nothing is sent in clear instead', () => {
    eq('gone_sas', 0);
    eq('gone_policies', 2);
    eq('gone_loss', 100);
    eq('gone_clear', 0);
    eq('gone_esp', 0);
  });

  test('controllers of two hosts sharing a store: activation, rotations under 10 pings/s with 0 lost, deactivation, a host leaving', () => {
    const c = JSON.parse(get('ctl')) as {
      error?: string;
      activated: { epochs: number[]; h1: { sas: number; policies: number }; checks: string[][] };
      rotation1: { ms: number };
      rotation2: { ms: number; h1: { sas: number } };
      ping: [number, number];
      left: { ms: number; h1: { sas: number; policies: number }; participants: string[] };
      deactivated: { h1: { sas: number; policies: number }; h2: { sas: number; policies: number } };
    };
    assert.equal(c.error, undefined, `controllers: ${get('ctl')}`);
    assert.deepEqual(c.activated.epochs, [0, 0]);
    assert.deepEqual(c.activated.h1, { sas: 3, policies: 3 });
    assert.deepEqual(c.activated.checks, [[], []]);
    assert.equal(c.rotation2.h1.sas, 4);
    assert.ok(c.ping[0] >= 20, `pings sent: ${c.ping[0]}`);
    assert.equal(c.ping[1], c.ping[0], `pings lost during rotations: ${get('ctl')}`);
    assert.deepEqual(c.deactivated.h2, { sas: 0, policies: 0 }, 'the last encrypted network gone: nothing left');
    assert.deepEqual(c.deactivated.h1, { sas: 4, policies: 3 }, 'an idle peer keeps its SAs with us');
    assert.deepEqual(c.left.h1, { sas: 0, policies: 2 }, 'a host that stops loses its SAs everywhere');
    assert.deepEqual(c.left.participants, ['h1']);
  });

  describe('real daemons over the plugin protocol, etcd, three hosts', () => {
    const rdOk = (): void => {
      assert.equal(res.get('rd_error'), undefined, `the real-daemon scenario failed: ${res.get('rd_error')}; its log:\n${vm.log.slice(-8000)}`);
    };
    const yes = (k: string): void => eq(k, 'true');

    test('an encrypted network (generic option encrypted) carries the pings as ESP, never as VXLAN', () => {
      eq('rd_enc_loss', 0);
      atLeast('rd_enc_sas_h1', 3);
      atLeast('rd_enc_esp', 10);
      eq('rd_enc_vxlan', 0);
      eq('rd_enc_clear_ips', 0);
    });

    test('a plain network between the same hosts stays plain VXLAN on 4789', () => {
      eq('rd_plain_loss', 0);
      atLeast('rd_plain_clear_icmp', 6);
      eq('rd_plain_on_enc_port', 0);
    });

    test('tsoverlay rotate-keys under 10 pings/s: both hosts switch, 0 lost', () => {
      yes('rd_rot_accepted');
      yes('rd_rot_spi_changed');
      atLeast('rd_rot_sent', 20);
      eq('rd_rot_lost', 0);
    });

    test('a third host joining later gets SAs with both and reaches both', () => {
      eq('rd_join_loss_1', 0);
      eq('rd_join_loss_2', 0);
      atLeast('rd_join_sas_h1_with_h3', 3);
      atLeast('rd_join_sas_h3', 6);
    });

    test('a daemon SIGKILLed and restarted: SAs stay, 0 pings lost, nothing rewritten, inspect --check clean', () => {
      yes('rd_restart_sas_kept');
      atLeast('rd_restart_sent', 20);
      eq('rd_restart_lost', 0);
      yes('rd_restart_kernel_same');
      eq('rd_restart_check_exit', 0);
    });

    test('a host that dies (daemon killed, lease expired): its SAs and policies go on the others', () => {
      yes('rd_dead_forgotten');
      eq('rd_dead_left_h1', 0);
      eq('rd_dead_left_h2', 0);
      eq('rd_dead_still_12', 0);
      rdOk();
      eq('rd_done', 'yes');
    });
  });
});
