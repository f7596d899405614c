// Build of the web UI into dist/, which the server embeds (server/src/http/web.rs). Every file gets a .gz and
// a .br beside it, made here, so the server only picks one per request. The output must be byte-for-byte
// reproducible: .ci/run rebuilds into a temp dir and diffs it against the committed dist/.
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';
import { defineConfig, type Plugin } from 'vite';

const COMPRESSIBLE = /\.(html|js|css|svg|json|txt)$/;

function precompress(): Plugin {
  let outDir = '';
  return {
    name: 'omnigent-precompress',
    apply: 'build',
    configResolved(config) {
      outDir = config.build.outDir;
    },
    closeBundle() {
      const walk = (dir: string) => {
        for (const name of readdirSync(dir).sort()) {
          const path = join(dir, name);
          if (statSync(path).isDirectory()) {
            walk(path);
          } else if (COMPRESSIBLE.test(name)) {
            const raw = readFileSync(path);
            writeFileSync(`${path}.gz`, gzipSync(raw, { level: 9 }));
            writeFileSync(
              `${path}.br`,
              brotliCompressSync(raw, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }),
            );
          }
        }
      };
      walk(outDir);
    },
  };
}

export default defineConfig({
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  plugins: [precompress()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    reportCompressedSize: false,
  },
  test: {
    include: ['src/**/*.test.ts'],
  },
} as import('vite').UserConfig);
