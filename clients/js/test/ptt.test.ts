/** Push-to-talk, text and indicators between real clients through a real router. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { group, privateTo } from "../dist/index.js";
import { client, dashboard, groupPresence, mint, mobile, next, Router } from "./harness.js";

const router = await Router.start();
const alpha = await mobile(router, "alpha", ["north"]);
const bravo = await mobile(router, "bravo", ["north"]);
const watcher = await dashboard(router, "watcher", ["north"]);

test("a talk in a group: START, AUDIO and STOP reach the other member; dashboards see talking", async () => {
  const started = next(bravo, "ptt", (e) => e.type === "start");
  const talking = next(watcher, "indicator", (e) => e.type === "talking" && e.isActive);
  const told = next(bravo, "indicator", (e) => e.type === "talking" && e.isActive);
  const talk = await alpha.startTalk(group("north"));
  assert.deepEqual(talk.channel, group("north"));
  assert.deepEqual(alpha.talk?.channel, group("north"));
  const [start] = await started;
  assert.equal(start.from, "alpha");
  assert.deepEqual(start.channel, group("north"));
  await talking;
  assert.ok(watcher.indicators.has("north", "alpha", "talking"));
  await told; // members get INDICATOR_UPDATE too
  assert.ok(bravo.indicators.has("north", "alpha", "talking"));

  const heard = next(bravo, "ptt", (e) => e.type === "audio");
  const chunk = Uint8Array.from({ length: 320 }, (_, i) => i % 256);
  alpha.sendAudio(chunk);
  const [audio] = await heard;
  assert.deepEqual(audio.audio, chunk);

  await assert.rejects(bravo.startTalk(group("north")), { name: "RouterError", code: "busy" });

  const stopped = next(bravo, "ptt", (e) => e.type === "stop");
  const quiet = next(watcher, "indicator", (e) => e.type === "talking" && !e.isActive);
  const { messageId } = await alpha.stopTalk();
  assert.match(messageId!, /^0_3_north_alpha_/, "the talk's message id");
  assert.equal(alpha.talk, null);
  const [stop] = await stopped;
  assert.equal(stop.messageId, messageId);
  assert.equal(typeof stop.durationMs, "number");
  assert.equal(stop.reason, undefined);
  await quiet;
  assert.equal(watcher.indicators.has("north", "alpha", "talking"), false);
});

test("AUDIO without a floor is refused locally", () => {
  assert.throws(() => bravo.sendAudio(new Uint8Array(4)), { code: "floor_not_held" });
});

test("TEXT to a group is acknowledged with its message id, which receivers read", async () => {
  const received = next(bravo, "text");
  const { messageId } = await alpha.sendText(group("north"), "hello north");
  assert.match(messageId!, /^0_17_north_alpha_/);
  const [text] = await received;
  assert.equal(text.text, "hello north");
  assert.equal(text.messageId, messageId);
  assert.equal(text.from, "alpha");
  assert.deepEqual(text.channel, group("north"));
});

test("a private TEXT keeps its own message id, and receipts come back to the sender", async () => {
  const received = next(bravo, "text");
  const { messageId } = await alpha.sendText(privateTo("bravo"), "psst", { messageId: "msg-1" });
  assert.equal(messageId, "msg-1");
  const [text] = await received;
  assert.deepEqual(text.channel, privateTo("alpha"), "the receiver sees the channel with the sender");
  assert.equal(text.text, "psst");
  assert.equal(text.messageId, "msg-1");

  const delivered = next(alpha, "receipt");
  bravo.delivered("alpha", "msg-1");
  const [receipt] = await delivered;
  assert.deepEqual(receipt, { type: "delivered", from: "bravo", messageId: "msg-1" });
});

test("a TEXT to a group the sender is not in is refused with the router's code", async () => {
  await assert.rejects(alpha.sendText(group("south"), "hi"), { name: "RouterError", code: "not_a_member" });
});

test("typing starts and ends for members and dashboards, and the indicator set follows", async () => {
  const typing = next(bravo, "indicator", (e) => e.type === "typing" && e.isActive);
  const seen = next(watcher, "indicator", (e) => e.type === "typing" && e.isActive);
  await alpha.setIndicator("north", "typing");
  const [event] = await typing;
  assert.deepEqual([event.groupId, event.userId, event.expired], ["north", "alpha", false]);
  await seen;
  assert.deepEqual(
    watcher.indicators.list("north", "typing").map((i) => i.userId),
    ["alpha"],
  );

  const ended = next(bravo, "indicator", (e) => e.type === "typing" && !e.isActive);
  await alpha.setIndicator("north", "typing", false);
  await ended;
  assert.equal(bravo.indicators.has("north", "alpha", "typing"), false);
});

test("a typing indicator held on is refreshed, so the router and its watchers keep it past its lifetime", async () => {
  const short = await Router.start(["--typing-ttl-ms", "400"]);
  const typist = await mobile(short, "typist", ["west"], { indicatorLifetimesMs: { typing: 400 } });
  const member = await mobile(short, "member", ["west"], { indicatorLifetimesMs: { typing: 400 } });
  const watcher = await dashboard(short, "west-watcher", ["west"]);
  const seen = Promise.all(
    [member, watcher].map((c) => next(c, "indicator", (e) => e.type === "typing" && e.isActive)),
  );
  await typist.setIndicator("west", "typing");
  await seen;
  // Three lifetimes pass: without the refreshes (every 240 ms) the router would have ended it,
  // and the refreshes are silent: the watchers hold it until its end.
  await new Promise((resolve) => setTimeout(resolve, 1_200));
  assert.deepEqual((await groupPresence(short, "west")).typingUsers, ["typist"]);
  assert.equal(member.indicators.has("west", "typist", "typing"), true, "a member still sees the typist");
  assert.equal(watcher.indicators.has("west", "typist", "typing"), true, "a dashboard still sees the typist");
  const ended = Promise.all([member, watcher].map((c) => next(c, "indicator", (e) => e.type === "typing" && !e.isActive)));
  await typist.setIndicator("west", "typing", false);
  const ends = await ended;
  assert.deepEqual(
    ends.map(([e]) => e.expired),
    [false, false],
    "the end comes from the router",
  );
});

test("a dashboard opened mid-talk shows the talker from its snapshot's indicators", async (t) => {
  await alpha.startTalk(group("north"));
  t.after(() => alpha.stopTalk());
  const late = client({ url: router.url, token: mint("late-watcher", "dashboard", { groups: ["north"] }) });
  const first = next(late, "frame");
  const snapshot = next(late, "snapshot");
  await late.connect();
  const [frame] = await first;
  const [{ indicators, groupCounts }] = await snapshot;
  if (!("indicators" in (frame.payload as object))) return t.skip("this router's snapshots carry no indicators");
  assert.deepEqual(
    indicators.list("north").map((i) => [i.userId, i.type]),
    [["alpha", "talking"]],
  );
  assert.equal(groupCounts?.north?.online, 2);
});
