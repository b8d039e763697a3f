import type { IncomingMessage, ServerResponse } from 'node:http';
import type { z } from 'zod';
import { MeshlinkError } from '../errors.js';
import { storeErrorOf } from './store/unavailable.js';
import { zodErrorText } from '../util/zod-error.js';

/** JSON over HTTP for the gateway and the admin channel: capped bodies, zod validation, `{code, message}` errors. */

export const ENROLL_BODY_CAP = 64 * 1024;

/** Reads the body up to `cap` bytes; beyond that ML_ERR_BODY_TOO_LARGE (the caller answers 413 and closes). */
export function readBody(req: IncomingMessage, cap: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > cap) {
    return Promise.reject(new MeshlinkError('ML_ERR_BODY_TOO_LARGE', `request body exceeds ${cap} bytes`));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    req.on('data', (chunk: Buffer) => {
      if (done) return;
      size += chunk.length;
      if (size > cap) {
        done = true;
        req.pause();
        reject(new MeshlinkError('ML_ERR_BODY_TOO_LARGE', `request body exceeds ${cap} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (!done) {
        done = true;
        resolve(Buffer.concat(chunks, size));
      }
    });
    req.on('error', (err) => {
      if (!done) {
        done = true;
        reject(err);
      }
    });
  });
}

export async function readJson<T extends z.ZodType>(req: IncomingMessage, cap: number, schema: T): Promise<z.output<T>> {
  const body = await readBody(req, cap);
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch {
    throw new MeshlinkError('ML_ERR_BAD_REQUEST', 'request body is not valid JSON');
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    throw new MeshlinkError('ML_ERR_BAD_REQUEST', `invalid request: ${zodErrorText(parsed.error, { root: 'body' })}`);
  }
  return parsed.data;
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(payload)),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(payload);
}

/**
 * Answers an error as `{code, message}` with the status its code has in src/errors.ts; errors that are
 * not a MeshlinkError become a generic 500 (details go to the log only), except a store that did not
 * answer: 503 ML_ERR_STORE_UNAVAILABLE.
 */
export function sendError(res: ServerResponse, err: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const e = storeErrorOf(err) ?? new MeshlinkError('ML_ERR_SERVER_INTERNAL', 'internal server error');
  const headers: Record<string, string> = {};
  if (e.retryAfterSec !== undefined) headers['retry-after'] = String(e.retryAfterSec);
  // After an oversized body the rest of the stream is unread: do not keep the connection.
  if (e.code === 'ML_ERR_BODY_TOO_LARGE' || e.code === 'ML_ERR_SHUTTING_DOWN') headers.connection = 'close';
  sendJson(res, e.status, { code: e.code, message: e.message }, headers);
}
