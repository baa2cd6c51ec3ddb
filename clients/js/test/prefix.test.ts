/**
 * Browser mode (the `WebSocket` option, here the `ws` package as the README documents it)
 * behind a proxy that serves the router under a path prefix: a handshake the proxy fails
 * once (502) is retried, the client asks the API beside the WebSocket (under the prefix)
 * why, and an API the proxy does not route (404) says nothing fatal.
 */
import assert from "node:assert/strict";
import { createServer, type IncomingMessage } from "node:http";
import { type AddressInfo, connect, type Socket } from "node:net";
import { after, test } from "node:test";

import WebSocket from "ws";

import { type DisconnectInfo, type WebSocketConstructor } from "../dist/index.js";
import { bounded, client, mint, next, Router } from "./harness.js";

/**
 * A proxy serving the router's `/ws` at `/presence/ws` (failing the first `failures`
 * upgrades with 502) and, when `routesApi`, its `/api/...` at `/presence/api/...`;
 * anything else is 404. `asked` lists the HTTP paths requested.
 */
async function prefixProxy(router: Router, failures: number, routesApi: boolean) {
  const asked: string[] = [];
  const server = createServer(async (request, response) => {
    asked.push(request.url ?? "");
    if (!routesApi || !request.url?.startsWith("/presence/api/")) return response.writeHead(404).end();
    const answer = await fetch(`${router.http}${request.url.slice("/presence".length)}`, {
      headers: { authorization: request.headers.authorization ?? "" },
    });
    response.writeHead(answer.status, { "content-type": "application/json" }).end(await answer.text());
  });
  server.on("upgrade", (request: IncomingMessage, socket: Socket, head: Buffer) => {
    if (request.url !== "/presence/ws") return socket.end("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    if (failures-- > 0) return socket.end("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
    const upstream = connect(router.port, "127.0.0.1");
    const headers = [];
    for (let i = 0; i < request.rawHeaders.length; i += 2) headers.push(`${request.rawHeaders[i]}: ${request.rawHeaders[i + 1]}`);
    upstream.write(`GET /ws HTTP/1.1\r\n${headers.join("\r\n")}\r\n\r\n`);
    upstream.write(head);
    socket.pipe(upstream).pipe(socket);
    socket.on("error", () => upstream.destroy());
    upstream.on("error", () => socket.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  after(() => server.close());
  return { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}/presence/ws`, asked };
}

for (const routesApi of [true, false]) {
  test(`a failed handshake under a path prefix is retried (the proxy ${routesApi ? "routes" : "does not route"} the API)`, async () => {
    const router = await Router.start();
    const proxy = await prefixProxy(router, 1, routesApi);
    const token = mint("pf-dash", "dashboard");
    const watcher = client({
      url: proxy.url,
      token,
      getToken: () => token,
      WebSocket: WebSocket as unknown as WebSocketConstructor,
    });
    const drops: DisconnectInfo[] = [];
    watcher.on("disconnected", (info) => drops.push(info));
    const snapshot = next(watcher, "snapshot");
    await bounded(watcher.connect(), "connect through the proxy");
    await snapshot;
    assert.equal(drops.length, 1, JSON.stringify(drops));
    assert.equal(drops[0]!.code, 1006);
    assert.notEqual(drops[0]!.reconnectInMs, null, "a failure the probe cannot explain is retried");
    assert.deepEqual(proxy.asked, ["/presence/api/users/pf-dash/presence"], "the API beside the WebSocket is asked");
    assert.equal(watcher.state, "open");
  });
}
