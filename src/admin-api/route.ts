import type { z } from 'zod';
import { MeshlinkError } from '../errors.js';
import { zodErrorText } from '../util/zod-error.js';

/**
 * One operator endpoint, described once and used by both ends: the admin server (src/server/admin.ts)
 * parses the request with `input` and serves the handler a feature registered for it; the client
 * (client.ts) checks its own request against `input` before sending and the answer against `output`.
 * The offline operator (src/server/operator/offline.ts) runs the same handler on the store when no
 * server runs, for the routes marked `offline`.
 *
 * Input travels as the JSON body of a POST, or as the query string of a GET (every field a string on
 * the wire: GET schemas coerce). A route with `upload` takes its input from the query string and the
 * request body as raw bytes (an agent bundle), at most `upload` bytes.
 */
export interface AdminRoute<I extends z.ZodType = z.ZodType, O extends z.ZodType = z.ZodType> {
  /** A stable name, e.g. `nodes.remove`: the audit log's operation and the key of the handler table. */
  readonly name: string;
  readonly method: 'GET' | 'POST';
  /** `/v1/...`, matched exactly (without the query string). */
  readonly path: string;
  readonly input: I;
  readonly output: O;
  /** Whether the operator may run it on the store with no server running (the change then takes effect at the next start). */
  readonly offline: boolean;
  /** Largest JSON request body, in bytes (default 64 KiB). */
  readonly maxBody?: number;
  /** Raw request body of at most this many bytes (input then comes from the query string). */
  readonly upload?: number;
}

export type RouteInput<R extends AdminRoute> = z.input<R['input']>;
export type RouteParsedInput<R extends AdminRoute> = z.output<R['input']>;
/** What a handler returns (the schema's input side: it may still hold defaults to fill). */
export type RouteResult<R extends AdminRoute> = z.input<R['output']>;
export type RouteOutput<R extends AdminRoute> = z.output<R['output']>;

export const DEFAULT_MAX_BODY = 64 * 1024;

/** Declares a route (an identity function that keeps the schema types). */
export function defineRoute<I extends z.ZodType, O extends z.ZodType>(route: AdminRoute<I, O>): AdminRoute<I, O> {
  if (!/^\/v1\/[a-z0-9/-]+$/.test(route.path)) throw new Error(`admin route path must look like /v1/...: ${route.path}`);
  return Object.freeze(route);
}

/** `METHOD /path`: how the admin server finds a route. */
export function routeKey(route: Pick<AdminRoute, 'method' | 'path'>): string {
  return `${route.method} ${route.path}`;
}

/** Checks an answer against the route's answer schema, as every operator does (the client and the offline operator). */
export function parseAnswer<R extends AdminRoute>(route: R, answer: unknown): RouteOutput<R> {
  const parsed = route.output.safeParse(answer);
  if (!parsed.success) throw new MeshlinkError('ML_ERR_INTERNAL', `the answer to ${routeKey(route)} does not match the operator API: ${zodErrorText(parsed.error)}`);
  return parsed.data as RouteOutput<R>;
}
