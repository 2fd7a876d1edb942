/**
 * Gives the C heap's free pages back to the kernel, after start-up and then periodically.
 *
 * Node's Buffers (every store response, socket read and netlink reply) live in glibc's malloc
 * arenas. glibc returns to the kernel only memory at the top of an arena, so after a burst (the
 * start-up listing of every peer, thousands of endpoint events arriving at once) the daemon kept
 * the burst's peak RSS, with the freed memory scattered inside the arenas. malloc_trim(0) walks
 * every arena and releases its free pages (madvise), the process's data untouched; on an idle
 * arena it has nothing to do. Where there is no glibc (musl), nothing is trimmed.
 */
import type { Logger } from '../log';
import { errorMessage } from './errors';
import { libcFunction } from './libc';

type TrimFn = (pad: number) => number;

let glibcTrim: TrimFn | null | undefined;

/** glibc's malloc_trim, or null where the C library has none. */
export function mallocTrim(): TrimFn | null {
  if (glibcTrim !== undefined) return glibcTrim;
  try {
    glibcTrim = libcFunction('int malloc_trim(size_t pad)') as TrimFn;
  } catch {
    glibcTrim = null;
  }
  return glibcTrim;
}

export class MallocTrimmer {
  private timer: NodeJS.Timeout | undefined;
  private failed = false;

  constructor(
    private readonly logger: Logger,
    private readonly trim: TrimFn | null = mallocTrim(),
  ) {}

  /** Trims now (after a known burst: start-up) and then every `intervalMs` (0: only now). */
  start(intervalMs: number): void {
    this.trimNow();
    if (intervalMs > 0 && this.trim && !this.timer) {
      this.timer = setInterval(() => this.trimNow(), intervalMs);
      this.timer.unref();
    }
  }

  trimNow(): void {
    if (!this.trim || this.failed) return;
    try {
      const started = performance.now();
      const before = process.memoryUsage.rss();
      this.trim(0);
      this.logger.debug('C heap trimmed', { ms: Math.round((performance.now() - started) * 100) / 100, rssBefore: before, rssAfter: process.memoryUsage.rss() });
    } catch (err) {
      // Never again: a C library that fails this once fails it every time.
      this.failed = true;
      this.logger.warn('cannot return freed C heap memory to the kernel', { error: errorMessage(err) });
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
