// A workflow's page: its state (refreshed from the server on every step and workflow event) and
// its event history, appended row by row as the events arrive. A map step's item events never
// refetch the state — a map of 10,000 items sends hundreds — they update its progress bar and
// the rows of its items in place. Its signal forms (server-rendered from each signal's model) post
// to the signal route while the workflow runs; their `signal.received` events show in the history.
"use strict";

(() => {
  const { followWorkflow, refresher, eventRow, postAction, ITEM_EVENTS } = window.relayflow;
  // A compensating run takes no signals either (they are ignored until it ends).
  const TERMINAL_TYPES = new Set([...window.relayflow.TERMINAL, "workflow.compensating"]);
  const workflowId = document.body.dataset.workflowId;
  const panel = document.getElementById("panel");
  const events = document.getElementById("events");
  const toast = document.getElementById("toast");
  let signals = document.getElementById("signals");
  // A page opened before the orchestrator started the run (the link followed right after the
  // start) knows nothing of its definition yet: it fetches its signals card once the run shows.
  let signalsPending = !signals && panelStatus() === "accepted";
  // The latest step.progress of each map step, with its seq: a panel fetched before it arrived
  // (its data-last-seq is older) gets it again once swapped in.
  const progress = new Map();
  const state = refresher(
    () => `/ui/workflows/${encodeURIComponent(workflowId)}/panel`,
    panel,
    () => { reapplyProgress(); showSignals(); },
  );

  function panelStatus() {
    return (panel.querySelector(".panel") || {}).dataset?.status;
  }

  // Signals are for a running workflow: the card follows the status the panel shows.
  function showSignals() {
    if (signalsPending && panelStatus() !== "accepted") {
      signalsPending = false;
      fetchSignals();
    }
    if (signals) signals.hidden = panelStatus() !== "running";
  }

  async function fetchSignals() {
    try {
      const response = await fetch(`/ui/workflows/${encodeURIComponent(workflowId)}`, { headers: { Accept: "text/html" } });
      if (!response.ok) return;
      const card = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("signals");
      if (!card || document.getElementById("signals")) return;
      toast.after(document.adoptNode(card));
      signals = card;
      signals.hidden = panelStatus() !== "running";
    } catch (error) {
      // The gateway is away: the page works without the card; a reload brings it.
    }
  }

  function showProgress(step, data) {
    const box = panel.querySelector(`[data-map-step="${CSS.escape(step)}"]`);
    if (!box) return;
    const counts = {};
    for (const part of ["total", "completed", "failed", "running"]) counts[part] = Number(data[part]) || 0;
    const total = Math.max(counts.total, 1);
    for (const part of ["completed", "failed", "running"]) {
      const bar = box.querySelector(`[data-part="${part}"]`);
      if (bar) bar.style.width = `${((100 * counts[part]) / total).toFixed(2)}%`;
    }
    for (const [part, value] of Object.entries(counts)) {
      const count = box.querySelector(`[data-count="${part}"]`);
      if (count) count.textContent = String(value);
    }
    const bar = box.querySelector('[role="progressbar"]');
    if (bar) {
      bar.setAttribute("aria-valuemax", String(counts.total));
      bar.setAttribute("aria-valuenow", String(counts.completed + counts.failed));
    }
  }

  function reapplyProgress() {
    const shown = Number((panel.querySelector(".panel") || {}).dataset?.lastSeq) || 0;
    for (const [step, latest] of progress) {
      if (latest.seq > shown) showProgress(step, latest.data);
    }
  }

  // step.item.retrying / step.item.failed: the item's row, if it is one of those shown.
  function showItem(type, body) {
    const card = panel.querySelector(`[data-step="${CSS.escape(body.stepName || "")}"]`);
    const row = card && card.querySelector(`tr[data-item-key="${CSS.escape(String(body.stepKey))}"]`);
    if (!row) return;
    const status = type.split(".").pop(); // the event names the status the item is now in
    row.dataset.status = status;
    const pill = row.querySelector(".pill");
    if (pill) {
      pill.className = `pill s-${status}`;
      pill.textContent = status;
    }
    const error = (body.data || {}).error;
    const details = row.querySelector(".details");
    if (details && error) details.textContent = `${error.type}: ${error.message}`;
  }

  const stream = followWorkflow(workflowId, {
    live: document.getElementById("live"),
    onEvent(type, body, seq) {
      events.append(eventRow(type, body, seq));
      if (ITEM_EVENTS.has(type)) {
        if (type === "step.progress") {
          progress.set(body.stepName, { seq, data: body.data || {} });
          showProgress(body.stepName, body.data || {});
        } else {
          showItem(type, body);
        }
        return;
      }
      if (type === "workflow.cancelled" || type === "workflow.retried") toast.hidden = true;
      if (signals && TERMINAL_TYPES.has(type)) signals.hidden = true;
      state.schedule();
    },
  });

  function say(text, bad) {
    toast.textContent = text;
    toast.classList.toggle("bad", Boolean(bad));
    toast.hidden = false;
  }

  panel.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const action = button.dataset.action;
    button.disabled = true;
    try {
      const result = await postAction(`/workflows/${encodeURIComponent(workflowId)}/${action}`);
      if (result.ok) {
        say(action === "cancel" ? "Cancel requested…" : "Retry requested…");
        if (action === "retry") stream.expectMore();
      } else {
        say(result.body.error || `The gateway answered ${result.status}.`, true);
        state.schedule(0);
      }
    } catch (error) {
      say(`Could not reach the gateway: ${error.message}`, true);
    } finally {
      button.disabled = false;
    }
  });

  // A signal form's payload, from its controls (see services/gateway/forms.py): an empty
  // control is left out (the model's default applies, or the gateway says it is required).
  function payloadOf(form, submitter) {
    const payload = {};
    for (const control of form.querySelectorAll("[data-field]")) {
      const name = control.dataset.field;
      const kind = control.dataset.kind;
      if (kind === "boolean") { payload[name] = control.checked; continue; }
      if (kind === "choice") {
        const option = control.selectedOptions[0];
        if (option && option.dataset.json) payload[name] = JSON.parse(option.dataset.json);
        continue;
      }
      const raw = control.value;
      if (raw.trim() === "") continue;
      if (kind === "integer" || kind === "number") {
        const number = Number(raw);
        // Not a number: sent as typed, so that the gateway's 422 names the field.
        payload[name] = Number.isFinite(number) ? number : raw;
      } else if (kind === "json") {
        try { payload[name] = JSON.parse(raw); } catch (error) { throw { field: name, message: "not valid JSON" }; }
      } else {
        payload[name] = raw;
      }
    }
    if (submitter && submitter.dataset.set) payload[submitter.dataset.set] = submitter.dataset.value === "true";
    return payload;
  }

  function fieldErrors(form, fields) {
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    for (const field of fields) {
      const name = String((field.loc || [])[0] ?? "");
      const slot = form.querySelector(`.field-error[data-for="${CSS.escape(name)}"]`);
      if (slot) slot.textContent = field.message;
      const control = form.querySelector(`[data-field="${CSS.escape(name)}"]`);
      if (control) control.setAttribute("aria-invalid", "true");
    }
  }

  // Delegated: a card fetched later (see fetchSignals) works the same.
  document.addEventListener("submit", async (event) => {
    const form = event.target.closest("#signals form[data-signal]");
    if (!form) return;
    event.preventDefault();
    const signal = form.dataset.signal;
    const problem = form.querySelector("[data-form-error]");
    problem.textContent = "";
    let payload;
    try {
      payload = payloadOf(form, event.submitter);
    } catch (error) {
      fieldErrors(form, [{ loc: [error.field], message: error.message }]);
      return;
    }
    fieldErrors(form, []);
    const sender = document.getElementById("signal-sender").value.trim();
    const buttons = form.querySelectorAll("button");
    for (const button of buttons) button.disabled = true;
    try {
      const url = `/workflows/${encodeURIComponent(workflowId)}/signals/${encodeURIComponent(signal)}`;
      const result = await postAction(url, payload, sender ? { "X-Relayflow-Sender": sender } : {});
      if (result.ok) {
        say(`Signal ${signal} sent.`);
      } else {
        fieldErrors(form, result.body.fields || []);
        problem.textContent = result.body.error || `The gateway answered ${result.status}.`;
        if (result.status === 409) state.schedule(0);
      }
    } catch (error) {
      // A sender that is not ASCII cannot be a header: fetch refuses it before sending.
      problem.textContent = `Could not send the signal: ${error.message}`;
    } finally {
      for (const button of buttons) button.disabled = false;
    }
  });
})();
