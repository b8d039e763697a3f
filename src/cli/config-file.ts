import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { Command, Option } from 'commander';
import { MeshlinkError } from '../errors.js';

/**
 * A command's config file: its options as one JSON object, so that a service needs no edit of its
 * ExecStart (`agent run`: docs/AGENT.md, "Config file"; `server start`: docs/SERVER.md, "Config
 * file"). Keys are the options' names in camelCase (`allowExec`, `dataDir`); values are what the
 * command line would give: `true` for a switch, a string (or a number) for an option with a value, a
 * list of strings for a repeatable one. A flag on the command line wins over the file. The values
 * then go through the very parsers the flags go through, so a file is held to the same schema as the
 * flags.
 *
 * A relative path in the file (for the options the command names as paths) is resolved against the
 * file's directory, not the working directory: a service's working directory is `/` or whatever the
 * unit says, and the file's meaning must not depend on where the command was started.
 *
 * Which file:  --config FILE (must exist), else the command's environment variable (must exist),
 * else its default path if that exists.
 */

const MAX_CONFIG_BYTES = 1024 * 1024;

/** commander's collector for repeatable flags; an option parsed by it takes a list in a config file. */
export const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

export interface ConfigFileSpec {
  /** The environment variable naming the file, e.g. MESHLINK_AGENT_CONFIG. */
  readonly envVar: string;
  /** Read when it exists and neither the flag nor the variable names a file. */
  readonly defaultPath: string;
  /** Options (camelCase) whose values are paths: relative ones are resolved against the file's directory. */
  readonly pathOptions: ReadonlySet<string>;
}

/** Which file to read: an explicit one must exist; the default is optional. */
export function configFilePath(spec: ConfigFileSpec, flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string | null {
  const explicit = flag ?? env[spec.envVar];
  if (explicit !== undefined && explicit !== '') {
    if (!existsSync(explicit)) throw new MeshlinkError('ML_ERR_CONFIG', `config file ${explicit} does not exist`);
    return explicit;
  }
  return existsSync(spec.defaultPath) ? spec.defaultPath : null;
}

/** Fills every option of `cmd` that the command line did not set from the file at `path`. */
export function applyConfigFile(cmd: Command, path: string, spec: ConfigFileSpec): void {
  const size = statSync(path).size;
  if (size > MAX_CONFIG_BYTES) throw new MeshlinkError('ML_ERR_CONFIG', `config file ${path} is larger than ${MAX_CONFIG_BYTES} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new MeshlinkError('ML_ERR_CONFIG', `config file ${path} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new MeshlinkError('ML_ERR_CONFIG', `config file ${path} must hold one JSON object`);

  const baseDir = dirname(resolve(path));
  const options = new Map(cmd.options.filter((o) => o.attributeName() !== 'config').map((o) => [o.attributeName(), o]));
  for (const [key, raw] of Object.entries(value)) {
    const option = options.get(key);
    if (!option) throw new MeshlinkError('ML_ERR_CONFIG', `config file ${path}: unknown option "${key}" (known: ${[...options.keys()].sort().join(', ')})`);
    const relativeTo = spec.pathOptions.has(key) ? baseDir : null;
    const converted = asOptionValue(option, raw, `config file ${path}: ${key}`, relativeTo);
    // The command line wins; a value from the file counts as if it had been typed.
    if (cmd.getOptionValueSource(key) !== 'cli') cmd.setOptionValueWithSource(key, converted, 'config');
  }
}

/**
 * What commander itself would hold for this option: a boolean for a switch; for an option with a
 * value, the string run through the option's own parser (an integer for --max-actions, a list for a
 * repeatable one, whose parser collects) and checked against its choices, as on the command line.
 * A path option's relative value is made absolute against `relativeTo` first.
 */
function asOptionValue(option: Option, raw: unknown, where: string, relativeTo: string | null): unknown {
  const takesValue = option.required || option.optional;
  if (!takesValue) {
    if (typeof raw !== 'boolean') throw new MeshlinkError('ML_ERR_CONFIG', `${where} must be true or false`);
    return raw;
  }
  const repeatable = option.parseArg === collect;
  const scalar = (v: unknown): string => {
    let text: string;
    if (typeof v === 'string') text = v;
    else if (typeof v === 'number' && Number.isFinite(v)) text = String(v);
    else throw new MeshlinkError('ML_ERR_CONFIG', `${where} must be a string${repeatable ? ' or a list of strings' : ''}`);
    return relativeTo !== null && text !== '' && !isAbsolute(text) ? resolve(relativeTo, text) : text;
  };
  const parse = (text: string, previous: unknown): unknown => {
    if (option.argChoices && !option.argChoices.includes(text)) throw new MeshlinkError('ML_ERR_CONFIG', `${where} must be one of ${option.argChoices.join(', ')}`);
    if (!option.parseArg) return text;
    try {
      return option.parseArg(text, previous);
    } catch (err) {
      throw new MeshlinkError('ML_ERR_CONFIG', `${where}: ${(err as Error).message}`);
    }
  };
  if (repeatable) return (Array.isArray(raw) ? raw : [raw]).map(scalar).reduce<unknown>((list, text) => parse(text, list), undefined);
  if (Array.isArray(raw)) throw new MeshlinkError('ML_ERR_CONFIG', `${where} takes one value, not a list`);
  return parse(scalar(raw), undefined);
}
