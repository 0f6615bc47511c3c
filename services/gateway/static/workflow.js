// A workflow's page: its state (refreshed from the server on every step and workflow event) and
// its event history, appended row by row as the events arrive. A map step's item events never
// refetch the state — a map of 10,000 items sends hundreds — they update its progress bar and
// the rows of its items in place.
"use strict";

(() => {
  const { followWorkflow, refresher, eventRow, postAction, ITEM_EVENTS } = window.relayflow;
  const workflowId = document.body.dataset.workflowId;
  const panel = document.getElementById("panel");
  const events = document.getElementById("events");
  const toast = document.getElementById("toast");
  // The latest step.progress of each map step, with its seq: a panel fetched before it arrived
  // (its data-last-seq is older) gets it again once swapped in.
  const progress = new Map();
  const state = refresher(
    () => `/ui/workflows/${encodeURIComponent(workflowId)}/panel`,
    panel,
    reapplyProgress,
  );

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
})();
