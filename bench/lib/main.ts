/**
 * The shell of every benchmark command: options (each with a full-run and a `--smoke` default),
 * progress on stderr, the report on stdout (markdown) and in `--json FILE`, and the harness'
 * cleanup registry run at the end — also on failure, on SIGINT/SIGTERM and on `--timeout`.
 */
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { runCleanups } from '../../test/helpers/proc';
import { loadAverage, writeReport, type BenchReport, type BenchTable, type TargetResult } from './report';

export interface NumberOption {
  /** Full-run value. */
  full: number;
  /** Value with `--smoke` (tiny size for CI). */
  smoke: number;
  help: string;
}

export interface BenchSpec<O extends Record<string, NumberOption>> {
  name: string;
  title: string;
  description: string;
  options: O;
}

export interface BenchBody {
  /** Replaces the spec's title (a variant run, e.g. with other options). */
  title?: string;
  tables: BenchTable[];
  targets: TargetResult[];
  notes: string[];
  complete: boolean;
  /** Why nothing was measured on this machine (the benchmark needs what it lacks). */
  skipped?: string;
}

export interface BenchContext {
  smoke: boolean;
  /** Progress line on stderr, with the seconds since start. */
  log(message: string): void;
}

export type Params<O extends Record<string, NumberOption>> = { [K in keyof O]: number };

/** Runs a benchmark command; never returns (exits with 0, or 1 on error). */
export function runBench<O extends Record<string, NumberOption>>(
  spec: BenchSpec<O>,
  body: (params: Params<O>, ctx: BenchContext) => Promise<BenchBody>,
): void {
  const started = Date.now();
  const argv = process.argv.slice(2);
  const optionDefs: Record<string, { type: 'string' | 'boolean' }> = { json: { type: 'string' }, smoke: { type: 'boolean' }, help: { type: 'boolean' }, timeout: { type: 'string' } };
  for (const k of Object.keys(spec.options)) optionDefs[k] = { type: 'string' };
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: argv, options: optionDefs, strict: true, allowPositionals: false }).values as Record<string, string | boolean | undefined>;
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(2);
  }
  if (values.help) {
    const rows = Object.entries(spec.options).map(([k, o]) => `  --${k.padEnd(14)} ${o.help} (default ${o.full}, --smoke ${o.smoke})`);
    process.stdout.write(
      [`usage: node ${path.relative(process.cwd(), process.argv[1] ?? '')} [options]`, '', spec.description, '', ...rows,
        '  --smoke          tiny sizes (CI)', '  --json FILE      also write the report as JSON', '  --timeout S      give up (and clean up) after S seconds', ''].join('\n'),
    );
    process.exit(0);
  }
  const smoke = values.smoke === true;
  const params = {} as Record<string, number>;
  for (const [k, o] of Object.entries(spec.options)) {
    const given = values[k];
    const v = typeof given === 'string' ? Number(given) : smoke ? o.smoke : o.full;
    if (!Number.isFinite(v) || v < 0) {
      process.stderr.write(`--${k}: expected a number, got ${String(given)}\n`);
      process.exit(2);
    }
    params[k] = v;
  }
  const log = (message: string): void => {
    process.stderr.write(`[${spec.name} +${((Date.now() - started) / 1000).toFixed(1)}s] ${message}\n`);
  };
  const timeoutS = typeof values.timeout === 'string' ? Number(values.timeout) : undefined;
  if (timeoutS !== undefined && timeoutS > 0) {
    setTimeout(() => {
      log(`timed out after ${timeoutS} s: cleaning up`);
      // The exit hook of the harness runs every pending cleanup synchronously.
      process.exit(124);
    }, timeoutS * 1000).unref();
  }
  const shown = argv.filter((a, i) => a !== '--json' && argv[i - 1] !== '--json' && !a.startsWith('--json=') && a !== '--timeout' && argv[i - 1] !== '--timeout');
  const command = ['node', path.relative(process.cwd(), process.argv[1] ?? `dist/bench/${spec.name}.js`), ...shown].join(' ');
  const loadBefore = loadAverage();
  const startedAt = new Date(started).toISOString();

  void (async () => {
    let exitCode = 0;
    try {
      log(`start (load ${loadBefore.join(' ')}): ${JSON.stringify(params)}`);
      const result = await body(params as Params<O>, { smoke, log });
      const { title, ...rest } = result;
      const report: BenchReport = {
        bench: spec.name,
        title: title ?? spec.title,
        command,
        params: { ...params, smoke },
        startedAt,
        durationS: (Date.now() - started) / 1000,
        loadBefore,
        loadAfter: loadAverage(),
        ...rest,
      };
      writeReport(report, typeof values.json === 'string' ? values.json : undefined);
    } catch (err) {
      exitCode = 1;
      process.stderr.write(`[${spec.name}] failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    } finally {
      try {
        await runCleanups();
      } catch (err) {
        exitCode = exitCode || 1;
        process.stderr.write(`[${spec.name}] cleanup: ${err instanceof Error ? err.message : String(err)}\n`);
      }
      log(`done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      process.exit(exitCode);
    }
  })();
}
