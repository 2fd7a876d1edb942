import winston from 'winston';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export type Logger = winston.Logger;

/** JSON lines on stdout: what `docker plugin` and journald collect. */
export function createLogger(level: LogLevel = 'info'): Logger {
  // winston runs the format for every call and filters by level only in the transport: without
  // dropping disabled levels first, each debug call on a hot path (one per peer change) costs a
  // timestamp and a JSON text that are thrown away.
  const enabledOnly = winston.format((info) => (logger.isLevelEnabled(info.level) ? info : false));
  const logger = winston.createLogger({
    level,
    format: winston.format.combine(enabledOnly(), winston.format.timestamp(), winston.format.json()),
    transports: [new winston.transports.Console()],
  });
  return logger;
}

/** A logger that drops everything: for unit tests and library use. */
export function silentLogger(): Logger {
  return winston.createLogger({ silent: true, transports: [new winston.transports.Console({ silent: true })] });
}
