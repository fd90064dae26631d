// Bundle size of gathering-client beside peers: the client's entry point,
// bundled for the browser with everything it imports, minified by esbuild,
// then gzipped (level 9). Usage: node size.mjs (after npm ci here and the
// package's build).
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const entries = {
  "gathering-client": `export { createClient } from ${JSON.stringify(join(here, "../../dist/index.js"))};`,
  "partysocket (PartySocket)": `export { PartySocket } from "partysocket";`,
  "colyseus.js (Client)": `export { Client } from "colyseus.js";`,
};
const sizes = {};
for (const [name, contents] of Object.entries(entries)) {
  const out = await build({
    stdin: { contents, resolveDir: here, loader: "js" },
    bundle: true, minify: true, format: "esm", platform: "browser", write: false, logLevel: "error",
  });
  const code = out.outputFiles[0].contents;
  sizes[name] = { min: code.length, gz: gzipSync(code, { level: 9 }).length };
}
const ours = sizes["gathering-client"].gz;
for (const [name, { min, gz }] of Object.entries(sizes)) {
  console.log(`${name.padEnd(28)} minified ${(min / 1024).toFixed(1).padStart(6)} KiB   gzipped ${(gz / 1024).toFixed(1).padStart(5)} KiB   ${(gz / ours).toFixed(2)}x gathering-client`);
}
