/** A router that loses Redis says its view is stale, and fresh again: the client's `stale`. */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
import { after, test } from "node:test";

import type { PresenceClient, StaleInfo } from "../dist/index.js";
import { bounded, dashboard, mobile, next, Router } from "./harness.js";

/** The client's stale spell, read afresh (not narrowed by an earlier assertion). */
const staleOf = (client: PresenceClient): StaleInfo | null => client.stale;

/** A free loopback port. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A real redis-server without persistence on `port`, ready once it answers connections. */
async function redisServer(port: number): Promise<ChildProcess> {
  const child = spawn("redis-server", ["--port", String(port), "--save", "", "--appendonly", "no"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  after(() => child.kill("SIGKILL"));
  await bounded(
    new Promise<void>((resolve, reject) => {
      child.on("error", (error) => reject(new Error(`cannot start redis-server: ${error.message}`)));
      child.stdout!.on("data", (chunk: Buffer) => chunk.toString().includes("Ready to accept") && resolve());
    }),
    "redis-server to start",
  );
  return child;
}

async function stop(child: ChildProcess): Promise<void> {
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGKILL");
  await bounded(exited, "redis-server to exit");
}

test("a dashboard is told its router's view is stale while Redis is away, and fresh after, keeping everyone", async () => {
  const port = await freePort();
  let redis = await redisServer(port);
  const router = await Router.start(["--redis-host", "127.0.0.1", "--redis-port", String(port)]);
  const phone = await mobile(router, "stale-alpha", ["ops"]);
  await phone.heartbeat();
  const watcher = await dashboard(router, "stale-watcher", ["ops"]);
  assert.equal(staleOf(watcher), null);
  assert.equal(watcher.presence.get("stale-alpha")?.status, "online");

  const went = next(watcher, "stale", (stale) => stale !== null);
  await stop(redis);
  const [stale, before] = await went;
  assert.equal(before, null);
  assert.ok(stale!.since > 0 && stale!.since <= Date.now());
  assert.ok(["subscription_lost", "store_unreachable"].includes(stale!.reason), stale!.reason);
  assert.equal(staleOf(watcher)?.since, stale!.since);
  assert.equal(watcher.presence.get("stale-alpha")?.status, "online", "the last view is kept");

  const fresh = next(watcher, "stale", (now) => now === null);
  redis = await redisServer(port);
  const [, ended] = await fresh;
  assert.equal(ended?.since, stale!.since, "FRESH ends the spell STALE began");
  assert.equal(staleOf(watcher), null);
  assert.equal(watcher.presence.get("stale-alpha")?.status, "online", "re-asserted, never shown offline");
});
