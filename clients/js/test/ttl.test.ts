/**
 * A mobile heartbeats within the router's presence TTL without being told it: the
 * router's HEARTBEAT_ACK says it (`presenceTtlMs`), so a router with a short TTL does not
 * see the session lapse between two heartbeats.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { MessageType } from "../dist/index.js";
import { bounded, dashboard, mobile, presenceOf, Router } from "./harness.js";

test("heartbeats follow the TTL the router states, and a short one never lapses", async () => {
  const router = await Router.start(["--presence-ttl", "2"]);
  const watcher = await dashboard(router, "ttl-watcher");
  const seen: string[] = [];
  watcher.on("presence", (update) => update.userId === "ttl-phone" && seen.push(update.status));

  const phone = await mobile(router, "ttl-phone", ["crew"]);
  const acks: Record<string, unknown>[] = [];
  // Four HEARTBEAT_ACKs: the first (sent at once) states the TTL; the next three come at
  // half of it, spanning more than one TTL.
  await bounded(
    new Promise<void>((resolve) =>
      phone.on("frame", (frame) => {
        if (frame.messageType !== MessageType.HEARTBEAT_ACK) return;
        acks.push(frame.payload as Record<string, unknown>);
        if (acks.length === 4) resolve();
      }),
    ),
    "four heartbeats within the default 30 s interval's first period",
  );
  assert.equal(acks[0]!.presenceTtlMs, 2000);
  assert.equal((await presenceOf(router, "ttl-phone")).status, "online");
  assert.deepEqual(seen.filter((status) => status === "offline"), [], "it never lapsed");
});
