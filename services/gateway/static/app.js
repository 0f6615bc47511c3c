// The contact form: submit, show field errors from a 422, then follow the workflow live.
"use strict";

const form = document.getElementById("contact");
const send = document.getElementById("send");
const formError = document.getElementById("form-error");
const progress = document.getElementById("progress");
const stepsList = document.getElementById("steps");
const statusEl = document.getElementById("workflow-status");
let source = null;
let fetches = 0;
// One key per distinct submission: a retry after a network error cannot start a second workflow.
let idempotencyKey = null;
form.addEventListener("input", () => { idempotencyKey = null; });

function setStatus(el, status) {
  el.textContent = status;
  el.className = "status " + status;
}

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

function renderSteps(steps) {
  stepsList.replaceChildren(...steps.map((step) => {
    const li = document.createElement("li");
    li.dataset.step = step.name;
    const name = document.createElement("span");
    name.textContent = step.name;
    const status = document.createElement("span");
    setStatus(status, step.status);
    li.append(name, status);
    return li;
  }));
}

function setStep(name, status) {
  let li = stepsList.querySelector(`li[data-step="${CSS.escape(name)}"]`);
  if (!li) {
    renderSteps([...stepsList.children].map((el) => ({
      name: el.dataset.step, status: el.lastChild.textContent,
    })).concat([{ name, status }]));
    li = stepsList.querySelector(`li[data-step="${CSS.escape(name)}"]`);
  }
  setStatus(li.lastChild, status);
}

async function loadSteps(workflowId) {
  const mine = ++fetches;
  const response = await fetch(`/workflows/${encodeURIComponent(workflowId)}`);
  if (response.ok && mine === fetches) {
    const view = await response.json();
    renderSteps(view.steps);
    setStatus(statusEl, view.status);
  }
}

function follow(workflowId) {
  if (source) source.close();
  source = new EventSource(`/workflows/${encodeURIComponent(workflowId)}/events`);
  const on = (type, handler) => source.addEventListener(type, (e) => handler(JSON.parse(e.data)));
  on("workflow.started", () => { setStatus(statusEl, "running"); loadSteps(workflowId); });
  on("step.started", (ev) => setStep(ev.stepName, "running"));
  on("step.completed", (ev) => setStep(ev.stepName, "completed"));
  on("step.failed", (ev) => setStep(ev.stepName, (ev.data && ev.data.willRetry) ? "running" : "failed"));
  const finish = (status) => () => { setStatus(statusEl, status); source.close(); loadSteps(workflowId); };
  on("workflow.completed", finish("completed"));
  on("workflow.failed", finish("failed"));
  on("workflow.unknown", (body) => { formError.textContent = body.error; source.close(); });
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
      headers: { "Content-Type": "application/json", "Idempotency-Key": idempotencyKey },
      body: JSON.stringify(input),
    });
    const body = await response.json();
    if (response.status !== 202) {
      showErrors(body);
      return;
    }
    idempotencyKey = null;
    document.getElementById("workflow-id").textContent = body.workflowId;
    setStatus(statusEl, "accepted");
    renderSteps([]);
    form.hidden = true;
    progress.hidden = false;
    follow(body.workflowId);
    loadSteps(body.workflowId);
  } catch (error) {
    formError.textContent = `Could not reach the gateway: ${error.message}`;
  } finally {
    send.disabled = false;
  }
});

document.getElementById("again").addEventListener("click", () => {
  if (source) source.close();
  form.reset();
  progress.hidden = true;
  form.hidden = false;
});
