/** Types for parse-prometheus-text-format 1.x (the package ships none). Output shape follows prom2json. */
declare module 'parse-prometheus-text-format' {
  namespace parsePrometheusTextFormat {
    interface Sample {
      value: string;
      labels?: Record<string, string>;
      timestamp_ms?: string;
    }
    interface HistogramSample {
      /** Upper bound (`le`) → cumulative count. */
      buckets: Record<string, string>;
      count: string;
      sum: string;
      labels?: Record<string, string>;
    }
    interface SummarySample {
      quantiles: Record<string, string>;
      count: string;
      sum: string;
      labels?: Record<string, string>;
    }
    interface MetricFamily {
      name: string;
      help: string;
      type: 'COUNTER' | 'GAUGE' | 'HISTOGRAM' | 'SUMMARY' | 'UNTYPED';
      metrics: (Sample | HistogramSample | SummarySample)[];
    }
  }
  function parsePrometheusTextFormat(text: string): parsePrometheusTextFormat.MetricFamily[];
  export = parsePrometheusTextFormat;
}
