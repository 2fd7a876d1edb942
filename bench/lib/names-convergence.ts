import type { BenchTable, TargetResult } from './report';

/** Name convergence across two hosts (filled in once the daemon serves names). */
export async function measureConvergence(_reps: number, log: (m: string) => void): Promise<{ table: BenchTable; targets: TargetResult[]; notes: string[]; complete: boolean }> {
  log('name convergence: not measured yet');
  return { table: { title: 'name convergence', columns: ['measurement'], rows: [['not measured']] }, targets: [], notes: ['Name convergence is not measured yet.'], complete: false };
}
