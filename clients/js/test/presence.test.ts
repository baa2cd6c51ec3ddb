/** Connecting, heartbeats, and a watcher's presence map, against a real router. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { dashboard, mint, mobile, next, presenceOf, Router } from "./harness.js";

const router = await Router.start();

test("a mobile connects with its token in a header, heartbeats and gets HEARTBEAT_ACK", async () => {
  const alpha = await mobile(router, "hb-alpha", ["north"]);
  assert.equal(alpha.state, "open");
  const rtt = await alpha.heartbeat();
  assert.ok(rtt >= 0);
  const seen = await presenceOf(router, "hb-alpha");
  assert.equal(seen.status, "online");
  assert.equal(seen.deviceId, "hb-alpha-phone");
});

test("the subprotocol pair (the browsers' handshake) carries the token and device id", async () => {
  const alpha = await mobile(router, "sp-alpha", ["north"], { auth: "subprotocol" });
  await alpha.heartbeat();
  assert.equal((await presenceOf(router, "sp-alpha")).deviceId, "sp-alpha-phone");
  const watcher = await dashboard(router, "sp-watcher", ["north"], { auth: "subprotocol" });
  assert.equal(watcher.presence.get("sp-alpha")?.status, "online");
});

test("a dashboard folds its snapshot and the updates after it into the presence map", async () => {
  const alpha = await mobile(router, "map-alpha", ["east"]);
  const watcher = await dashboard(router, "map-watcher", ["east"]);
  assert.equal(watcher.presence.get("map-alpha")?.status, "online", "from the snapshot");
  assert.deepEqual(watcher.presence.get("map-alpha")?.groups, ["east"]);

  const online = next(watcher, "presence", (u) => u.userId === "map-bravo");
  const bravo = await mobile(router, "map-bravo", ["east"]);
  const [arrived, before] = await online;
  assert.equal(arrived.status, "online");
  assert.equal(arrived.cause, "connect");
  assert.equal(before, undefined);
  assert.equal(watcher.presence.get("map-bravo")?.deviceId, "map-bravo-phone");

  const offline = next(watcher, "presence", (u) => u.userId === "map-bravo" && u.status === "offline");
  await bravo.close();
  const [gone, wasOnline] = await offline;
  assert.equal(gone.cause, "disconnect");
  assert.equal(wasOnline?.status, "online");
  assert.ok(gone.version > wasOnline!.version, "versions grow");
  assert.equal(watcher.presence.get("map-bravo")?.status, "offline", "kept with its last seen");
  assert.ok(watcher.presence.get("map-bravo")!.lastSeen! > 0);
  assert.equal(watcher.presence.get("map-alpha")?.status, "online");
  assert.deepEqual(watcher.presence.countsByGroup().get("east"), { online: 1, away: 0, dnd: 0, offline: 1 });

  const away = next(watcher, "presence", (u) => u.userId === "map-alpha");
  await alpha.setStatus("dnd", "driving");
  const [dnd] = await away;
  assert.equal(dnd.status, "dnd");
  assert.equal(watcher.presence.get("map-alpha")?.statusText, "driving");

  const driving = next(watcher, "presence", (u) => u.userId === "map-alpha" && u.activity !== undefined);
  await alpha.setStatus("dnd", "driving", { type: "driving", name: "Route 9" });
  const [withActivity] = await driving;
  assert.equal(withActivity.activity?.type, "driving");
  assert.equal(watcher.presence.get("map-alpha")?.activity?.name, "Route 9");
  assert.ok(watcher.presence.get("map-alpha")!.activity!.startedAt > 0);
});

test("a REFRESH to another scope brings a second snapshot, which replaces the view", async () => {
  await mobile(router, "scope-north", ["scope-n"]);
  await mobile(router, "scope-south", ["scope-s"]);
  const watcher = await dashboard(router, "scope-watcher", ["scope-n"]);
  assert.equal(watcher.presence.get("scope-north")?.status, "online");
  assert.equal(watcher.presence.has("scope-south"), false);

  const second = next(watcher, "snapshot");
  await watcher.refresh(mint("scope-watcher", "dashboard", { groups: ["scope-s"] }));
  await second;
  assert.equal(watcher.presence.has("scope-north"), false, "not listed any more");
  assert.equal(watcher.presence.get("scope-south")?.status, "online");
});
