/*
 * Live Watchlist: the page's WebSocket client (plain JavaScript, no build step).
 *
 * The top half is DOM-free and also loads in Node for `node --test` (static/js/tests/): message
 * types, version tracking, backoff, applying a change to the ordered list of codes, formatting, and
 * the connection (socket, heartbeat, reconnect) with its WebSocket and timers passed in.
 * The bottom half binds it to the page rendered by templates/watchlist/page.html.
 *
 * Protocol: ../../../shared/docs/contract.md, "WebSocket". Rows arrive as server-rendered HTML
 * (`rows_html`, from templates/watchlist/_row.html), so formatting lives in one place; the
 * formatters here only serve cells patched by price updates and must match
 * watchlist/templatetags/watchlist_format.py (static/js/tests/format_cases.json checks both).
 *
 * Every text shown comes from the page, in the trader's language (`useTexts`: the JSON of
 * watchlist_format.client_texts, embedded as #watchlist-texts): none is written here.
 */
"use strict";

const WS_MESSAGE_TYPES = Object.freeze({
  WATCHLIST_SNAPSHOT: "watchlist_snapshot",
  WATCHLIST_CHANGED: "watchlist_changed",
  SYNC_STATUS: "sync_status",
  PRICE_UPDATE: "price_update",
  PONG: "pong",
  ERROR: "error",
});

const CLOSE_UNAUTHENTICATED = 4401;
const CLOSE_FORBIDDEN = 4403;
// Closed for sending too much (or holding too many sockets), and for reading too slowly: both
// reconnect, and the snapshot every connection starts with is the resync.
const CLOSE_TOO_MANY = 4429;
const CLOSE_FALLING_BEHIND = 4408;
// A socket closed for too many waits as after this many failures (3-6 s), not at once.
const TOO_MANY_ATTEMPTS = 3;

// --- listeners: every message from the server goes through notifyListeners ---------------------

const listeners = new Map();

function addListener(type, listener) {
  if (!listeners.has(type)) listeners.set(type, new Set());
  listeners.get(type).add(listener);
  return () => listeners.get(type).delete(listener);
}

function notifyListeners(type, data) {
  for (const listener of listeners.get(type) || []) {
    try {
      listener(data);
    } catch (error) {
      console.error(`watchlist: listener for ${type} failed`, error);
    }
  }
}

// --- texts: the page's language, given by the server -------------------------------------------

let texts = null;

/** The table of texts to show (watchlist_format.client_texts in Python). */
function useTexts(table) {
  texts = table;
}

/** A text with its `%(name)s` placeholders filled in, as Python's `%` does. */
function fill(template, values) {
  return template.replace(/%\((\w+)\)s/g,
    (placeholder, name) => (name in values ? String(values[name]) : placeholder));
}

/** The form of a counted text for `count`: [singular, other], the plural rule of English and Korean. */
function counted(forms, count, values) {
  return fill(forms[count === 1 ? 0 : 1], values);
}

// --- versions, changes, backoff ------------------------------------------------------------------

/** What to do with a message of version `incoming` when the client holds `current`. */
function classifyVersion(current, incoming) {
  if (current === null || current === undefined) return "gap";
  if (incoming <= current) return "stale";
  return incoming === current + 1 ? "apply" : "gap";
}

/** Index at which `code` keeps `codes` (ascending) sorted. */
function insertionIndex(codes, code) {
  const index = codes.findIndex((existing) => existing > code);
  return index === -1 ? codes.length : index;
}

/**
 * Apply a change's added/removed/updated codes to the ordered list of codes on screen.
 * Returns the new list and the row operations that get there: remove, insert (before the code
 * named, or at the end when null) and replace. An updated code that is missing is inserted, an
 * added one that is present is replaced: the result is right whatever the screen held.
 */
function planChanges(codes, changes) {
  const next = codes.filter((code) => !changes.removed.includes(code));
  const ops = codes.filter((code) => changes.removed.includes(code)).map((code) => ({ op: "remove", code }));
  for (const code of [...changes.added, ...changes.updated]) {
    if (next.includes(code)) {
      ops.push({ op: "replace", code });
    } else {
      const index = insertionIndex(next, code);
      ops.push({ op: "insert", code, before: next[index] ?? null });
      next.splice(index, 0, code);
    }
  }
  return { codes: next, ops };
}

function sameCodes(a, b) {
  return a.length === b.length && a.every((code, i) => code === b[i]);
}

/** Reconnect delay: exponential from baseMs, capped, with "equal jitter" (between half and all of it). */
function backoffDelay(attempt, random = Math.random, { baseMs = 1000, capMs = 30000 } = {}) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

// --- formatting (mirrors watchlist/templatetags/watchlist_format.py) -----------------------------

function formatGrouped(value) {
  const number = Number(value);
  const sign = number < 0 ? "-" : "";
  let text = Number.isInteger(number) ? String(Math.abs(number)) : Math.abs(number).toFixed(2).replace(/\.?0+$/, "");
  const [whole, fraction] = text.split(".");
  text = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",") + (fraction ? `.${fraction}` : "");
  return sign + text;
}

function formatKrw(value) {
  return fill(texts.krw_amount, { amount: formatGrouped(value) });
}

function formatSignedKrw(value) {
  return value > 0 ? `+${formatKrw(value)}` : formatKrw(value);
}

function formatSignedRate(value) {
  if (!value) return "0.00%";
  return `${value > 0 ? "+" : ""}${Number(value).toFixed(2)}%`;
}

/** Korean market colours: a rise is red, a fall is blue. */
function direction(value) {
  if (value > 0) return "rise";
  return value < 0 ? "fall" : "flat";
}

/** The change line under a price: "▲600 (+0.84%)". */
function formatChange(change, changeRate) {
  const arrow = change > 0 ? "▲" : change < 0 ? "▼" : "";
  return `${arrow}${formatGrouped(Math.abs(change))} (${formatSignedRate(changeRate)})`;
}

const KST_CLOCK = new Intl.DateTimeFormat("en-GB", {
  timeZone: "Asia/Seoul", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
});

/** HH:MM:SS in Korean market time. */
function clockKst(unixSeconds) {
  if (!unixSeconds) return "";
  const parts = Object.fromEntries(KST_CLOCK.formatToParts(new Date(unixSeconds * 1000)).map((p) => [p.type, p.value]));
  return `${parts.hour}:${parts.minute}:${parts.second}`;
}

function ago(unixSeconds, nowSeconds) {
  const elapsed = Math.max(0, Math.floor(nowSeconds - unixSeconds));
  if (elapsed < 5) return texts.just_now;
  const [count, forms] = elapsed < 60 ? [elapsed, texts.seconds_ago]
    : elapsed < 3600 ? [Math.floor(elapsed / 60), texts.minutes_ago]
      : elapsed < 86400 ? [Math.floor(elapsed / 3600), texts.hours_ago]
        : [Math.floor(elapsed / 86400), texts.days_ago];
  return counted(forms, count, { count });
}

/** The sync line, as the contract's sync object says (never / ok / failing), and the real-time problem. */
function syncStatusText(sync, nowSeconds) {
  const text = syncOutcomeText(sync, nowSeconds);
  return sync.realtime_error ? `${text} · ${realtimeProblemText(sync.realtime_error)}` : text;
}

// watchlist/prices.py writes these reasons into realtime_error (texts.realtime_problems is keyed by them).
function realtimeProblemText(error) {
  const problems = Object.entries(texts.realtime_problems)
    .filter(([reason]) => error.includes(`${reason}:`))
    .map(([, text]) => text);
  return problems.join(" · ") || texts.realtime_problem;
}

function syncOutcomeText(sync, nowSeconds) {
  if (sync.status === "never") return texts.sync_never;
  if (sync.status === "failing") {
    const failures = sync.consecutive_failures;
    if (!sync.last_success_at) return counted(texts.sync_failing_unread, failures, { failures });
    return counted(texts.sync_failing_since, failures, { failures, time: clockKst(sync.last_success_at) });
  }
  return fill(texts.sync_ok, { ago: ago(sync.last_success_at, nowSeconds) });
}

/**
 * Whether a visible page should ask for a snapshot to refresh its sync line. The server pushes
 * sync_status only when an attempt fails or the status changes, so an "ok" line hears of later
 * successful syncs from a snapshot alone: ask once the next sync is overdue, at most every 30 s.
 */
function syncLooksStale(sync, nowSeconds, lastAskedAt, { graceSeconds = 15, minIntervalSeconds = 30 } = {}) {
  if (sync.status !== "ok" || !sync.next_attempt_at) return false;
  if (nowSeconds < sync.next_attempt_at + graceSeconds) return false;
  return lastAskedAt === null || nowSeconds - lastAskedAt >= minIntervalSeconds;
}

/** What to say instead of an empty table: never "no holdings" before the account was read once. */
function listStateText(itemCount, sync) {
  if (itemCount > 0) return "";
  return sync.last_success_at ? texts.list_empty : texts.list_unread;
}

/** Evaluation and P&L of a position at `price` (what a price update changes in a row). */
function valuation(price, quantity, avgPrice) {
  const cost = avgPrice * quantity;
  const evalAmount = price * quantity;
  const pnl = Math.round(evalAmount - cost);
  return { eval_amount: evalAmount, pnl, pnl_rate: cost ? Math.round((pnl / cost) * 10000) / 100 : 0 };
}

// --- connection: socket, heartbeat, reconnect -------------------------------------------------------

/**
 * Keeps one WebSocket open forever: reconnects with capped exponential backoff and jitter, pings
 * every `pingIntervalMs` and treats a socket that does not answer within `pongDeadlineMs` as dead
 * (a silent socket must not pass for a live one). Every message goes to `onMessage(type, data)`;
 * `onState` hears "connecting", "open", "waiting" (with delayMs and attempt) and "refused" (code).
 */
function createConnection({
  url,
  WebSocketImpl,
  onMessage = notifyListeners,
  onState = () => {},
  // Wrapped: a browser's setTimeout called as a method of another object throws "Illegal invocation".
  timers = { setTimeout: (fn, ms) => setTimeout(fn, ms), clearTimeout: (id) => clearTimeout(id) },
  random = Math.random,
  pingIntervalMs = 20000,
  pongDeadlineMs = 10000,
  backoff = {},
}) {
  let socket = null;
  let attempt = 0;
  let reconnectTimer = null;
  let pingTimer = null;
  let deadlineTimer = null;

  function clearTimers() {
    for (const timer of [reconnectTimer, pingTimer, deadlineTimer]) if (timer !== null) timers.clearTimeout(timer);
    reconnectTimer = pingTimer = deadlineTimer = null;
  }

  function open() {
    clearTimers();
    onState({ state: "connecting", attempt });
    const current = new WebSocketImpl(url);
    socket = current;
    current.onopen = () => {
      onState({ state: "open" });
      schedulePing();
    };
    current.onmessage = (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (error) {
        console.warn("watchlist: a message that is not JSON", error);
        return;
      }
      // Only a socket that delivers counts as connected: one that accepts and drops at once must
      // keep backing off.
      attempt = 0;
      if (data.type === WS_MESSAGE_TYPES.PONG && deadlineTimer !== null) {
        timers.clearTimeout(deadlineTimer);
        deadlineTimer = null;
        schedulePing();
      }
      onMessage(data.type, data);
    };
    current.onclose = (event) => dropped(current, event.code);
  }

  function dropped(which, code) {
    if (which !== socket) return; // a socket already abandoned
    which.onopen = which.onmessage = which.onclose = null;
    socket = null;
    clearTimers();
    if (code === CLOSE_UNAUTHENTICATED || code === CLOSE_FORBIDDEN) {
      onState({ state: "refused", code });
      return;
    }
    if (code === CLOSE_TOO_MANY) attempt = Math.max(attempt, TOO_MANY_ATTEMPTS);
    const delayMs = backoffDelay(attempt, random, backoff);
    attempt += 1;
    onState({ state: "waiting", delayMs, attempt });
    reconnectTimer = timers.setTimeout(open, delayMs);
  }

  function schedulePing() {
    if (pingTimer !== null) timers.clearTimeout(pingTimer);
    pingTimer = timers.setTimeout(ping, pingIntervalMs);
  }

  function ping() {
    pingTimer = null;
    if (!send({ type: "ping" })) return;
    if (deadlineTimer !== null) return; // still waiting for the previous answer
    deadlineTimer = timers.setTimeout(() => {
      deadlineTimer = null;
      const silent = socket;
      dropped(silent, "heartbeat");
      silent.close();
    }, pongDeadlineMs);
  }

  function send(message) {
    if (!socket || socket.readyState !== 1) return false;
    socket.send(JSON.stringify(message));
    return true;
  }

  return {
    start: open,
    send,
    isOpen: () => Boolean(socket) && socket.readyState === 1,
    /** Check the socket now (pages coming back from the background): ping it, or connect at once. */
    wake() {
      if (socket) {
        ping();
      } else {
        attempt = 0;
        open();
      }
    },
    close() {
      const current = socket;
      socket = null;
      clearTimers();
      if (current) current.close();
    },
  };
}

// --- orders: one Idempotency-Key per intended order until its fate is known ---------------------

/** Outcomes after which the order may still exist: its retry must carry the same key. */
const UNSETTLED_OUTCOMES = new Set(["state_unknown", "key_in_flight"]);

/**
 * The keys of intended orders whose fate is not yet known, by intent (side, code, qty, price,
 * account). A retried click after a network error, a 502 with an unknown state, or any answer that
 * does not settle the order reuses its key, so it can never become a second order.
 */
function createOrderIntents(newKey) {
  const keys = new Map();
  const idOf = (intent) => JSON.stringify([intent.side, intent.code, intent.body.qty, intent.body.price ?? null,
    intent.body.account ?? null]);
  return {
    keyFor(intent) {
      const id = idOf(intent);
      if (!keys.has(id)) keys.set(id, newKey());
      return keys.get(id);
    },
    settle(intent) { keys.delete(idOf(intent)); },
    get size() { return keys.size; },
  };
}

/**
 * Whether an answer settles the order (placed, or certainly not): an outcome other than an unknown
 * state, or a refusal of the request itself (400, 401, 403, 404). Server errors and 429 leave it open.
 */
function answerSettlesOrder(status, body) {
  if (body && typeof body.outcome === "string") return !UNSETTLED_OUTCOMES.has(body.outcome);
  return status >= 200 && status < 500 && status !== 409 && status !== 429;
}

/**
 * Send an intended order once per click, with its key; resolves to what the page shows:
 * {kind: "success" | "error" | "checking", message}. `fetchFn` is window.fetch (a fake in tests).
 */
async function sendOrder(fetchFn, intents, intent, csrfToken) {
  const key = intents.keyFor(intent);
  let response;
  let body;
  try {
    response = await fetchFn(`/execute-${intent.side}/${encodeURIComponent(intent.code)}`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken, "Idempotency-Key": key },
      body: JSON.stringify(intent.body),
    });
    body = await response.json().catch(() => null);
  } catch (error) {
    return { kind: "checking", message: texts.order_state_checking };
  }
  if (!answerSettlesOrder(response.status, body)) {
    return { kind: "checking", message: texts.order_state_checking };
  }
  intents.settle(intent);
  if (body?.success) return { kind: "success", message: body.message || texts.order_accepted };
  return { kind: "error", message: body?.message || `HTTP ${response.status}` };
}

if (typeof module !== "undefined" && module.exports) {
  module.exports = {
    WS_MESSAGE_TYPES, CLOSE_UNAUTHENTICATED, CLOSE_FORBIDDEN, CLOSE_TOO_MANY, CLOSE_FALLING_BEHIND,
    useTexts, fill,
    addListener, notifyListeners, classifyVersion, insertionIndex, planChanges, sameCodes, backoffDelay,
    formatGrouped, formatKrw, formatSignedKrw, formatSignedRate, direction, formatChange, clockKst, ago,
    syncStatusText, syncLooksStale, listStateText, valuation, createConnection,
    createOrderIntents, answerSettlesOrder, sendOrder,
  };
}

// --- the page ------------------------------------------------------------------------------------

function startWatchlistPage(doc, win) {
  const app = doc.getElementById("watchlist-app");
  const snapshotScript = doc.getElementById("watchlist-snapshot");
  bindAccountPicker(doc);
  if (!app || !snapshotScript) return;
  useTexts(JSON.parse(doc.getElementById("watchlist-texts").textContent));
  bindOrderForms(doc, app);

  const initial = JSON.parse(snapshotScript.textContent);
  const tbody = doc.getElementById("watchlist-rows");
  const listState = doc.getElementById("list-state");
  const syncLine = doc.getElementById("sync-status");
  const indicator = doc.getElementById("connection");
  const ticks = new Map(); // stock code -> last price_update, re-applied to re-rendered rows
  const state = { version: initial.version, sync: initial.sync, awaitingSnapshot: false, syncAskedAt: null };

  const rowOf = (code) => tbody.querySelector(`tr[data-code="${code}"]`);
  const codesOnScreen = () => Array.from(tbody.querySelectorAll("tr[data-code]"), (row) => row.dataset.code);

  function rowFromHtml(html) {
    const template = doc.createElement("template");
    template.innerHTML = html.trim();
    const row = template.content.firstElementChild;
    const tick = ticks.get(row.dataset.code);
    if (tick && tick.timestamp >= Number(row.dataset.updatedAt)) patchPrice(row, tick);
    return row;
  }

  function flash(row) {
    row.classList.add("flash");
    win.setTimeout(() => row.classList.remove("flash"), 1600);
  }

  // The totals block as the server rendered it (templates/watchlist/_totals.html); flashed when it changed.
  function renderTotals(html, { highlight }) {
    const current = doc.getElementById("account-totals");
    if (html === undefined || !current || current.outerHTML === html.trim()) return;
    const template = doc.createElement("template");
    template.innerHTML = html.trim();
    const totals = template.content.firstElementChild;
    current.replaceWith(totals);
    if (highlight) flash(totals);
  }

  function renderSync() {
    syncLine.textContent = syncStatusText(state.sync, Date.now() / 1000);
    syncLine.className = `sync sync--${state.sync.status}`;
    const text = listStateText(tbody.rows.length, state.sync);
    listState.textContent = text;
    listState.hidden = !text;
  }

  function resync() {
    if (state.awaitingSnapshot) return;
    state.awaitingSnapshot = connection.send({ type: "resync" });
  }

  addListener(WS_MESSAGE_TYPES.WATCHLIST_SNAPSHOT, (message) => {
    state.awaitingSnapshot = false;
    state.version = message.version;
    if (message.sync) state.sync = message.sync;
    tbody.replaceChildren(...message.full_list.map((item) => rowFromHtml(message.rows_html[item.stock_code])));
    renderTotals(message.totals_html, { highlight: false });
    app.dataset.version = String(message.version);
    renderSync();
  });

  addListener(WS_MESSAGE_TYPES.WATCHLIST_CHANGED, (message) => {
    if (state.awaitingSnapshot) return; // the snapshot on its way covers this change
    const verdict = classifyVersion(state.version, message.version);
    if (verdict === "stale") return;
    if (verdict === "gap") return resync();
    const { codes, ops } = planChanges(codesOnScreen(), message.changes);
    const rendered = ops.every(({ op, code }) => op === "remove" || code in message.rows_html);
    if (!rendered || !sameCodes(codes, message.full_list.map((item) => item.stock_code))) return resync();
    for (const { op, code, before } of ops) {
      if (op === "remove") {
        rowOf(code).remove();
        ticks.delete(code);
        continue;
      }
      const row = rowFromHtml(message.rows_html[code]);
      if (op === "replace") rowOf(code).replaceWith(row);
      else tbody.insertBefore(row, before === null ? null : rowOf(before));
      flash(row);
    }
    renderTotals(message.totals_html, { highlight: true });
    state.version = message.version;
    app.dataset.version = String(message.version);
    renderSync();
  });

  addListener(WS_MESSAGE_TYPES.SYNC_STATUS, (message) => {
    state.sync = message.sync;
    renderSync();
  });

  addListener(WS_MESSAGE_TYPES.PRICE_UPDATE, (message) => {
    ticks.set(message.stock_code, message);
    const row = rowOf(message.stock_code);
    if (row) patchPrice(row, message);
  });

  addListener(WS_MESSAGE_TYPES.ERROR, (message) => console.warn("watchlist: server says", message.message));

  const connectionText = {
    connecting: () => texts.connecting,
    open: () => texts.connected,
    waiting: ({ delayMs, attempt }) => {
      const seconds = Math.ceil(delayMs / 1000);
      return counted(texts.reconnecting_in, seconds, { seconds, attempt });
    },
    refused: ({ code }) => (code === CLOSE_UNAUTHENTICATED ? texts.refused_unauthenticated : texts.refused_forbidden),
  };

  const scheme = win.location.protocol === "https:" ? "wss" : "ws";
  const connection = createConnection({
    url: `${scheme}://${win.location.host}/ws/watchlist/?account=${initial.account.id}&render=html`,
    WebSocketImpl: win.WebSocket,
    onState(change) {
      indicator.dataset.state = change.state;
      indicator.textContent = connectionText[change.state](change);
      // The server sends a snapshot on every accepted connection: a reconnect redraws from it.
      if (change.state === "connecting") state.awaitingSnapshot = true;
    },
  });

  // A page back from the background may have slept through messages or a dead socket.
  doc.addEventListener("visibilitychange", () => {
    if (doc.visibilityState !== "visible") return;
    connection.wake();
    resync();
  });
  win.addEventListener("online", () => connection.wake());
  win.setInterval(() => {
    const now = Date.now() / 1000;
    if (doc.visibilityState === "visible" && syncLooksStale(state.sync, now, state.syncAskedAt)) {
      state.syncAskedAt = now;
      resync();
    }
    renderSync();
  }, 5000);
  connection.start();
}

function patchPrice(row, tick) {
  const cell = (field) => row.querySelector(`[data-field="${field}"]`);
  const value = valuation(tick.price, Number(row.dataset.quantity), Number(row.dataset.avgPrice));
  cell("current_price").textContent = formatKrw(tick.price);
  const change = cell("change");
  change.textContent = formatChange(tick.change, tick.change_rate);
  change.className = `change ${direction(tick.change)}`;
  cell("eval_amount").textContent = formatKrw(value.eval_amount);
  for (const [field, text] of [["pnl", formatSignedKrw(value.pnl)], ["pnl_rate", formatSignedRate(value.pnl_rate)]]) {
    cell(field).textContent = text;
    cell(field).className = `num ${direction(value[field])}`;
  }
}

function bindAccountPicker(doc) {
  const picker = doc.getElementById("account-picker");
  if (picker) picker.addEventListener("change", () => picker.form.submit());
}

function csrfToken(doc) {
  const match = doc.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : doc.querySelector("[name=csrfmiddlewaretoken]")?.value ?? "";
}

function newIdempotencyKey() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

/** Buy and sell forms: POST to the trade API (JSON, CSRF token, the intent's Idempotency-Key). */
function bindOrderForms(doc, app) {
  const output = doc.getElementById("order-message");
  const intents = createOrderIntents(newIdempotencyKey);
  for (const form of doc.querySelectorAll("form.order-form")) {
    const codeInput = form.elements.stock_code;
    codeInput.addEventListener("input", () => { codeInput.value = codeInput.value.toUpperCase(); });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button[type=submit]");
      const body = { qty: Number(form.elements.qty.value), account: Number(app.dataset.account) };
      if (form.elements.price.value) body.price = Number(form.elements.price.value);
      const intent = { side: form.dataset.side, code: codeInput.value.trim(), body };
      button.disabled = true;
      output.className = "order-message";
      output.textContent = texts.order_sending;
      try {
        const shown = await sendOrder(globalThis.fetch.bind(globalThis), intents, intent, csrfToken(doc));
        output.textContent = shown.message;
        output.className = `order-message is-${shown.kind}`;
        if (shown.kind === "success") form.reset();
      } finally {
        button.disabled = false;
      }
    });
  }
}

if (typeof document !== "undefined" && typeof window !== "undefined") {
  startWatchlistPage(document, window);
}
