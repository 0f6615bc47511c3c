// A workflow's page: its state (refreshed from the server on every event) and its event
// history, appended row by row as the events arrive.
"use strict";

(() => {
  const { followWorkflow, refresher, eventRow, postAction } = window.relayflow;
  const workflowId = document.body.dataset.workflowId;
  const panel = document.getElementById("panel");
  const events = document.getElementById("events");
  const toast = document.getElementById("toast");
  const state = refresher(() => `/ui/workflows/${encodeURIComponent(workflowId)}/panel`, panel);

  const stream = followWorkflow(workflowId, {
    live: document.getElementById("live"),
    onEvent(type, body, seq) {
      events.append(eventRow(type, body, seq));
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
