/** The README's terminal dashboard (examples/dashboard.mjs) runs and shows who is online. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { createInterface } from "node:readline";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

import { bounded, dashboard, mint, mobile, Router, until } from "./harness.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const EXAMPLE = path.resolve(HERE, "../examples/dashboard.mjs");

test("the README shows examples/dashboard.mjs as it is", async () => {
  const example = await readFile(EXAMPLE, "utf8");
  const code = example.slice(example.indexOf("import "));
  assert.ok((await readFile(path.resolve(HERE, "../../../README.md"), "utf8")).includes(code));
});

/** Runs examples/dashboard.mjs against `router`; `seen(pattern)` waits for a line matching it. */
function runExample(router: Router) {
  const dashboard = spawn(process.execPath, [EXAMPLE], {
    env: { ...process.env, ROUTER_URL: router.url, TOKEN: mint("ex-dispatcher", "dashboard") },
    stdio: ["ignore", "pipe", "inherit"],
  });
  after(() => dashboard.kill());
  const lines = createInterface({ input: dashboard.stdout! });
  return (pattern: RegExp) =>
    bounded(
      new Promise<void>((resolve) => lines.on("line", (line) => pattern.test(line) && resolve())),
      `a line matching ${pattern}`,
    );
}

test("examples/dashboard.mjs prints the snapshot and live updates", async () => {
  const router = await Router.start();
  await mobile(router, "ex-alpha", ["north"]);
  const seen = runExample(router);

  const fromSnapshot = seen(/^● ex-alpha\s+online/);
  const live = seen(/^● ex-bravo\s+online/);
  await fromSnapshot;
  await mobile(router, "ex-bravo", ["north"]);
  await live;
});

test("examples/dashboard.mjs shows who types from its snapshot and counts away and dnd apart", async () => {
  const router = await Router.start();
  const typist = await mobile(router, "ex-typist", ["north"]);
  const away = await mobile(router, "ex-away", ["north"]);
  const watcher = await dashboard(router, "ex-early");
  await away.setStatus("away");
  await typist.setIndicator("north", "typing");
  await until(watcher, () => watcher.indicators.size === 1 && watcher.presence.get("ex-away")?.status === "away", "the view");
  const seen = runExample(router);
  await Promise.all([
    seen(/^— 1 online, 1 away, 0 dnd —$/),
    seen(/^ {2}north: 1 online, 1 away, 0 dnd$/),
    seen(/^ {2}ex-typist is typing in north$/),
  ]);
});
