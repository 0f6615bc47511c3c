// Shared by the dashboard's pages: following event streams and swapping in server-rendered HTML.
"use strict";

window.relayflow = (() => {
  const EVENT_TYPES = [
    "workflow.started", "workflow.completed", "workflow.failed", "workflow.cancelled",
    "workflow.retried", "step.started", "step.completed", "step.failed", "step.retrying",
    "step.sleeping", "signal.received",
    // Compensation: a failed or cancelled run undoes its completed compensable steps.
    "workflow.compensating", "workflow.compensated", "workflow.compensation_failed",
    "step.compensating", "step.compensated", "step.compensation_failed",
  ];
  // A map step's item-level events: a workflow's page follows them (they update its progress
  // bar and item rows in place); they never change the list, so the feed does not.
  const ITEM_EVENT_TYPES = ["step.progress", "step.item.retrying", "step.item.failed"];
  const ITEM_EVENTS = new Set(ITEM_EVENT_TYPES);
  const TERMINAL = new Set([
    "workflow.completed", "workflow.failed", "workflow.cancelled",
    "workflow.compensated", "workflow.compensation_failed",
  ]);

  // <time datetime> elements rendered in UTC by the server, shown in the reader's time zone.
  function localTimes(root) {
    const today = new Date().toDateString();
    for (const el of root.querySelectorAll("time[datetime]")) {
      const at = new Date(el.dateTime);
      if (Number.isNaN(at.getTime())) continue;
      el.textContent = at.toDateString() === today ? at.toLocaleTimeString() : at.toLocaleString();
      el.title = at.toISOString();
    }
  }

  // Replace `target`'s content with server-rendered HTML, keeping <details data-key> open or
  // closed as the reader left them.
  function swap(target, html) {
    const state = new Map();
    for (const el of target.querySelectorAll("details[data-key]")) state.set(el.dataset.key, el.open);
    target.innerHTML = html;
    for (const el of target.querySelectorAll("details[data-key]")) {
      if (state.has(el.dataset.key)) el.open = state.get(el.dataset.key);
    }
    localTimes(target);
  }

  // Fetch a fragment into `target` soon; requests never overlap, and calls that arrive while
  // one is in flight coalesce into a single next request.
  function refresher(url, target, after) {
    let busy = false;
    let again = false;
    let timer = null;
    async function run() {
      if (busy) { again = true; return; }
      busy = true;
      try {
        const response = await fetch(url(), { headers: { Accept: "text/html" } });
        if (response.status === 401) { toSignIn(); return; }
        if (response.ok || response.status === 404) {
          swap(target, await response.text());
          if (after) after();
        }
      } catch (error) {
        // The gateway is away; the next event or reconnect refreshes again.
      } finally {
        busy = false;
        if (again) { again = false; schedule(); }
      }
    }
    function schedule(delay = 100) {
      clearTimeout(timer);
      timer = setTimeout(run, delay);
    }
    return { schedule, now: run };
  }

  // Signed in (services/gateway/sessions.py), a page holds its session's CSRF token: every POST
  // sends it, and event streams open with a stream token. Open, or with no keys, neither exists.
  const CSRF = document.querySelector('meta[name="relayflow-csrf"]')?.content || "";

  function jsonHeaders(extra = {}) {
    return { "Content-Type": "application/json", ...(CSRF ? { "X-CSRF-Token": CSRF } : {}), ...extra };
  }

  function toSignIn() {
    const here = window.location.pathname + window.location.search;
    window.location.assign(`/signin?next=${encodeURIComponent(here)}`);
  }

  // The URL of an event stream: with a fresh stream token when signed in (EventSource cannot send
  // headers; the cookie would do same-origin too, but a token is what any page can use, so the
  // dashboard uses it like any other client). `scope`: {workflowId} or {list: true}.
  async function streamUrl(path, query, scope) {
    const params = new URLSearchParams(query);
    if (CSRF) {
      const response = await fetch("/stream-tokens", {
        method: "POST", headers: jsonHeaders(), body: JSON.stringify(scope),
      });
      if (response.status === 401) { toSignIn(); throw new Error("signed out"); }
      if (!response.ok) throw new Error(`no stream token: the gateway answered ${response.status}`);
      params.set("token", (await response.json()).token);
    }
    const text = params.toString();
    return text ? `${path}?${text}` : path;
  }

  function setLive(el, state, text) {
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text || state;
  }

  // Follow one workflow's events. The gateway replays what came after `lastEventId`, so a
  // reconnect (ours or the browser's) neither loses nor repeats an event. A stream that has
  // delivered the terminal event ends, and the reconnect is answered 204: the end. After a
  // retry is requested, `expectMore()` keeps reconnecting until the workflow runs again.
  function followWorkflow(workflowId, { onEvent, live }) {
    let source = null;
    let lastSeq = 0;
    let finished = false;
    let expectUntil = 0;
    let backoff = 250;
    let timer = null;
    let connecting = false;
    let closed = false;

    function retry() {
      setLive(live, "reconnecting", "reconnecting…");
      timer = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 4000);
    }

    async function connect() {
      timer = null;
      connecting = true;
      let url;
      try {
        const path = `/workflows/${encodeURIComponent(workflowId)}/events`;
        url = await streamUrl(path, lastSeq ? `lastEventId=${lastSeq}` : "", { workflowId });
      } catch (error) {
        connecting = false;
        if (!closed) retry();
        return;
      }
      connecting = false;
      if (closed) return;
      source = new EventSource(url);
      const mine = source;
      source.onopen = () => { backoff = 250; if (!finished) setLive(live, "live"); };
      for (const type of [...EVENT_TYPES, ...ITEM_EVENT_TYPES]) {
        source.addEventListener(type, (message) => {
          const seq = Number(message.lastEventId) || 0;
          if (seq) lastSeq = seq;
          if (TERMINAL.has(type)) finished = true;
          if (type === "workflow.retried" || type === "workflow.started") {
            finished = false;
            expectUntil = 0;
          }
          setLive(live, finished ? "finished" : "live");
          onEvent(type, JSON.parse(message.data), seq);
        });
      }
      source.addEventListener("workflow.unknown", () => {
        mine.close();
        source = null;
        setLive(live, "unknown", "not found");
      });
      source.onerror = () => {
        if (mine.readyState !== EventSource.CLOSED) {
          // The browser reconnects by itself (with Last-Event-ID).
          if (!finished) setLive(live, "reconnecting", "reconnecting…");
          return;
        }
        // Closed for good: a 204 (nothing more to send) or an HTTP error.
        source = null;
        if (finished && Date.now() >= expectUntil) {
          setLive(live, "finished");
          return;
        }
        retry();
      };
    }

    connect();
    return {
      expectMore(seconds = 30) {
        expectUntil = Date.now() + seconds * 1000;
        backoff = 250;
        if (!source && !timer && !connecting) connect();
      },
      close() {
        closed = true;
        clearTimeout(timer);
        if (source) source.close();
        source = null;
      },
    };
  }

  // The feed of every workflow's events (GET /events). Any event — or a `reset`, which also
  // opens every connection — means the list may have changed: `onChange` refetches it.
  async function followFeed(query, { onChange, live }) {
    const again = () => setTimeout(() => followFeed(query, { onChange, live }), 2000);
    let url;
    try {
      url = await streamUrl("/events", query, { list: true });
    } catch (error) {
      setLive(live, "reconnecting", "reconnecting…");
      again();
      return;
    }
    const source = new EventSource(url);
    source.onopen = () => setLive(live, "live");
    source.onerror = () => {
      setLive(live, "reconnecting", "reconnecting…");
      if (source.readyState === EventSource.CLOSED) again();
    };
    for (const type of ["reset", ...EVENT_TYPES]) source.addEventListener(type, () => onChange(type));
  }

  function summary(type, body) {
    const data = body.data || {};
    const error = data.error;
    if (type === "step.retrying") {
      const why = error ? `${error.type}: ${error.message}` : "failed";
      return `attempt ${data.attempt} ${why}; attempt ${data.nextAttempt} at ${new Date(data.nextAttemptAt).toLocaleTimeString()}`;
    }
    if (type === "step.item.retrying") {
      const why = error ? `${error.type}: ${error.message}` : "failed";
      return `attempt ${data.attempt} ${why}; next at ${new Date(data.nextAttemptAt).toLocaleTimeString()}`;
    }
    if (type === "signal.received") {
      // Who sent what: the sender as the sender said (null when not said), then the payload.
      const text = `${data.signal} from ${data.sentBy || "(no sender given)"}: ${JSON.stringify(data.payload || {})}`;
      return text.length > 200 ? `${text.slice(0, 197)}…` : text;
    }
    if (type === "step.sleeping") {
      return `attempt ${data.attempt}; wakes at ${new Date(data.wakeAt).toLocaleTimeString()}`;
    }
    if (type === "step.progress") {
      return `${data.completed} completed, ${data.failed} failed, ${data.running} running of ${data.total}`;
    }
    if (error && typeof error === "object") return `${error.type}: ${error.message}`;
    const keys = Object.keys(data).filter((key) => data[key] !== null && data[key] !== "");
    if (!keys.length) return "";
    const text = JSON.stringify(Object.fromEntries(keys.map((key) => [key, data[key]])));
    return text.length > 160 ? `${text.slice(0, 157)}…` : text;
  }

  // One row of a workflow's event history; `data-seq` is the event's number.
  function eventRow(type, body, seq) {
    const row = document.createElement("tr");
    row.dataset.seq = String(seq);
    row.dataset.event = type;
    const step = body.stepKey != null ? `${body.stepName || ""}[${body.stepKey}]` : body.stepName || "";
    const cells = [String(seq), "", "", step, summary(type, body)];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      row.append(td);
    }
    const at = document.createElement("time");
    at.dateTime = body.createdAt || "";
    row.children[1].append(at);
    const tag = document.createElement("span");
    tag.className = `ev ev-${type.replaceAll(".", "-")}`;
    tag.textContent = type;
    row.children[2].append(tag);
    row.children[4].className = "details";
    localTimes(row);
    return row;
  }

  // POST `body` as JSON (the gateway takes only JSON posts: its guard against other sites'
  // pages; an action's body is an empty object), under a fresh Idempotency-Key.
  async function postAction(url, body = {}, headers = {}) {
    const key = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
    const response = await fetch(url, {
      method: "POST",
      headers: jsonHeaders({ "Idempotency-Key": key, ...headers }),
      body: JSON.stringify(body),
    });
    let answer = {};
    try { answer = await response.json(); } catch (error) { /* not JSON */ }
    return { ok: response.status === 202, status: response.status, body: answer };
  }

  // Sign out (the button is on every page while signed in), then to the sign-in page.
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-sign-out]");
    if (!button) return;
    button.disabled = true;
    try {
      await fetch("/signout", { method: "POST", headers: jsonHeaders(), body: "{}" });
    } finally {
      window.location.assign("/signin");
    }
  });

  localTimes(document);
  return {
    followWorkflow, followFeed, refresher, eventRow, postAction, localTimes, swap, setLive, ITEM_EVENTS,
    TERMINAL, jsonHeaders,
  };
})();
