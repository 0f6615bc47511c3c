// The home page: the contact form (submit, then watch the workflow run), when /submit is on, and
// the live list.
"use strict";

(() => {
  const { followWorkflow, followFeed, refresher, jsonHeaders, ITEM_EVENTS } = window.relayflow;

  // ---- the list -------------------------------------------------------------------------
  const section = document.getElementById("workflows");
  const list = document.getElementById("list");
  const listQuery = section.dataset.listQuery;
  const rows = refresher(() => `/ui/list${listQuery ? `?${listQuery}` : ""}`, list);
  followFeed(section.dataset.feedQuery, { onChange: () => rows.schedule(), live: document.getElementById("list-live") });
  const filters = document.getElementById("filters");
  for (const select of filters.querySelectorAll("select")) {
    select.addEventListener("change", () => filters.requestSubmit());
  }

  // ---- the form -------------------------------------------------------------------------
  const form = document.getElementById("contact");
  // Not on the page when POST /submit is off (the page says how to start a workflow instead).
  if (!form) return;
  const send = document.getElementById("send");
  const formError = document.getElementById("form-error");
  const progress = document.getElementById("progress");
  const panel = document.getElementById("progress-panel");
  const open = document.getElementById("open-workflow");
  let following = null;
  // One key per distinct submission: a retry after a network error cannot start a second workflow.
  let idempotencyKey = null;
  form.addEventListener("input", () => { idempotencyKey = null; });

  function clearErrors() {
    formError.textContent = "";
    for (const p of form.querySelectorAll(".field-error")) p.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  function showErrors(body) {
    formError.textContent = body.error || "Something went wrong.";
    for (const field of body.fields || []) {
      const name = field.loc && field.loc[0];
      const slot = form.querySelector(`.field-error[data-for="${name}"]`);
      if (slot) {
        slot.textContent = field.message;
        form.elements[name].setAttribute("aria-invalid", "true");
      }
    }
  }

  function watch(workflowId) {
    if (following) following.close();
    open.href = `/ui/workflows/${encodeURIComponent(workflowId)}`;
    const state = refresher(() => `/ui/workflows/${encodeURIComponent(workflowId)}/panel?compact=1`, panel);
    state.now();
    // A map's item events do not refetch the panel (a map can send hundreds); its step events do.
    following = followWorkflow(workflowId, {
      onEvent: (type) => { if (!ITEM_EVENTS.has(type)) state.schedule(); },
      live: null,
    });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    send.disabled = true;
    const input = Object.fromEntries(new FormData(form).entries());
    idempotencyKey = idempotencyKey || (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`);
    try {
      const response = await fetch("/submit", {
        method: "POST",
        headers: jsonHeaders({ "Idempotency-Key": idempotencyKey }),
        body: JSON.stringify(input),
      });
      const body = await response.json();
      if (response.status !== 202) {
        showErrors(body);
        return;
      }
      idempotencyKey = null;
      form.hidden = true;
      progress.hidden = false;
      panel.textContent = "";
      watch(body.workflowId);
    } catch (error) {
      formError.textContent = `Could not reach the gateway: ${error.message}`;
    } finally {
      send.disabled = false;
    }
  });

  document.getElementById("again").addEventListener("click", () => {
    if (following) following.close();
    following = null;
    form.reset();
    progress.hidden = true;
    form.hidden = false;
    form.elements.name.focus();
  });
})();
