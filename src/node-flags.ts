/** V8's --interrupt-budget default (node 20, V8 11.3); test/unit/node-flags.test.ts checks it against `node --v8-options`. */
export const V8_DEFAULT_INTERRUPT_BUDGET = 66 * 1024;

/**
 * The node flags the plugin runs with, wherever it is started: the Dockerfile's ENTRYPOINT,
 * config.json's entrypoint, the systemd unit's ExecStart, the README's commands, `npm
 * start` and the benchmarks. test/unit/node-flags.test.ts checks that they all carry these.
 *
 * --max-semi-space-size=1 (MB): V8 lets the young generation grow to 2 × 16 MB, which the
 * daemon's short-lived garbage (watch events, netlink replies) never needs; with many remote
 * peers that is tens of MB of resident memory (docs/benchmarks.md, "5. Footprint", has the
 * figures). It has to be on the command line: v8.setFlagsFromString at start-up does not shrink
 * a young generation that is already set up.
 *
 * --interrupt-budget (10 × V8's default): how much bytecode a function runs before V8 counts it
 * as hot and has TurboFan compile it, on a background thread. The daemon's request path runs a
 * few times per container, so with the default V8 keeps finding newly hot request-path functions
 * for thousands of requests. Each job takes milliseconds of CPU, and on a small host the
 * scheduler often runs it on the CPU of the thread that answers Docker, which then waits while
 * the other CPU is idle (seen in a kernel scheduler trace): that was the API-latency tail. With
 * 10 × the budget far fewer jobs run, and code that runs in bulk (peer synchronisation over
 * thousands of entries, netlink encoding) is still optimised. docs/benchmarks.md, "3. Plugin API latency", has the
 * before/after. (NODE_OPTIONS does not accept this flag: it has to be on the command line.)
 */
export const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=1', `--interrupt-budget=${10 * V8_DEFAULT_INTERRUPT_BUDGET}`];
