// README's client example, type-checked against the package and run
// against a real server: the code a reader copies works.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Server, root } from "./support.mjs";

test("README's example compiles and runs", { timeout: 60_000 }, async () => {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const block = readme.match(/```ts\n(import \{ createClient[\s\S]*?)```/);
  assert.ok(block, "README has the client example");
  // Inside the package, so that "gathering-client" resolves to it by name.
  const dir = join(root, "host-wasm/client/test/readme-build");
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir);
  writeFileSync(join(dir, "example.ts"), block[1]);
  writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
    compilerOptions: {
      target: "ES2022", module: "ES2022", moduleResolution: "bundler", lib: ["ES2022", "DOM"],
      strict: true, outDir: ".", rootDir: ".", skipLibCheck: false,
    },
    files: ["example.ts"],
  }));
  const tsc = join(root, "host-wasm/client/node_modules/typescript/bin/tsc");
  execFileSync(process.execPath, [tsc, "-p", dir], { stdio: "inherit" });
  const server = await new Server().start();
  try {
    const source = readFileSync(join(dir, "example.js"), "utf8").replace("ws://127.0.0.1:8080", server.url);
    writeFileSync(join(dir, "example.mjs"), source);
    const run = () => execFileSync(process.execPath, [join(dir, "example.mjs")]).toString();
    const first = run();
    assert.match(first, /registered as op 1/);
    assert.match(first, /status: open/);
    assert.match(run(), /refused \(duplicate_player\)/);
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
