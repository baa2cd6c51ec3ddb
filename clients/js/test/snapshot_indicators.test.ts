/**
 * A watcher driven by events alone (no look at the snapshot's own lists) sees who is
 * typing and talking when it connects: the snapshot's indicators come as starts.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { group, type IndicatorEvent } from "../dist/index.js";
import { bounded, client, dashboard, mint, mobile, next, Router, until } from "./harness.js";

test("a snapshot's live indicators reach indicator listeners as starts", async () => {
  const router = await Router.start();
  const typist = await mobile(router, "si-typist", ["crew"]);
  const talker = await mobile(router, "si-talker", ["crew"]);
  // A watcher already connected sees both start: the router's view holds them.
  const early = await dashboard(router, "si-early");
  await typist.setIndicator("crew", "typing");
  await talker.startTalk(group("crew"));
  await until(early, () => early.indicators.size === 2, "both indicators on the early watcher");

  const watcher = client({ url: router.url, token: mint("si-watcher", "dashboard") });
  const seen: IndicatorEvent[] = [];
  watcher.on("indicator", (event) => seen.push(event));
  const snapshot = next(watcher, "snapshot");
  await bounded(watcher.connect(), "the watcher to connect");
  const [info] = await snapshot;
  assert.equal(info.indicators.size, 2, "the snapshot lists both");
  assert.deepEqual(
    seen.map((e) => [e.userId, e.type, e.isActive]).sort(),
    [
      ["si-talker", "talking", true],
      ["si-typist", "typing", true],
    ],
  );
});
