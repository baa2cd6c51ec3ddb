/** Tokens: refused handshakes, expiry (4001), REFRESH, and replacement (4009). */
import assert from "node:assert/strict";
import { test } from "node:test";

import { ClosedError, HandshakeError, RouterError } from "../dist/index.js";
import { bounded, client, mint, mobile, next, Router } from "./harness.js";

const router = await Router.start();

/** A mobile token whose `exp` passed 4 s ago: still accepted (5 s leeway), closed 4001 a second later. */
const expiring = (user: string) => mint(user, "mobile", { groups: ["north"], ttlSeconds: -4 });

test("a refused handshake rejects connect() with the router's code when no getToken can renew it", async () => {
  const alpha = client({ url: router.url, token: mint("bad-alpha", "mobile", { secret: "another-secret-32-bytes-long-enough" }) });
  const failed = await bounded(
    alpha.connect().then(
      () => assert.fail("connected with a badly signed token"),
      (error: unknown) => error,
    ),
    "connect() to fail",
  );
  assert.ok(failed instanceof HandshakeError);
  assert.equal(failed.status, 401);
  assert.equal(failed.code, "invalid_token");
  assert.equal(alpha.state, "closed");
});

test("a refused token is replaced from getToken before the next attempt", async () => {
  let asked = 0;
  const alpha = client({
    url: router.url,
    token: mint("renew-alpha", "mobile", { secret: "another-secret-32-bytes-long-enough" }),
    getToken: () => {
      asked++;
      return mint("renew-alpha", "mobile", { groups: ["north"] });
    },
  });
  await bounded(alpha.connect(), "connect() with the new token");
  assert.equal(asked, 1);
  await alpha.heartbeat();
});

test("4001: an expired token closes the connection; the client reconnects with one from getToken", async () => {
  let asked = 0;
  const alpha = client({
    url: router.url,
    token: expiring("exp-alpha"),
    refreshBeforeExpiry: false,
    refreshAheadMs: 0,
    getToken: () => {
      asked++;
      return mint("exp-alpha", "mobile", { groups: ["north"] });
    },
  });
  const expired = next(alpha, "disconnected");
  await bounded(alpha.connect(), "the first connect");
  const back = next(alpha, "connected");
  const [info] = await expired;
  assert.equal(info.code, 4001);
  assert.notEqual(info.reconnectInMs, null);
  await back;
  assert.equal(asked, 1);
  await alpha.heartbeat();
});

test("4001 without getToken stops the client", async () => {
  const alpha = client({ url: router.url, token: expiring("exp-bravo") });
  const errors: Error[] = [];
  alpha.on("error", (error) => errors.push(error));
  const expired = next(alpha, "disconnected");
  await bounded(alpha.connect(), "the first connect");
  const [info] = await expired;
  assert.equal(info.code, 4001);
  assert.equal(info.reconnectInMs, null);
  assert.equal(alpha.state, "closed");
  assert.ok(errors.some((e) => e instanceof RouterError && e.code === "token_expired"), "the ERROR before the close");
  assert.ok(errors.some((e) => e instanceof ClosedError && e.code === 4001));
});

test("with getToken, a REFRESH before expiry keeps the connection past its first token", async () => {
  const token = expiring("refresh-alpha");
  const alpha = client({
    url: router.url,
    token,
    refreshAheadMs: 0,
    getToken: () => mint("refresh-alpha", "mobile", { groups: ["north"] }),
  });
  const drops: number[] = [];
  alpha.on("disconnected", (info) => drops.push(info.code));
  const refreshed = next(alpha, "refreshed");
  await bounded(alpha.connect(), "the first connect");
  const [claims] = await refreshed;
  assert.ok(claims.exp! > Date.now() / 1000 + 60);
  // The first token's end (exp + the 5 s leeway) passes; a heartbeat after it is answered.
  const firstEnd = ((JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()) as { exp: number }).exp + 5) * 1000;
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, firstEnd - Date.now()) + 500));
  await alpha.heartbeat();
  assert.deepEqual(drops, []);
});

test("refresh(token) with another user's token is refused (token_mismatch) and the connection stays", async () => {
  const alpha = await mobile(router, "mismatch-alpha", ["north"]);
  await assert.rejects(alpha.refresh(mint("someone-else", "mobile")), { name: "RouterError", code: "token_mismatch" });
  await alpha.refresh(mint("mismatch-alpha", "mobile", { groups: ["north"] }));
  await alpha.heartbeat();
});

test("4009: a newer connection of the same device replaces this one, which does not reconnect", async () => {
  const first = await mobile(router, "dev-alpha", ["north"]);
  const replaced = next(first, "disconnected");
  const second = await mobile(router, "dev-alpha", ["north"]);
  const [info] = await replaced;
  assert.equal(info.code, 4009);
  assert.equal(info.reconnectInMs, null);
  assert.equal(first.state, "closed");
  await second.heartbeat();
  assert.equal(second.state, "open");
});
