/** Choosing groups: subscribe in full or by counts only, unsubscribe, against a real router. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { RouterError } from "../dist/index.js";
import { dashboard, mobile, next, Router } from "./harness.js";

const router = await Router.start();

test("a dashboard subscribes within its scope, by counts or in full, and unsubscribes", async () => {
  const alpha = await mobile(router, "sub-alpha", ["sub-g1"]);
  const bravo = await mobile(router, "sub-bravo", ["sub-g2"]);
  const watcher = await dashboard(router, "sub-watcher", ["sub-g1", "sub-g2"]);
  assert.equal(watcher.presence.get("sub-bravo")?.status, "online", "everything until it chooses");

  await assert.rejects(watcher.subscribe("sub-g3"), (error: RouterError) => error.code === "not_in_scope");

  const part = next(watcher, "groupSnapshot");
  await watcher.subscribe("sub-g1", { intervalMs: 0 });
  const [group, counts] = await part;
  assert.equal(group, "sub-g1");
  assert.deepEqual(counts, { online: 1, away: 0, dnd: 0, offline: 0 });
  assert.equal(watcher.presence.get("sub-alpha")?.status, "online");
  assert.equal(watcher.presence.has("sub-bravo"), false, "sub-g2 is not watched: dropped");

  const first = next(watcher, "groupCounts");
  await watcher.countsOnly("sub-g2", 100);
  assert.deepEqual((await first)[1], { online: 1, away: 0, dnd: 0, offline: 0 });
  const away = next(watcher, "groupCounts", (_, c) => c.away === 1);
  await bravo.setStatus("away");
  await away;
  assert.deepEqual(watcher.groupCounts.get("sub-g2"), { online: 0, away: 1, dnd: 0, offline: 0 });

  const dnd = next(watcher, "presence", (u) => u.userId === "sub-alpha");
  await alpha.setStatus("dnd");
  assert.equal((await dnd)[0].status, "dnd");

  await watcher.unsubscribe("sub-g1");
  assert.equal(watcher.presence.has("sub-alpha"), false, "no longer watched");
  let shown = false;
  watcher.on("presence", (u) => {
    if (u.userId === "sub-alpha") shown = true;
  });
  await alpha.setStatus("online");
  const back = next(watcher, "groupCounts", (_, c) => c.online === 1);
  await bravo.setStatus("online");
  await back;
  assert.equal(shown, false, "sub-g1's changes stopped before sub-g2's counts came");
  await assert.rejects(watcher.unsubscribe("sub-g1"), (error: RouterError) => error.code === "not_subscribed");
});
