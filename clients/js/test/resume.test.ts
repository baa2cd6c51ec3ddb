/** Resuming: a dashboard that reconnects is sent only what it missed, from its last position. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { dashboard, mobile, next, Router, SilentLink, until } from "./harness.js";

test("a dashboard that lost its connection resumes from its position with only what it missed", async () => {
  const router = await Router.start();
  const link = await SilentLink.start(router);
  const alpha = await mobile(router, "resume-alpha", ["north"]);
  const watcher = await dashboard(router, "resume-watcher", ["north"], {
    url: link.url,
    heartbeatIntervalMs: 200,
    ackTimeoutMs: 300,
  });
  assert.equal(watcher.presence.get("resume-alpha")?.status, "online");
  const point = watcher.presence.resumePoint();
  assert.ok(point, "the snapshot gave the view's position");

  let snapshots = 0;
  watcher.on("snapshot", () => snapshots++);
  const drop = next(watcher, "disconnected");
  const resumed = next(watcher, "resumed");
  link.blackhole();
  await drop;
  // Missed while away: beta comes online, alpha leaves.
  const beta = await mobile(router, "resume-beta", ["north"]);
  await beta.heartbeat();
  await alpha.close();
  const [info] = await resumed;
  assert.equal(info.changes, 2, "alpha and beta, nothing else");
  assert.notEqual(info.position, point.position);
  assert.equal(snapshots, 0, "no snapshot");
  assert.equal(watcher.presence.get("resume-alpha")?.status, "offline");
  assert.equal(watcher.presence.get("resume-beta")?.status, "online");

  // Live again from there, its position moving with each update.
  const gamma = await mobile(router, "resume-gamma", ["north"]);
  await until(watcher, () => watcher.presence.get("resume-gamma")?.status === "online", "gamma online");
  assert.notEqual(watcher.presence.resumePoint()?.position, info.position);
  await gamma.close();
});

test("with resume off, a reconnect gets a snapshot", async () => {
  const router = await Router.start();
  const link = await SilentLink.start(router);
  const watcher = await dashboard(router, "noresume-watcher", undefined, {
    url: link.url,
    heartbeatIntervalMs: 200,
    ackTimeoutMs: 300,
    resume: false,
  });
  const snapshot = next(watcher, "snapshot");
  link.blackhole();
  await snapshot;
});
