// The order forms' retry rule: node --test static/js/tests/*.test.js
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");

const path = require("node:path");
const fs = require("node:fs");

const wl = require("../watchlist.js");

const korean = JSON.parse(fs.readFileSync(path.join(__dirname, "texts_ko.json"), "utf8"));
wl.useTexts(korean);

const BUY = { side: "buy", code: "005930", body: { qty: 3, account: 7 } };

function counter() {
  let n = 0;
  return () => `key-${++n}`;
}

/** A fetch that plays `answers` in turn (an Error is a network failure) and records each request. */
function scriptedFetch(answers) {
  const sent = [];
  const fetchFn = async (url, init) => {
    sent.push({ url, key: init.headers["Idempotency-Key"], body: JSON.parse(init.body) });
    const answer = answers.shift();
    if (answer instanceof Error) throw answer;
    return { status: answer.status, json: async () => answer.body };
  };
  return { fetchFn, sent };
}

test("a retried click after a network error sends the same key, and a new order after success a new one", async () => {
  const intents = wl.createOrderIntents(counter());
  const { fetchFn, sent } = scriptedFetch([
    new TypeError("Failed to fetch"),
    { status: 200, body: { success: true, outcome: "accepted", message: "accepted" } },
    { status: 200, body: { success: true, outcome: "accepted", message: "accepted" } },
  ]);

  const lost = await wl.sendOrder(fetchFn, intents, BUY, "csrf");
  assert.deepEqual(lost, { kind: "checking", message: korean.order_state_checking });
  assert.match(lost.message, /확인하는 중/);
  assert.doesNotMatch(lost.message, /다시 시도/);

  assert.equal((await wl.sendOrder(fetchFn, intents, BUY, "csrf")).kind, "success");
  await wl.sendOrder(fetchFn, intents, BUY, "csrf");
  assert.deepEqual(sent.map((request) => request.key), ["key-1", "key-1", "key-2"]);
  assert.equal(sent[0].url, "/execute-buy/005930");
  assert.deepEqual(sent[0].body, { qty: 3, account: 7 });
});

test("a 502 whose state is unknown keeps the key; one that says 'not placed' settles it", async () => {
  const intents = wl.createOrderIntents(counter());
  const unknown = { status: 502, body: { success: false, outcome: "state_unknown", message: "state unknown" } };
  const notPlaced = { status: 502, body: { success: false, outcome: "unreachable", message: "not placed" } };
  const { fetchFn, sent } = scriptedFetch([unknown, unknown, notPlaced, notPlaced]);

  assert.equal((await wl.sendOrder(fetchFn, intents, BUY, "")).kind, "checking");
  assert.equal((await wl.sendOrder(fetchFn, intents, BUY, "")).kind, "checking");
  assert.deepEqual(await wl.sendOrder(fetchFn, intents, BUY, ""), { kind: "error", message: "not placed" });
  await wl.sendOrder(fetchFn, intents, BUY, "");
  assert.deepEqual(sent.map((request) => request.key), ["key-1", "key-1", "key-1", "key-2"]);
});

test("each intended order has its own key: a changed quantity is another order", async () => {
  const intents = wl.createOrderIntents(counter());
  const keyOf = (intent) => intents.keyFor(intent);
  assert.equal(keyOf(BUY), keyOf({ ...BUY, body: { ...BUY.body } }));
  assert.notEqual(keyOf(BUY), keyOf({ ...BUY, body: { ...BUY.body, qty: 4 } }));
  assert.notEqual(keyOf(BUY), keyOf({ ...BUY, side: "sell" }));
  assert.notEqual(keyOf(BUY), keyOf({ ...BUY, body: { ...BUY.body, price: 70000 } }));
  assert.equal(intents.size, 4);
  intents.settle(BUY);
  assert.equal(intents.size, 3);
});

test("which answers settle an order", () => {
  const settles = (status, body) => wl.answerSettlesOrder(status, body);
  assert.equal(settles(200, { outcome: "accepted" }), true);
  assert.equal(settles(409, { outcome: "exceeds_holdings" }), true);
  assert.equal(settles(502, { outcome: "rejected" }), true);
  assert.equal(settles(502, { outcome: "unreachable" }), true);
  assert.equal(settles(502, { outcome: "state_unknown" }), false);
  assert.equal(settles(409, { outcome: "key_in_flight" }), false);
  for (const refused of [400, 401, 403, 404]) assert.equal(settles(refused, { success: false }), true);
  for (const open of [429, 500, 502, 503, 504]) assert.equal(settles(open, null), false);
});

test("an answer that is not JSON (a proxy's 504 page) leaves the order being checked", async () => {
  const intents = wl.createOrderIntents(counter());
  const fetchFn = async () => ({ status: 504, json: async () => { throw new SyntaxError("not JSON"); } });
  assert.equal((await wl.sendOrder(fetchFn, intents, BUY, "")).kind, "checking");
  assert.equal(intents.size, 1);
});
