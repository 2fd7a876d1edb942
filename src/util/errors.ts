/**
 * An error whose message is meant for the user at the `docker` command line.
 * `status` is the HTTP status the protocol layer answers with (400: the request is wrong,
 * 404: it names something unknown, 409: conflicts with existing state, 503: store down).
 */
export class PluginError extends Error {
  constructor(
    message: string,
    readonly status: number = 400,
  ) {
    super(message);
    this.name = 'PluginError';
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
