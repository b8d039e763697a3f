import { request } from 'node:http';
import { MeshlinkError } from '../errors.js';
import { localActor } from './actor.js';
import { parseAnswer, type AdminRoute, type RouteInput, type RouteOutput } from './route.js';
import { zodErrorText } from '../util/zod-error.js';

/**
 * The one client of the operator API: JSON over HTTP on the admin unix socket. It checks the request
 * against the route's schema before sending (a usage error never reaches the server), caps the answer,
 * checks it against the route's answer schema, and rebuilds a server error from its code (never
 * casting it: an ops or mesh code, or one from a newer server, keeps its code and exit class). Every
 * request names the operator (`x-meshlink-actor`) for the audit log.
 */

/** Answers above this are refused (the largest, a node list of 10,000 nodes, is a few MiB). */
export const MAX_ANSWER_BYTES = 16 * 1024 * 1024;
const DEFAULT_TIMEOUT_MS = 10_000;

export interface CallOptions {
  timeoutMs?: number;
  /** The raw request body of an `upload` route. */
  body?: Buffer;
}

/** What the CLI runs operator commands on: the running server's admin socket, or the store when none runs. */
export interface Operator {
  /** True when a running server answers (its agents hear of the change at once). */
  readonly live: boolean;
  call<R extends AdminRoute>(route: R, input: RouteInput<R>, options?: CallOptions): Promise<RouteOutput<R>>;
  close(): void | Promise<void>;
}

export class AdminClient implements Operator {
  readonly live = true;
  readonly socketPath: string;
  readonly #actor: string;

  constructor(socketPath: string, options: { actor?: string } = {}) {
    this.socketPath = socketPath;
    this.#actor = options.actor ?? localActor();
  }

  async call<R extends AdminRoute>(route: R, input: RouteInput<R>, options: CallOptions = {}): Promise<RouteOutput<R>> {
    const checked = route.input.safeParse(input);
    if (!checked.success) throw new MeshlinkError('ML_ERR_USAGE', `${route.name}: ${zodErrorText(checked.error)}`);
    let path = route.path;
    let body: Buffer | undefined;
    let contentType: string | undefined;
    if (route.method === 'GET' || route.upload !== undefined) {
      // The caller's input, not the parsed one: defaults are the server's to fill.
      const query = new URLSearchParams();
      for (const [k, v] of Object.entries(input as Record<string, unknown>)) if (v !== undefined && v !== null) query.set(k, String(v));
      if (query.size > 0) path += `?${query}`;
      if (route.upload !== undefined) {
        body = options.body ?? Buffer.alloc(0);
        contentType = 'application/octet-stream';
      }
    } else {
      body = Buffer.from(JSON.stringify(input ?? {}));
      contentType = 'application/json';
    }
    const answer = await this.request(route.method, path, body, contentType, options.timeoutMs);
    return parseAnswer(route, answer);
  }

  /** Whether a server answers on the socket (GET /v1/health); false when none listens there. */
  async reachable(timeoutMs = 2_000): Promise<boolean> {
    try {
      await this.request('GET', '/v1/health', undefined, undefined, timeoutMs);
      return true;
    } catch (err) {
      if (err instanceof MeshlinkError && err.code === 'ML_ERR_SERVER_NOT_RUNNING') return false;
      throw err;
    }
  }

  close(): void {}

  /**
   * One request by method and path (tests and benchmarks reach routes of their own with it). Resolves
   * with the parsed JSON of a 200 answer; rejects with the server's error rebuilt from its code,
   * ML_ERR_SERVER_NOT_RUNNING when nothing listens on the socket.
   */
  request(method: string, path: string, body?: Buffer, contentType = 'application/json', timeoutMs = DEFAULT_TIMEOUT_MS): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const req = request(
        {
          socketPath: this.socketPath,
          method,
          path,
          headers: { 'x-meshlink-actor': this.#actor, ...(body ? { 'content-type': contentType, 'content-length': body.length } : {}) },
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size > MAX_ANSWER_BYTES) req.destroy(new MeshlinkError('ML_ERR_INTERNAL', `the admin answer exceeds ${MAX_ANSWER_BYTES} bytes`));
            else chunks.push(c);
          });
          res.on('end', () => {
            let parsed: unknown;
            try {
              parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            } catch {
              reject(new MeshlinkError('ML_ERR_INTERNAL', `the admin socket answered ${res.statusCode} with a non-JSON body`));
              return;
            }
            if (res.statusCode === 200) resolve(parsed);
            else {
              const e = (parsed ?? {}) as { code?: unknown; message?: unknown };
              reject(MeshlinkError.fromWire(e.code, e.message, { fallback: `admin request failed (${res.statusCode})` }));
            }
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new MeshlinkError('ML_ERR_OPS_TIMEOUT', `admin request ${method} ${path} timed out after ${timeoutMs} ms`)));
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') reject(new MeshlinkError('ML_ERR_SERVER_NOT_RUNNING', `no server answers on ${this.socketPath}`));
        else reject(err);
      });
      req.end(body);
    });
  }
}
