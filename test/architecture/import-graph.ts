import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, posix, relative, sep } from 'node:path';
import ts from 'typescript';

/**
 * The import graph of a source tree, read with the TypeScript parser (no type-checking, so it takes
 * well under a second). Every way a module can name another counts: static imports and re-exports,
 * `import x = require()`, dynamic `import()`, and `import('…')` in type positions.
 */

/** One import of one file. `to` is a root-relative path for a local module, else the package name. */
export interface ImportEdge {
  from: string;
  to: string;
  /** Written as `import type`/`export type`, or every named binding is `type`: erased at build time. */
  typeOnly: boolean;
  /** A relative specifier that names no file (kept so a typo cannot hide an import from the rules). */
  unresolved?: string;
}

/** Root-relative paths with forward slashes, so rule patterns and messages read the same on every OS. */
function toPosix(path: string): string {
  return path.split(sep).join(posix.sep);
}

export function listSourceFiles(root: string, dir: string): string[] {
  const out: string[] = [];
  const walk = (abs: string): void => {
    for (const name of readdirSync(abs).sort()) {
      const path = join(abs, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(toPosix(relative(root, path)));
    }
  };
  if (existsSync(join(root, dir))) walk(join(root, dir));
  return out;
}

/**
 * The package a bare specifier belongs to: `node:fs/promises` -> `node:fs`, `@msgpack/msgpack/x` ->
 * `@msgpack/msgpack`, `ws` -> `ws`.
 */
export function packageOf(specifier: string): string {
  if (specifier.startsWith('node:')) return specifier.split('/')[0]!;
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
}

/** NodeNext resolution as this project writes it: `./x.js` names `./x.ts`; a directory means its index. */
function resolveLocal(root: string, fromFile: string, specifier: string): string | undefined {
  const base = posix.join(posix.dirname(fromFile), specifier);
  const candidates = [base.replace(/\.js$/, '.ts'), base.replace(/\.mjs$/, '.mts'), base, `${base}.ts`, `${base}/index.ts`];
  for (const candidate of candidates) {
    const abs = join(root, candidate);
    if (existsSync(abs) && statSync(abs).isFile()) return candidate;
  }
  return undefined;
}

interface RawImport {
  specifier: string;
  typeOnly: boolean;
}

function importsOf(fileName: string, text: string): RawImport[] {
  const source = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, false, ts.ScriptKind.TS);
  const found: RawImport[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier)) {
      const clause = node.importClause;
      const named = clause?.namedBindings && ts.isNamedImports(clause.namedBindings) ? clause.namedBindings.elements : undefined;
      // `import { type A, type B } from` is erased like `import type`; `import './x.js'` is not.
      const allNamedAreTypes = clause !== undefined && clause.name === undefined && named !== undefined && named.length > 0 && named.every((e) => e.isTypeOnly);
      found.push({ specifier: node.moduleSpecifier.text, typeOnly: clause?.isTypeOnly === true || allNamedAreTypes });
    } else if (ts.isExportDeclaration(node) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      const named = node.exportClause && ts.isNamedExports(node.exportClause) ? node.exportClause.elements : undefined;
      const allNamedAreTypes = named !== undefined && named.length > 0 && named.every((e) => e.isTypeOnly);
      found.push({ specifier: node.moduleSpecifier.text, typeOnly: node.isTypeOnly || allNamedAreTypes });
    } else if (
      ts.isImportEqualsDeclaration(node) &&
      ts.isExternalModuleReference(node.moduleReference) &&
      ts.isStringLiteral(node.moduleReference.expression)
    ) {
      found.push({ specifier: node.moduleReference.expression.text, typeOnly: node.isTypeOnly });
    } else if (
      ts.isCallExpression(node) &&
      node.expression.kind === ts.SyntaxKind.ImportKeyword &&
      node.arguments[0] !== undefined &&
      ts.isStringLiteralLike(node.arguments[0])
    ) {
      found.push({ specifier: node.arguments[0].text, typeOnly: false });
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      found.push({ specifier: node.argument.literal.text, typeOnly: true });
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

/** Every import of every `.ts` file under `root/dir`, in file order. */
export function buildImportGraph(root: string, dir = 'src'): ImportEdge[] {
  const edges: ImportEdge[] = [];
  for (const file of listSourceFiles(root, dir)) {
    for (const { specifier, typeOnly } of importsOf(file, readFileSync(join(root, file), 'utf8'))) {
      if (specifier.startsWith('.') || specifier.startsWith('/')) {
        const resolved = resolveLocal(root, file, specifier);
        if (resolved) edges.push({ from: file, to: resolved, typeOnly });
        else edges.push({ from: file, to: posix.join(posix.dirname(file), specifier), typeOnly, unresolved: specifier });
      } else {
        edges.push({ from: file, to: packageOf(specifier), typeOnly });
      }
    }
  }
  return edges;
}

/** The folder names directly under `root/dir` (used to derive the feature folders). */
export function subfolders(root: string, dir: string): string[] {
  const abs = join(root, dir);
  if (!existsSync(abs)) return [];
  return readdirSync(abs)
    .filter((name) => statSync(join(abs, name)).isDirectory())
    .sort();
}
