/** Small statistics for benchmark samples (no dependencies). */

export interface Summary {
  n: number;
  min: number;
  median: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/**
 * The q-quantile (0 ≤ q ≤ 1) with linear interpolation between closest ranks (numpy's
 * default). NaN for an empty sample.
 */
export function quantile(values: readonly number[], q: number): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const pos = (v.length - 1) * Math.min(1, Math.max(0, q));
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return v[lo]! + (v[hi]! - v[lo]!) * (pos - lo);
}

export function median(values: readonly number[]): number {
  return quantile(values, 0.5);
}

export function summarize(values: readonly number[]): Summary {
  const v = values.filter((x) => Number.isFinite(x));
  const mean = v.length ? v.reduce((a, b) => a + b, 0) / v.length : NaN;
  return {
    n: v.length,
    min: v.length ? Math.min(...v) : NaN,
    median: quantile(v, 0.5),
    p90: quantile(v, 0.9),
    p99: quantile(v, 0.99),
    max: v.length ? Math.max(...v) : NaN,
    mean,
  };
}

/** a / b, NaN when either is not a finite number or b is 0. */
export function ratio(a: number, b: number): number {
  return Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? a / b : NaN;
}

/** Fixed decimals, "n/a" for NaN. */
export function fmt(x: number, decimals = 1): string {
  return Number.isFinite(x) ? x.toFixed(decimals) : 'n/a';
}

/** A ratio as "0.42×". */
export function fmtRatio(x: number, decimals = 2): string {
  return Number.isFinite(x) ? `${x.toFixed(decimals)}×` : 'n/a';
}

/** Thousands separators for rates and counts. */
export function fmtInt(x: number): string {
  return Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : 'n/a';
}

/** High-resolution wall clock in milliseconds since the epoch (comparable with Docker's log timestamps). */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

/** Fisher–Yates shuffle (a copy). */
export function shuffled<T>(items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}
