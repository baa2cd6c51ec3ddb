/** Reconnecting: a router killed and restarted, a router stopping (1012), dead connections. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { type DisconnectInfo, type PresenceClient } from "../dist/index.js";
import { dashboard, FAST, groupPresence, mobile, next, Router, SilentLink, until } from "./harness.js";

/** The `disconnected` reports of `client` from now on. */
function record(client: PresenceClient): DisconnectInfo[] {
  const seen: DisconnectInfo[] = [];
  client.on("disconnected", (info) => seen.push(info));
  return seen;
}

test("after the router is killed, clients retry with capped, jittered backoff and resync once it is back", async () => {
  let router = await Router.start();
  const alpha = await mobile(router, "rs-alpha", ["north"]);
  const watcher = await dashboard(router, "rs-watcher", ["north"]);
  assert.equal(watcher.presence.get("rs-alpha")?.status, "online");
  const typing = next(watcher, "indicator", (i) => i.userId === "rs-alpha" && i.isActive);
  await alpha.setIndicator("north", "typing");
  await typing;
  const drops = record(watcher);
  const dropped = next(watcher, "indicator", (i) => i.userId === "rs-alpha" && !i.isActive);

  // Three failed attempts while the router is down: the first drop and two refused retries.
  const thirdDrop = next(watcher, "disconnected", () => drops.length >= 3);
  await router.kill("SIGKILL");
  await thirdDrop;
  assert.equal(drops[0]!.code, 1006);
  const [end] = await dropped;
  assert.equal(end.expired, true, "its end cannot come any more: the client drops it");
  assert.equal(watcher.indicators.size, 0);
  drops.forEach((drop, n) => {
    const cap = Math.min(FAST.reconnect.maxDelayMs, FAST.reconnect.initialDelayMs * 2 ** n);
    assert.ok(drop.reconnectInMs !== null && drop.reconnectInMs <= cap, `attempt ${n}: ${drop.reconnectInMs} ms ≤ ${cap}`);
  });
  assert.equal(watcher.state, "reconnecting");

  const resynced = next(watcher, "snapshot");
  const back = next(alpha, "connected");
  router = await router.restart();
  await back;
  await resynced;
  // The mobile is in the new snapshot or comes after it, whichever reconnected first.
  await until(watcher, () => watcher.presence.get("rs-alpha")?.status === "online", "rs-alpha online again");
  await alpha.heartbeat();
  // The typing indicator it holds was sent again on the new connection.
  assert.deepEqual((await groupPresence(router, "north")).typingUsers, ["rs-alpha"]);
});

test("a router stopping (1012) is left at once and rejoined when it is back", async () => {
  let router = await Router.start();
  const alpha = await mobile(router, "stop-alpha", ["north"]);
  const drop = next(alpha, "disconnected");
  await router.kill("SIGTERM");
  const [info] = await drop;
  assert.equal(info.code, 1012);
  assert.ok(info.reconnectInMs !== null && info.reconnectInMs <= FAST.reconnect.initialDelayMs, "prompt");

  const back = next(alpha, "connected");
  router = await router.restart();
  await back;
  await alpha.heartbeat();
});

/**
 * A router behind a link that can go silent, and client options that reach it with fast
 * liveness checks: heartbeats (or pings) every 200 ms, dead after 300 ms without an answer.
 */
async function silentLink() {
  const router = await Router.start();
  const link = await SilentLink.start(router);
  return { router, link, options: { url: link.url, heartbeatIntervalMs: 200, ackTimeoutMs: 300 } };
}

test("a mobile whose HEARTBEAT_ACKs stop coming drops the dead connection and reconnects", async () => {
  const { router, link, options } = await silentLink();
  const alpha = await mobile(router, "zombie-alpha", ["north"], options);
  const drop = next(alpha, "disconnected");
  const back = next(alpha, "connected");
  link.blackhole();
  const [info] = await drop;
  assert.match(info.reason, /no HEARTBEAT_ACK within 300 ms/);
  assert.notEqual(info.reconnectInMs, null);
  await back;
  await alpha.heartbeat();
});

test("a dashboard in Node whose pongs stop coming drops the dead connection and resumes", async () => {
  const { router, link, options } = await silentLink();
  const watcher = await dashboard(router, "zombie-watcher", undefined, options);
  const drop = next(watcher, "disconnected");
  const resumed = next(watcher, "resumed");
  link.blackhole();
  const [info] = await drop;
  assert.match(info.reason, /no pong within 300 ms/);
  await resumed;
});

test("4029: a client closed for flooding waits out the penalty, then reconnects", async () => {
  const router = await Router.start(["--frame-rate", "1", "--frame-burst", "2", "--abuse-penalty-ms", "300"]);
  const alpha = await mobile(router, "flood-alpha", ["north"], { penaltyMs: 300 });
  const limited = next(alpha, "disconnected");
  const back = next(alpha, "connected");
  for (let i = 0; i < 20; i++) alpha.activity().catch(() => {});
  const [info] = await limited;
  assert.equal(info.code, 4029);
  assert.ok(info.reconnectInMs !== null && info.reconnectInMs >= 300, `waits the penalty: ${info.reconnectInMs} ms`);
  await back;
  assert.equal(alpha.state, "open");
});
