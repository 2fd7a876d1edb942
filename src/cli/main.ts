#!/usr/bin/env node
import { parseConfig, usage } from '../config';
import { createLogger } from '../log';
// The daemon and `inspect` are loaded by the command that needs them: a long-running `serve`
// keeps every module it loaded resident, so it should not carry inspect's (local store snapshot
// reader, Docker client) and vice versa.

const VERSION = '0.1.0';

async function serve(argv: string[]): Promise<void> {
  const config = parseConfig(argv, process.env);
  const logger = createLogger(config.logLevel);
  const { startDaemon } = await import('../daemon');
  const daemon = await startDaemon(config, logger, (err) => {
    logger.error('tsoverlay cannot run', { error: err.message });
    process.exit(1);
  });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info('stopping', { signal });
    daemon.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error('shutdown failed', { error: String(err) });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // A bug in one request must not take every container's network plugin down with it.
  process.on('unhandledRejection', (reason) => logger.error('unhandled rejection', { error: String(reason) }));
}

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  switch (command) {
    case 'serve':
      return serve(rest);
    case 'inspect': {
      const { runInspect } = await import('./inspect');
      const { output, exitCode } = await runInspect(rest, process.env);
      // Exit explicitly (store/Docker clients may keep sockets open), once stdout is flushed.
      await new Promise<void>((resolve) => process.stdout.write(output, () => resolve()));
      process.exit(exitCode);
    }
    case 'version':
    case '--version':
      process.stdout.write(`tsoverlay ${VERSION}\n`);
      return;
    case undefined:
    case 'help':
    case '--help':
    case '-h': {
      const { inspectUsage } = await import('./inspect');
      process.stdout.write(`tsoverlay ${VERSION}: Docker VXLAN overlay network plugin\n\ncommands:\n  serve     run the plugin daemon\n  inspect   show (and --check) what this host holds for each network\n  version   print the version\n\n${usage()}\n\n${inspectUsage()}\n`);
      return;
    }
    default:
      process.stderr.write(`tsoverlay: unknown command "${command}"\n\n${usage()}\n`);
      process.exitCode = 2;
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`tsoverlay: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
