/**
 * The built package in real headless Chromium, unbundled (ES modules and an import map):
 * the browser's WebSocket with the token in the subprotocol pair, a watcher's snapshot and
 * updates, a mobile's heartbeats, a refused token explained, one replaced from getToken
 * where the refusal cannot be learnt, and a dead connection dropped and redone.
 *
 * The page is served from one origin that also carries the router (WebSocket and API), as
 * a deployment behind nginx does: so the client may ask the API why a handshake failed.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { readFile, mkdtemp, rm } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { type AddressInfo, connect } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

import { bounded, mint, mobile, Router, SilentLink } from "./harness.js";

const PACKAGE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const chromium = ["chromium", "chromium-browser", "google-chrome"].find(
  (name) => spawnSync(name, ["--version"], { stdio: "ignore" }).status === 0,
);

/** The page: runs the client against the router and posts what it saw to /result. */
const PAGE = `<!doctype html>
<script type="importmap">{"imports": {"@msgpack/msgpack": "/node_modules/@msgpack/msgpack/dist.esm/index.mjs"}}</script>
<script type="module">
const report = (result) => fetch("/result", { method: "POST", body: JSON.stringify(result) });
try {
  const { PresenceClient } = await import("/dist/index.js");
  const params = new URLSearchParams(location.hash.slice(1));
  const url = "ws://" + location.host + "/ws";
  const watcher = new PresenceClient({ url, token: params.get("dashboard") });
  const snapshot = new Promise((resolve) => watcher.once("snapshot", resolve));
  await watcher.connect();
  await snapshot;
  const fromSnapshot = watcher.presence.get("br-alpha")?.status;

  const update = new Promise((resolve) => watcher.on("presence", (u) => u.userId === "br-phone" && resolve(u)));
  const phone = new PresenceClient({ url, token: params.get("mobile"), deviceId: "browser-tab" });
  await phone.connect();
  const rtt = await phone.heartbeat();
  const arrived = await update;

  const bad = new PresenceClient({ url, token: params.get("bad"), reconnect: false });
  const refusal = await bad.connect().then(() => null, (e) => ({ name: e.name, status: e.status, code: e.code }));

  // Straight to the router, another origin: the refusal cannot be learnt, so the retry
  // takes a fresh token from getToken.
  let asked = 0;
  const direct = new PresenceClient({
    url: params.get("direct"),
    token: params.get("bad"),
    getToken: () => (asked++, params.get("dashboard")),
    reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
  });
  await direct.connect();

  // Through a link that goes silent: no HEARTBEAT_ACK, so the socket is dropped and redone.
  const radio = new PresenceClient({
    url: params.get("silent"),
    token: params.get("radio"),
    heartbeatIntervalMs: 200,
    ackTimeoutMs: 300,
    reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
  });
  await radio.connect();
  const dropped = new Promise((resolve) => radio.once("disconnected", resolve));
  const back = new Promise((resolve) => radio.once("connected", resolve));
  await fetch("/blackhole", { method: "POST" });
  const { reason } = await dropped;
  await back;
  report({ fromSnapshot, arrived: [arrived.status, arrived.deviceId], rtt: typeof rtt, refusal, asked, reason });
} catch (error) {
  report({ error: String(error && error.stack || error) });
}
</script>`;

/** Serves the page, the package and its dependency, and passes /ws and /api/ to the router. */
async function serve(router: Router, link: SilentLink, onResult: (result: unknown) => void): Promise<number> {
  const server = createServer(async (request: IncomingMessage, response: ServerResponse) => {
    const url = new URL(request.url!, "http://page");
    if (request.method === "POST" && url.pathname === "/blackhole") {
      link.blackhole();
      return response.end();
    }
    if (request.method === "POST" && url.pathname === "/result") {
      let body = "";
      for await (const chunk of request) body += chunk;
      response.end();
      return onResult(JSON.parse(body));
    }
    if (url.pathname.startsWith("/api/")) {
      const answer = await fetch(`${router.http}${url.pathname}`, {
        headers: { authorization: request.headers.authorization ?? "" },
      });
      response.writeHead(answer.status, { "content-type": "application/json" });
      return response.end(await answer.text());
    }
    if (url.pathname === "/") {
      response.writeHead(200, { "content-type": "text/html" });
      return response.end(PAGE);
    }
    const file = path.join(PACKAGE, path.normalize(url.pathname));
    if (!/^\/(dist|node_modules\/@msgpack)\//.test(url.pathname) || !file.startsWith(PACKAGE)) {
      response.writeHead(404);
      return response.end();
    }
    response.writeHead(200, { "content-type": "text/javascript" });
    response.end(await readFile(file));
  });
  server.on("upgrade", (request: IncomingMessage, socket, head) => {
    const upstream = connect(router.port, "127.0.0.1", () => {
      const lines = [`${request.method} ${request.url} HTTP/1.1`];
      for (let i = 0; i < request.rawHeaders.length; i += 2) lines.push(`${request.rawHeaders[i]}: ${request.rawHeaders[i + 1]}`);
      upstream.write(`${lines.join("\r\n")}\r\n\r\n`);
      upstream.write(head);
      socket.pipe(upstream).pipe(socket);
    });
    upstream.on("error", () => socket.destroy());
    socket.on("error", () => upstream.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  after(() => server.close());
  return (server.address() as AddressInfo).port;
}

test("in headless Chromium: subprotocol handshake, snapshot, updates, heartbeats, refused tokens, a dead link", async (t) => {
  if (!chromium) return t.skip("chromium is not installed (make deps installs it)");
  const router = await Router.start();
  await mobile(router, "br-alpha", ["north"]);
  let deliver: (result: unknown) => void = () => {};
  const result = new Promise<unknown>((resolve) => (deliver = resolve));
  const link = await SilentLink.start(router);
  const port = await serve(router, link, deliver);

  const hash = new URLSearchParams({
    dashboard: mint("br-watcher", "dashboard", { groups: ["north"] }),
    mobile: mint("br-phone", "mobile", { groups: ["north"] }),
    bad: mint("br-bad", "dashboard", { secret: "another-secret-32-bytes-long-enough" }),
    direct: router.url,
    silent: link.url,
    radio: mint("br-radio", "mobile", { groups: ["north"] }),
  });
  const profile = await mkdtemp(path.join(tmpdir(), "js-client-chromium-"));
  const browser = spawn(
    chromium,
    [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      `--user-data-dir=${profile}`,
      `http://127.0.0.1:${port}/#${hash}`,
    ],
    // Its own process group, so its renderer and helper processes end with it; its
    // temporary files go into the profile, removed with it.
    { stdio: "ignore", detached: true, env: { ...process.env, TMPDIR: profile } },
  );
  const exited = new Promise((resolve) => browser.once("exit", resolve));
  after(async () => {
    process.kill(-browser.pid!, "SIGKILL");
    await exited;
    // Helpers that were writing the profile may still be finishing: retried on ENOTEMPTY.
    await rm(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 });
  });

  assert.deepEqual(await bounded(result, "the page's result"), {
    fromSnapshot: "online",
    arrived: ["online", "browser-tab"],
    rtt: "number",
    refusal: { name: "HandshakeError", status: 401, code: "invalid_token" },
    asked: 1,
    reason: "no HEARTBEAT_ACK within 300 ms",
  });
});
