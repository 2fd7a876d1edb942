/**
 * Summarises a V8 CPU profile (`node --cpu-prof` writes one `.cpuprofile` per process) into the
 * functions that took the most time: self time (samples whose leaf is the function) and total
 * time (samples with the function anywhere on the stack), each as a share of all samples.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BenchTable } from './report';
import { fmt } from './stats';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface FrameCost {
  frame: string;
  selfPct: number;
  totalPct: number;
}

export interface ProfileSummary {
  file: string;
  durationS: number;
  /** Share of samples not idle (not `(idle)`, `(program)` excluded too). */
  busyPct: number;
  top: FrameCost[];
}

function frameName(cf: CallFrame, root: string): string {
  const fn = cf.functionName || '(anonymous)';
  if (!cf.url) return fn;
  let where = cf.url.replace(/^file:\/\//, '');
  const nm = where.lastIndexOf('/node_modules/');
  if (nm >= 0) where = where.slice(nm + '/node_modules/'.length);
  else if (where.startsWith(root)) where = path.relative(root, where);
  return `${fn} (${where}:${cf.lineNumber + 1})`;
}

/** Self and total time per function (merged by name and location), busiest first by self time. */
export function summarizeProfile(file: string, topN = 15, root = process.cwd()): ProfileSummary {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  // Sample counts per node: from samples[] when present, else hitCount.
  const hits = new Map<number, number>();
  if (prof.samples && prof.samples.length) for (const s of prof.samples) hits.set(s, (hits.get(s) ?? 0) + 1);
  else for (const n of prof.nodes) if (n.hitCount) hits.set(n.id, n.hitCount);
  let total = 0;
  let idle = 0;
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  for (const [id, count] of hits) {
    const node = byId.get(id);
    if (!node) continue;
    total += count;
    const leaf = node.callFrame.functionName;
    if (leaf === '(idle)' || leaf === '(program)') {
      idle += count;
      continue;
    }
    const name = frameName(node.callFrame, root);
    self.set(name, (self.get(name) ?? 0) + count);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur);
      if (!n || n.callFrame.functionName === '(root)') continue;
      const nm = frameName(n.callFrame, root);
      if (seen.has(nm)) continue;
      seen.add(nm);
      inclusive.set(nm, (inclusive.get(nm) ?? 0) + count);
    }
  }
  const pct = (x: number) => (total ? (100 * x) / total : 0);
  const top = [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, topN)
    .map(([frame, s]) => ({ frame, selfPct: pct(s), totalPct: pct(inclusive.get(frame) ?? s) }));
  return { file, durationS: (prof.endTime - prof.startTime) / 1e6, busyPct: pct(total - idle), top };
}

/** The heaviest frames by total (inclusive) time: which of our own functions the time is spent under. */
export function inclusiveTop(file: string, match: RegExp, topN = 10, root = process.cwd()): FrameCost[] {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const hits = new Map<number, number>();
  if (prof.samples && prof.samples.length) for (const s of prof.samples) hits.set(s, (hits.get(s) ?? 0) + 1);
  else for (const n of prof.nodes) if (n.hitCount) hits.set(n.id, n.hitCount);
  let total = 0;
  const inclusive = new Map<string, number>();
  for (const [id, count] of hits) {
    total += count;
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur);
      if (!n) continue;
      const nm = frameName(n.callFrame, root);
      if (!match.test(nm) || seen.has(nm)) continue;
      seen.add(nm);
      inclusive.set(nm, (inclusive.get(nm) ?? 0) + count);
    }
  }
  return [...inclusive.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, topN)
    .map(([frame, c]) => ({ frame, selfPct: NaN, totalPct: total ? (100 * c) / total : 0 }));
}

/** The newest `.cpuprofile` in a directory. */
export function newestProfile(dir: string): string | undefined {
  if (!fs.existsSync(dir)) return undefined;
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => path.join(dir, f))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  return files[0];
}

interface HeapProfileNode {
  callFrame: CallFrame;
  selfSize: number;
  children?: HeapProfileNode[];
}

/**
 * Summarises a sampling heap profile (`node --heap-prof` writes one `.heapprofile` per process):
 * bytes allocated per function (sampled; garbage included), biggest first.
 */
export function summarizeHeapProfile(file: string, topN = 15, root = process.cwd()): { totalMB: number; top: { frame: string; selfMB: number; totalMB: number }[] } {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as { head: HeapProfileNode };
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  let total = 0;
  const walk = (n: HeapProfileNode, stack: string[]): number => {
    const name = frameName(n.callFrame, root);
    let sum = n.selfSize;
    total += n.selfSize;
    if (n.selfSize) self.set(name, (self.get(name) ?? 0) + n.selfSize);
    const next = stack.includes(name) ? stack : [...stack, name];
    for (const c of n.children ?? []) sum += walk(c, next);
    if (!stack.includes(name)) inclusive.set(name, (inclusive.get(name) ?? 0) + sum);
    return sum;
  };
  walk(prof.head, []);
  const top = [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, topN)
    .map(([frame, s]) => ({ frame, selfMB: s / 1e6, totalMB: (inclusive.get(frame) ?? s) / 1e6 }));
  return { totalMB: total / 1e6, top };
}

/** The newest file with the given extension in a directory. */
export function newestFile(dir: string, ext: string): string | undefined {
  if (!fs.existsSync(dir)) return undefined;
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith(ext))
    .map((f) => path.join(dir, f))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0];
}

/** The two tables every benchmark with `--profile 1` reports: top frames by self time, and tsoverlay's own functions. */
export function cpuProfileTables(file: string): BenchTable[] {
  const s = summarizeProfile(file, 15);
  return [
    {
      title: `CPU profile of the plugin over the whole run (${fmt(s.durationS, 0)} s, busy ${fmt(s.busyPct, 1)}%): top frames by self time`,
      columns: ['frame', 'self %', 'total %'],
      rows: s.top.map((f) => [f.frame, fmt(f.selfPct, 1), fmt(f.totalPct, 1)]),
    },
    {
      title: 'CPU profile: tsoverlay functions by total time',
      columns: ['frame', 'total %'],
      rows: inclusiveTop(file, /\((dist\/)?src\//, 15).map((f) => [f.frame, fmt(f.totalPct, 1)]),
    },
  ];
}
