/**
 * The node flags the plugin runs with, wherever it is started: the Dockerfile's ENTRYPOINT,
 * plugin/config.json's entrypoint, the systemd unit's ExecStart, the README's commands, `npm
 * start` and the benchmarks. test/unit/node-flags.test.ts checks that they all carry these.
 *
 * --max-semi-space-size=1 (MB): V8 lets the young generation grow to 2 × 16 MB, which the
 * daemon's short-lived garbage (watch events, netlink replies) never needs; with 10,000 remote
 * peers the difference is 30–50 MB of resident memory (docs/benchmarks.md, "5. Footprint").
 * It has to be on the command line: v8.setFlagsFromString at start-up does not shrink a young
 * generation that is already set up (measured: 33.6 MB of new space either way).
 */
export const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=1'];
