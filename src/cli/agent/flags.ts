import type { z } from 'zod';
import { MeshlinkError } from '../../errors.js';
import { zodErrorText } from '../../util/zod-error.js';

/**
 * Parses one feature's `agent run` flags with its schema and freezes the result. A bad value is a
 * configuration error (exit 2) naming the feature and the flag, e.g.
 * `invalid mesh option wgPort: Too big: expected number to be <=65535`.
 */
export function parseFeatureFlags<S extends z.ZodType>(feature: string, schema: S, input: unknown): Readonly<z.output<S>> {
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    throw new MeshlinkError('ML_ERR_CONFIG', `invalid ${feature} option ${zodErrorText(parsed.error)}`);
  }
  return Object.freeze(parsed.data);
}

/** commander's collector for repeatable flags (the config file takes a list for an option it parses). */
export { collect } from '../config-file.js';
