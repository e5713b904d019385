// Unit tests of the client's state logic: node --test static/js/tests/*.test.js
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const fs = require("node:fs");

const wl = require("../watchlist.js");

const formatCases = JSON.parse(fs.readFileSync(path.join(__dirname, "format_cases.json"), "utf8"));
// The page's texts in each language (watchlist_format.client_texts; tests/watchlist/test_views.py keeps
// these copies equal to it). Korean, the default, unless a test says otherwise.
const textsIn = (language) => JSON.parse(fs.readFileSync(path.join(__dirname, `texts_${language}.json`), "utf8"));
wl.useTexts(textsIn("ko"));

/** Run `fn` with the texts of `language`, then back to Korean. */
function inLanguage(language, fn) {
  wl.useTexts(textsIn(language));
  try {
    fn();
  } finally {
    wl.useTexts(textsIn("ko"));
  }
}

test("message types name every message of the contract", () => {
  assert.equal(wl.WS_MESSAGE_TYPES.WATCHLIST_CHANGED, "watchlist_changed");
  assert.deepEqual(Object.values(wl.WS_MESSAGE_TYPES).sort(), [
    "error", "pong", "price_update", "sync_status", "watchlist_changed", "watchlist_snapshot",
  ]);
});

test("notifyListeners calls the listeners of that type only, and survives a failing one", () => {
  const seen = [];
  const removeA = wl.addListener("watchlist_changed", (data) => seen.push(["changed", data.version]));
  const removeB = wl.addListener("price_update", () => seen.push(["price"]));
  const removeC = wl.addListener("watchlist_changed", () => { throw new Error("boom"); });
  const originalError = console.error;
  console.error = () => {};
  try {
    wl.notifyListeners("watchlist_changed", { version: 3 });
  } finally {
    console.error = originalError;
    removeA(); removeB(); removeC();
  }
  assert.deepEqual(seen, [["changed", 3]]);
  wl.notifyListeners("watchlist_changed", { version: 4 });
  assert.equal(seen.length, 1, "a removed listener hears nothing");
});

test("classifyVersion: next applies, old is stale, a jump or no snapshot is a gap", () => {
  assert.equal(wl.classifyVersion(7, 8), "apply");
  assert.equal(wl.classifyVersion(7, 7), "stale");
  assert.equal(wl.classifyVersion(7, 3), "stale");
  assert.equal(wl.classifyVersion(7, 9), "gap");
  assert.equal(wl.classifyVersion(null, 1), "gap");
  assert.equal(wl.classifyVersion(0, 1), "apply");
});

test("planChanges removes, inserts in code order and replaces", () => {
  const { codes, ops } = wl.planChanges(["000660", "005930", "035720"], {
    added: ["005380", "000100"], removed: ["035720"], updated: ["000660"],
  });
  assert.deepEqual(codes, ["000100", "000660", "005380", "005930"]);
  assert.deepEqual(ops, [
    { op: "remove", code: "035720" },
    { op: "insert", code: "005380", before: "005930" },
    { op: "insert", code: "000100", before: "000660" },
    { op: "replace", code: "000660" },
  ]);
});

test("planChanges appends past the last code and tolerates what the screen lacks", () => {
  assert.deepEqual(wl.planChanges([], { added: ["005930"], removed: ["000660"], updated: ["035420"] }), {
    codes: ["005930", "035420"],
    ops: [{ op: "insert", code: "005930", before: null }, { op: "insert", code: "035420", before: null }],
  });
  assert.deepEqual(wl.planChanges(["005930"], { added: ["005930"], removed: [], updated: [] }).ops,
    [{ op: "replace", code: "005930" }]);
});

test("planChanges: replaying changes from an old list reaches the new list (property)", () => {
  const universe = ["000100", "000660", "005380", "005930", "035420", "035720", "051910", "068270"];
  let seed = 42;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (let round = 0; round < 500; round += 1) {
    const before = universe.filter(() => random() < 0.5);
    const after = universe.filter(() => random() < 0.5);
    const changes = {
      added: after.filter((c) => !before.includes(c)),
      removed: before.filter((c) => !after.includes(c)),
      updated: after.filter((c) => before.includes(c) && random() < 0.3),
    };
    assert.deepEqual(wl.planChanges(before, changes).codes, after);
  }
});

test("sameCodes compares order too", () => {
  assert.ok(wl.sameCodes(["1", "2"], ["1", "2"]));
  assert.ok(!wl.sameCodes(["2", "1"], ["1", "2"]));
  assert.ok(!wl.sameCodes(["1"], ["1", "2"]));
});

test("backoffDelay grows exponentially, is capped, and jitters between half and all", () => {
  const low = () => 0;
  const high = () => 0.999999;
  assert.equal(wl.backoffDelay(0, low), 500);
  assert.equal(wl.backoffDelay(0, high), 1000);
  assert.equal(wl.backoffDelay(3, low), 4000);
  assert.equal(wl.backoffDelay(3, high), 8000);
  for (const attempt of [5, 10, 100, 10000]) {
    assert.equal(wl.backoffDelay(attempt, high), 30000, `attempt ${attempt} is capped`);
    assert.equal(wl.backoffDelay(attempt, low), 15000);
  }
  const delays = new Set(Array.from({ length: 50 }, () => wl.backoffDelay(4)));
  assert.ok(delays.size > 10, "Math.random jitter spreads a reconnect storm");
});

for (const [name, fn] of [["krw", wl.formatKrw], ["signed_krw", wl.formatSignedKrw],
  ["signed_rate", wl.formatSignedRate], ["direction", wl.direction]]) {
  test(`${name} formats as the server does`, () => {
    for (const [input, expected] of formatCases[name]) assert.equal(fn(input), expected, `${name}(${input})`);
  });
}

test("formatChange shows an arrow, the amount and the rate", () => {
  assert.equal(wl.formatChange(600, 0.84), "▲600 (+0.84%)");
  assert.equal(wl.formatChange(-1500, -2.1), "▼1,500 (-2.10%)");
  assert.equal(wl.formatChange(0, 0), "0 (0.00%)");
});

test("valuation recomputes evaluation and P&L at a new price", () => {
  assert.deepEqual(wl.valuation(72100, 10, 71250.5), { eval_amount: 721000, pnl: 8495, pnl_rate: 1.19 });
  assert.deepEqual(wl.valuation(100, 0, 0), { eval_amount: 0, pnl: 0, pnl_rate: 0 });
  assert.equal(wl.valuation(90, 10, 100).pnl_rate, -10);
});

test("sync line: never, ok with a relative time, failing keeps the list as of the last success", () => {
  const now = 1764000000;
  assert.match(wl.syncStatusText({ status: "never", last_success_at: null, consecutive_failures: 0 }, now), /아직 확인하지 못했습니다/);
  assert.equal(wl.syncStatusText({ status: "ok", last_success_at: now - 12, consecutive_failures: 0 }, now), "마지막 동기화 12초 전");
  assert.equal(wl.syncStatusText({ status: "ok", last_success_at: now - 125, consecutive_failures: 0 }, now), "마지막 동기화 2분 전");
  // 1764000000 is 2025-11-25 01:00:00 KST
  assert.equal(wl.syncStatusText({ status: "failing", last_success_at: now, consecutive_failures: 3 }, now + 90),
    "계좌에 연결할 수 없습니다 (3회 실패) — 01:00:00 기준 목록입니다");
  assert.match(wl.syncStatusText({ status: "failing", last_success_at: null, consecutive_failures: 1 }, now), /아직 확인하지 못했습니다/);
  assert.equal(
    wl.syncStatusText({ status: "ok", last_success_at: now - 12, consecutive_failures: 0,
      realtime_error: "fill_notices_off: the broker drops the real-time session ..." }, now),
    "마지막 동기화 12초 전 · 체결 알림이 꺼졌습니다 (HTS ID를 확인하세요)");
});

test("the sync line in English, with plural forms", () => {
  const now = 1764000000;
  inLanguage("en", () => {
    assert.equal(wl.syncStatusText({ status: "ok", last_success_at: now - 1, consecutive_failures: 0 }, now),
      "Last sync just now");
    assert.equal(wl.syncStatusText({ status: "ok", last_success_at: now - 60, consecutive_failures: 0 }, now),
      "Last sync 1 minute ago");
    assert.equal(wl.syncStatusText({ status: "ok", last_success_at: now - 7200, consecutive_failures: 0 }, now),
      "Last sync 2 hours ago");
    assert.equal(wl.syncStatusText({ status: "failing", last_success_at: now, consecutive_failures: 1 }, now + 90),
      "Cannot reach the account (1 failure) — the list as of 01:00:00");
    assert.equal(wl.syncStatusText({ status: "failing", last_success_at: null, consecutive_failures: 2 }, now),
      "Cannot reach the account (2 failures) — holdings not read yet");
    assert.equal(wl.listStateText(0, { last_success_at: now }), "No holdings");
    assert.equal(wl.formatSignedKrw(8495), "+8,495 KRW");
  });
});

test("fill leaves a placeholder it has no value for as it is", () => {
  assert.equal(wl.fill("%(a)s and %(b)s", { a: 1 }), "1 and %(b)s");
});

test("an ok sync line asks for a snapshot once the next sync is overdue, at most every 30 s", () => {
  const sync = { status: "ok", last_success_at: 1000, next_attempt_at: 1030, consecutive_failures: 0 };
  assert.equal(wl.syncLooksStale(sync, 1040, null), false, "within the grace period");
  assert.equal(wl.syncLooksStale(sync, 1046, null), true);
  assert.equal(wl.syncLooksStale(sync, 1060, 1046), false, "asked 14 s ago");
  assert.equal(wl.syncLooksStale(sync, 1076, 1046), true);
  assert.equal(wl.syncLooksStale({ ...sync, status: "failing" }, 2000, null), false, "failures are pushed");
  assert.equal(wl.syncLooksStale({ ...sync, status: "never", next_attempt_at: null }, 2000, null), false);
});

test("an empty list before the first sync is unknown, after it is empty", () => {
  assert.equal(wl.listStateText(0, { last_success_at: null }), "보유 종목을 아직 확인하지 못했습니다");
  assert.equal(wl.listStateText(0, { last_success_at: 1764000000 }), "보유 종목이 없습니다");
  assert.equal(wl.listStateText(2, { last_success_at: null }), "");
});

// --- the connection, with a fake WebSocket and fake timers

class FakeTimers {
  constructor() { this.now = 0; this.queue = new Map(); this.nextId = 1; }
  setTimeout = (fn, ms) => { const id = this.nextId++; this.queue.set(id, { at: this.now + ms, fn }); return id; };
  clearTimeout = (id) => { this.queue.delete(id); };
  advance(ms) {
    const until = this.now + ms;
    for (;;) {
      const due = [...this.queue.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.queue.delete(due[0]);
      this.now = due[1].at;
      due[1].fn();
    }
    this.now = until;
  }
}

function fakeSocketClass() {
  const sockets = [];
  class FakeSocket {
    constructor(url) { this.url = url; this.readyState = 0; this.sent = []; this.closed = false; sockets.push(this); }
    send(text) { this.sent.push(JSON.parse(text)); }
    close() { this.closed = true; this.readyState = 3; }
    // server side
    open() { this.readyState = 1; this.onopen?.({}); }
    deliver(message) { this.onmessage?.({ data: JSON.stringify(message) }); }
    drop(code = 1006) { this.readyState = 3; this.onclose?.({ code }); }
  }
  return { FakeSocket, sockets };
}

function connect(extra = {}) {
  const timers = new FakeTimers();
  const { FakeSocket, sockets } = fakeSocketClass();
  const messages = [];
  const states = [];
  const connection = wl.createConnection({
    url: "ws://test/ws/watchlist/", WebSocketImpl: FakeSocket, timers, random: () => 0.5,
    onMessage: (type, data) => messages.push([type, data]), onState: (s) => states.push(s), ...extra,
  });
  connection.start();
  return { connection, timers, sockets, messages, states };
}

test("every message goes to onMessage, a bad frame is skipped", () => {
  const { sockets, messages } = connect();
  sockets[0].open();
  sockets[0].deliver({ type: "watchlist_snapshot", version: 1, full_list: [] });
  const originalWarn = console.warn;
  console.warn = () => {};
  sockets[0].onmessage({ data: "not json" });
  console.warn = originalWarn;
  assert.deepEqual(messages.map(([type]) => type), ["watchlist_snapshot"]);
});

test("a dropped socket reconnects with growing delays, forever, and says so", () => {
  const { timers, sockets, states } = connect();
  for (let i = 0; i < 12; i += 1) {
    sockets.at(-1).drop();
    timers.advance(60000);
  }
  assert.equal(sockets.length, 13);
  const waits = states.filter((s) => s.state === "waiting").map((s) => s.delayMs);
  assert.deepEqual(waits.slice(0, 6), [750, 1500, 3000, 6000, 12000, 22500]);
  assert.ok(waits.slice(5).every((d) => d === 22500), "capped");
  assert.deepEqual(states.filter((s) => s.state === "waiting").map((s) => s.attempt).slice(0, 3), [1, 2, 3]);
});

test("closed for falling behind: reconnects soon and takes the new snapshot; for too many: waits longer", () => {
  const { timers, sockets, states, messages } = connect();
  sockets[0].open(); sockets[0].deliver({ type: "watchlist_snapshot", version: 3 });
  sockets[0].drop(wl.CLOSE_FALLING_BEHIND);
  timers.advance(60000);
  sockets[1].open(); sockets[1].deliver({ type: "watchlist_snapshot", version: 9 });
  sockets[1].drop(wl.CLOSE_TOO_MANY);
  timers.advance(60000);
  assert.equal(sockets.length, 3, "reconnected both times");
  const waits = states.filter((s) => s.state === "waiting").map((s) => s.delayMs);
  assert.deepEqual(waits, [750, 6000]);
  assert.deepEqual(messages.map(([, data]) => data.version), [3, 9], "the reconnection's snapshot is the resync");
});

test("a delivered message resets the backoff; an accept-then-drop does not", () => {
  const { timers, sockets, states } = connect();
  sockets[0].open(); sockets[0].drop(); timers.advance(60000);
  sockets[1].open(); sockets[1].drop(); timers.advance(60000);
  sockets[2].open(); sockets[2].deliver({ type: "watchlist_snapshot" }); sockets[2].drop();
  const waits = states.filter((s) => s.state === "waiting").map((s) => s.delayMs);
  assert.deepEqual(waits, [750, 1500, 750]);
});

test("refused sockets (4401, 4403) are not retried", () => {
  const { timers, sockets, states } = connect();
  sockets[0].open();
  sockets[0].drop(4401);
  timers.advance(600000);
  assert.equal(sockets.length, 1);
  assert.deepEqual(states.at(-1), { state: "refused", code: 4401 });
});

test("pings every 20 s while pongs come back", () => {
  const { timers, sockets } = connect();
  sockets[0].open();
  for (let i = 0; i < 5; i += 1) {
    timers.advance(20000);
    assert.deepEqual(sockets[0].sent.at(-1), { type: "ping" });
    sockets[0].deliver({ type: "pong", timestamp: 1 });
  }
  assert.equal(sockets[0].sent.length, 5);
  assert.equal(sockets.length, 1);
  assert.ok(!sockets[0].closed);
});

test("a silent socket (no pong within the deadline) is closed and replaced", () => {
  const { timers, sockets, states } = connect();
  sockets[0].open();
  timers.advance(20000);
  assert.deepEqual(sockets[0].sent, [{ type: "ping" }]);
  timers.advance(9999);
  assert.equal(sockets.length, 1, "still within the deadline");
  timers.advance(1);
  assert.ok(sockets[0].closed);
  assert.equal(states.at(-1).state, "waiting");
  timers.advance(states.at(-1).delayMs);
  assert.equal(sockets.length, 2);
  sockets[0].drop(); // the late close of the abandoned socket changes nothing
  assert.equal(sockets.length, 2);
});

test("wake() pings an open socket and connects a waiting one at once", () => {
  const { connection, timers, sockets } = connect();
  sockets[0].open();
  connection.wake();
  assert.deepEqual(sockets[0].sent, [{ type: "ping" }]);
  sockets[0].drop();
  assert.equal(sockets.length, 1);
  connection.wake();
  assert.equal(sockets.length, 2, "no waiting for the backoff");
  timers.advance(60000);
  assert.equal(sockets.length, 2, "the pending reconnect was cancelled");
});

test("send() refuses while the socket is not open", () => {
  const { connection, sockets } = connect();
  assert.equal(connection.send({ type: "resync" }), false);
  sockets[0].open();
  assert.equal(connection.send({ type: "resync" }), true);
  assert.deepEqual(sockets[0].sent, [{ type: "resync" }]);
});
