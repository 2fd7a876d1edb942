/**
 * What every benchmark command produces: tables (markdown), the targets it checks as ratios
 * against baselines measured in the same run, and the parameters it ran with. Written as JSON
 * (`--json FILE`) for `bench/run-all.ts`, printed as markdown on stdout.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface BenchTable {
  title: string;
  columns: string[];
  rows: string[][];
}

export type Comparator = '<=' | '>=' | '<';

export interface TargetResult {
  /** What is compared, e.g. "(b − a) tsoverlay / Docker overlay, median". */
  name: string;
  value: number;
  op: Comparator;
  limit: number;
  /** Unit of value/limit: "×" for a ratio, "ms", "MB". */
  unit: string;
  met: boolean;
}

export interface BenchReport {
  /** Command name, e.g. "convergence". */
  bench: string;
  title: string;
  /** The exact command line that produced this report. */
  command: string;
  params: Record<string, string | number | boolean>;
  startedAt: string;
  durationS: number;
  loadBefore: number[];
  loadAfter: number[];
  tables: BenchTable[];
  targets: TargetResult[];
  /** Method notes, caveats, failures (markdown). */
  notes: string[];
  /** Whether every measurement completed (targets aside). */
  complete: boolean;
  /** Why nothing was measured on this machine (the benchmark needs what it lacks). */
  skipped?: string;
}

export function target(name: string, value: number, op: Comparator, limit: number, unit = '×'): TargetResult {
  const met = Number.isFinite(value) && (op === '<=' ? value <= limit : op === '>=' ? value >= limit : value < limit);
  return { name, value, op, limit, unit, met };
}

function cell(s: string): string {
  return s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

export function tableMarkdown(t: BenchTable): string {
  const lines = [`| ${t.columns.map(cell).join(' | ')} |`, `|${t.columns.map(() => '---').join('|')}|`];
  for (const r of t.rows) lines.push(`| ${r.map(cell).join(' | ')} |`);
  return lines.join('\n');
}

function fmtTargetValue(t: TargetResult): string {
  if (!Number.isFinite(t.value)) return 'n/a';
  return t.unit === '×' ? `${t.value.toFixed(2)}×` : `${t.value.toFixed(t.unit === 'ms' ? 2 : 1)} ${t.unit}`;
}

export function targetsMarkdown(targets: readonly TargetResult[]): string {
  if (targets.length === 0) return '';
  return tableMarkdown({
    title: 'targets',
    columns: ['target', 'measured', 'required', 'met'],
    rows: targets.map((t) => [
      t.name,
      fmtTargetValue(t),
      `${t.op} ${t.unit === '×' ? `${t.limit}×` : `${t.limit} ${t.unit}`}`,
      t.met ? 'yes' : '**no**',
    ]),
  });
}

/** The report as a markdown section (heading level `level`). */
export function reportMarkdown(r: BenchReport, level = 2): string {
  const h = '#'.repeat(level);
  const parts = [`${h} ${r.title}`, '', `Command: \`${r.command}\` — ${r.durationS.toFixed(0)} s, load average ${r.loadBefore.map((x) => x.toFixed(2)).join(' ')} before, ${r.loadAfter.map((x) => x.toFixed(2)).join(' ')} after.`, ''];
  for (const t of r.tables) {
    parts.push(`**${t.title}**`, '', tableMarkdown(t), '');
  }
  if (r.targets.length) parts.push('**Targets**', '', targetsMarkdown(r.targets), '');
  if (r.notes.length) {
    for (const n of r.notes) parts.push(n.startsWith('- ') ? n : `- ${n}`);
    parts.push('');
  }
  if (!r.complete) parts.push('**This run did not complete every measurement; see the notes.**', '');
  return parts.join('\n');
}

export function loadAverage(): number[] {
  return os.loadavg().map((x) => Math.round(x * 100) / 100);
}

export function writeReport(r: BenchReport, jsonPath: string | undefined): void {
  process.stdout.write(`\n${reportMarkdown(r)}\n`);
  if (jsonPath) {
    fs.mkdirSync(path.dirname(path.resolve(jsonPath)), { recursive: true });
    fs.writeFileSync(jsonPath, `${JSON.stringify(r, null, 2)}\n`);
  }
}

/** Checks the shape of a parsed report (the smoke test and run-all use it). Returns the problems found. */
export function validateReport(value: unknown): string[] {
  const problems: string[] = [];
  if (typeof value !== 'object' || value === null) return ['not an object'];
  const r = value as Record<string, unknown>;
  for (const k of ['bench', 'title', 'command', 'startedAt']) if (typeof r[k] !== 'string' || r[k] === '') problems.push(`${k} missing`);
  if (typeof r.durationS !== 'number' || !(r.durationS >= 0)) problems.push('durationS missing');
  if (typeof r.complete !== 'boolean') problems.push('complete missing');
  if (!Array.isArray(r.tables) || r.tables.length === 0) problems.push('no tables');
  else {
    for (const t of r.tables as unknown[]) {
      const tt = t as Partial<BenchTable>;
      if (!Array.isArray(tt.columns) || !Array.isArray(tt.rows) || tt.rows.length === 0) {
        problems.push(`table ${String(tt.title)} empty`);
        continue;
      }
      for (const row of tt.rows) if (!Array.isArray(row) || row.length !== tt.columns.length) problems.push(`table ${String(tt.title)}: ragged row`);
    }
  }
  if (!Array.isArray(r.targets)) problems.push('targets missing');
  else {
    for (const t of r.targets as unknown[]) {
      const tt = t as Partial<TargetResult>;
      // NaN (not measured) is written as null.
      const v = tt.value as unknown;
      if (typeof tt.name !== 'string' || (typeof v !== 'number' && v !== null) || typeof tt.met !== 'boolean') problems.push('malformed target');
    }
  }
  return problems;
}
