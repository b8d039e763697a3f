// Lint for src/, test/, bench/ and the scripts: `npm run lint` (part of `npm test`).
//
// typescript-eslint's recommended rules, plus the type-aware rules about promises. The full
// recommendedTypeChecked set costs about the same time here (the type information is most of the
// cost, about two tsc runs) but its other rules mostly ask for style changes across the tree; the
// promise rules find real bugs: an unhandled rejection ends a Node process.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

// The Node globals the plain-JavaScript files use (no extra package for a list of three).
const nodeGlobals = { process: 'readonly', console: 'readonly', URL: 'readonly' };

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'coverage/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      // `const { secret: _secret, ...rest } = x` is how this code drops a field.
      '@typescript-eslint/no-unused-vars': ['error', { ignoreRestSiblings: true }],
    },
  },
  {
    files: ['src/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
    },
  },
  { files: ['**/*.js', '**/*.mjs'], languageOptions: { globals: nodeGlobals } },
  // The web console's pages run in the browser.
  {
    files: ['src/server/console/assets/**/*.js'],
    languageOptions: {
      sourceType: 'module',
      globals: { window: 'readonly', document: 'readonly', location: 'readonly', navigator: 'readonly', fetch: 'readonly', EventSource: 'readonly', URLSearchParams: 'readonly', Node: 'readonly', confirm: 'readonly', console: 'readonly' },
    },
  },
);
