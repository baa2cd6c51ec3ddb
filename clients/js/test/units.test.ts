/** The client's pure parts: backoff, the presence fold, indicator lifetimes, frame shapes. */
import assert from "node:assert/strict";
import { mock, test } from "node:test";

import { encode } from "@msgpack/msgpack";

import { Backoff, decodeFrame, IndicatorSet, type IndicatorEvent, PresenceMap, readClaims } from "../dist/index.js";
import { mint } from "./harness.js";

test("backoff: full jitter below a cap that doubles per attempt up to the maximum", () => {
  const highest = new Backoff({ initialDelayMs: 100, maxDelayMs: 1000 }, () => 0.999999);
  assert.deepEqual(
    Array.from({ length: 6 }, () => highest.next()),
    [99, 199, 399, 799, 999, 999],
  );
  const lowest = new Backoff({ initialDelayMs: 100, maxDelayMs: 1000 }, () => 0);
  assert.deepEqual([lowest.next(), lowest.next()], [0, 0], "full jitter reaches 0");
  highest.reset();
  assert.equal(highest.next(), 99, "reset starts over");
  assert.ok(highest.prompt() < 100, "a prompt retry stays within the first cap");
});

const user = (userId: string, status: string, version: number, groups = ["g"]) => ({
  userId,
  status,
  version,
  lastSeen: version,
  deviceId: "d",
  groups,
});

test("presence: updates apply by version; stale ones and those the snapshot holds are ignored", () => {
  const map = new PresenceMap();
  map.applySnapshot({ users: [user("u1", "online", 10)], count: 1, timestamp: 1 }, 5);
  assert.equal(map.applyUpdate({ ...user("u1", "offline", 12), cause: "disconnect" }, 5), null, "seq 5 is in the snapshot");
  assert.equal(map.get("u1")?.status, "online");

  const applied = map.applyUpdate({ ...user("u1", "offline", 12), cause: "disconnect", timestamp: 99 }, 6);
  assert.equal(applied?.previous?.status, "online");
  assert.equal(applied?.update.cause, "disconnect");
  assert.equal(map.applyUpdate({ ...user("u1", "online", 11), cause: "connect" }, 7), null, "an older version");
  assert.equal(map.applyUpdate({ ...user("u1", "online", 12), cause: "connect" }, 8), null, "the same version");
  assert.equal(map.staleUpdates, 2);
  assert.equal(map.get("u1")?.status, "offline");
  assert.equal(map.applyUpdate({ ...user(123 as unknown as string, "online", 1), cause: "connect" }, 9)?.update.userId, "123");
});

test("presence: a second snapshot replaces the view, keeping only what it does not contradict", () => {
  const map = new PresenceMap();
  map.applySnapshot({ users: [user("on", "online", 1), user("gone", "online", 1)] }, 1);
  map.applyUpdate({ ...user("off", "offline", 5), cause: "disconnect" }, 2);
  map.applySnapshot({ users: [user("on", "away", 3), user("new", "dnd", 4)] }, 50);
  assert.deepEqual(
    [...map].map((u) => [u.userId, u.status]).sort(),
    [
      ["new", "dnd"],
      ["off", "offline"],
      ["on", "away"],
    ],
    "an online user it does not list is dropped; a known offline one keeps its last seen",
  );
  assert.deepEqual([...map.online()].map((u) => u.userId).sort(), ["new", "on"]);
  assert.deepEqual(map.countsByGroup().get("g"), { online: 0, away: 1, dnd: 1, offline: 1 });
});

test("indicators: an end removes one; one without an end is held however long; dropAll ends the rest", () => {
  const dropped: IndicatorEvent[] = [];
  const set = new IndicatorSet((event) => dropped.push(event));
  set.apply({ groupId: "g", userId: "u1", type: "recording", isActive: true, timestamp: 1 });
  set.apply({ groupId: "g", userId: "u1", type: "recording", isActive: false, timestamp: 2 });
  assert.equal(set.size, 0);

  mock.timers.enable(["setTimeout", "setInterval"]);
  try {
    set.apply({ groupId: "g", userId: "u2", type: "typing", isActive: true, timestamp: 3 });
    // Refreshes are silent: an hour on, with no end, it is still live.
    mock.timers.tick(3_600_000);
  } finally {
    mock.timers.reset();
  }
  assert.ok(set.has("g", "u2", "typing"));
  assert.equal(dropped.length, 0);

  set.replace([{ groupId: "g", userId: "u3", type: "talking", timestamp: 4 }]);
  assert.deepEqual(
    set.list("g").map((i) => [i.userId, i.type, i.since]),
    [["u3", "talking", 4]],
    "a snapshot's indicators replace the set",
  );
  set.dropAll();
  assert.equal(set.size, 0);
  assert.deepEqual(
    dropped.map((e) => [e.userId, e.type, e.isActive, e.expired]),
    [["u3", "talking", false, true]],
  );
});

test("presence: changes numbered at or below the snapshot's seq are in it", () => {
  const map = new PresenceMap();
  assert.equal(map.contains(3), false, "no snapshot yet");
  map.applySnapshot({ users: [] }, 10);
  assert.deepEqual([map.contains(9), map.contains(10), map.contains(11), map.contains(null)], [true, true, false, false]);
});

test("frames: four, five and six elements; ids read as text, nil/0/\"\" as none", () => {
  const six = decodeFrame(encode([0, 31, 0, 0, 7, { userId: "u1" }]));
  assert.deepEqual([six.fromId, six.toId, six.messageId, six.payload], [null, null, 7, { userId: "u1" }]);
  const five = decodeFrame(encode([1, 17, 42, "bob", "hi"]));
  assert.deepEqual([five.fromId, five.toId, five.messageId, five.payload], ["42", "bob", undefined, "hi"]);
  const four = decodeFrame(encode([0, 15, "me", ""]));
  assert.deepEqual([four.toId, four.payload], [null, null]);
  assert.throws(() => decodeFrame(encode({ not: "an array" })));
});

test("token claims are read without verification", () => {
  const claims = readClaims(mint("u1", "dashboard", { groups: ["a", "b"] }));
  assert.deepEqual([claims.sub, claims.role, claims.groups], ["u1", "dashboard", ["a", "b"]]);
  assert.ok(claims.exp! > Date.now() / 1000);
  assert.deepEqual(readClaims("opaque"), {});
});

test("indicators: a snapshot's list comes back as starts of the new ones and ends of the unlisted", () => {
  const set = new IndicatorSet(() => {});
  set.apply({ groupId: "g", userId: "kept", type: "typing", isActive: true, timestamp: 1 });
  set.apply({ groupId: "g", userId: "gone", type: "talking", isActive: true, timestamp: 1 });
  const events = set.replace(
    [
      { groupId: "g", userId: "kept", type: "typing", timestamp: 1 },
      { groupId: "g", userId: "new", type: "recording", timestamp: 2 },
    ],
    5,
  );
  assert.deepEqual(
    events.map((e) => [e.userId, e.type, e.isActive, e.timestamp, e.expired]),
    [
      ["new", "recording", true, 2, false],
      ["gone", "talking", false, 5, false],
    ],
  );
  assert.deepEqual(set.replace([], 6).map((e) => [e.userId, e.isActive]), [["kept", false], ["new", false]]);
});
