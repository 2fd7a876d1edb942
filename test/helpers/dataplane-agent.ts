/**
 * One dataplane call as a short-lived process, run inside a test "host" namespace (`nsenter
 * --net=<host>`): the Dataplane makes vxlan0 from the namespace it starts in, so each host of a
 * multi-host dataplane test needs a process of its own. Everything it builds outlives it (namespace
 * files, devices), as it does for the daemon. Usage: node dataplane-agent.js '<json Call>'; prints
 * the result as JSON.
 */
import { silentLogger } from '../../src/log';
import { Dataplane } from '../../src/dataplane/dataplane';
import type { EndpointAttachment, OverlaySpec, Peer } from '../../src/dataplane/types';

export type AgentCall =
  | { op: 'ensureOverlay'; netnsDir: string; spec: OverlaySpec }
  | { op: 'attachEndpoint'; netnsDir: string; endpoint: EndpointAttachment }
  | { op: 'applyPeers'; netnsDir: string; networkId: string; add: Peer[]; remove: Peer[] }
  | { op: 'setPeers'; netnsDir: string; networkId: string; peers: Peer[] }
  | { op: 'listPeers'; netnsDir: string; networkId: string }
  /** Prints `watching`, then every miss of the network as a JSON line, until killed. */
  | { op: 'watchMisses'; netnsDir: string; networkId: string };

async function call(dp: Dataplane, c: AgentCall): Promise<unknown> {
  switch (c.op) {
    case 'ensureOverlay':
      return dp.ensureOverlay(c.spec);
    case 'attachEndpoint':
      return dp.attachEndpoint(c.endpoint);
    case 'applyPeers':
      return dp.applyPeers(c.networkId, c.add, c.remove);
    case 'setPeers':
      return dp.setPeers(c.networkId, c.peers);
    case 'listPeers':
      return dp.listPeers(c.networkId);
    case 'watchMisses':
      await dp.watchMisses(c.networkId, (m) => process.stdout.write(`${JSON.stringify(m)}\n`));
      process.stdout.write('watching\n');
      // The netlink socket does not hold the event loop open: this does, until the test stops us.
      setInterval(() => undefined, 1 << 30);
      return new Promise<never>(() => undefined);
  }
}

if (require.main === module) {
  const c = JSON.parse(process.argv[2] ?? '') as AgentCall;
  const dp = new Dataplane({ netnsDir: c.netnsDir, logger: silentLogger() });
  call(dp, c)
    .then((r) => {
      process.stdout.write(JSON.stringify(r ?? null));
      dp.close();
    })
    .catch((e: Error) => {
      process.stderr.write(`${e.message}\n`);
      dp.close();
      process.exitCode = 1;
    });
}
