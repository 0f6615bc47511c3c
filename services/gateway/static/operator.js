// The dead-letter pages: re-drive one dead letter, or all of them, through POST
// /dead-letters/redrive (with the session's CSRF token, as every POST from the pages). A
// re-driven letter leaves the queue, so its row goes; on its own page, the page says so.
"use strict";

(() => {
  const { jsonHeaders } = window.relayflow;
  const toast = document.getElementById("toast");

  function say(text, bad) {
    if (!toast) return;
    toast.textContent = text;
    toast.classList.toggle("bad", Boolean(bad));
    toast.hidden = false;
  }

  async function redrive(payload) {
    const response = await fetch("/dead-letters/redrive", {
      method: "POST", headers: jsonHeaders(), body: JSON.stringify(payload),
    });
    let body = {};
    try { body = await response.json(); } catch (error) { /* not JSON */ }
    return { ok: response.status === 200, status: response.status, body };
  }

  function removeRows(ids) {
    for (const row of document.querySelectorAll("#rows tr[data-message-id]")) {
      if (ids === null || ids.has(row.dataset.messageId)) row.remove();
    }
    const rows = document.getElementById("rows");
    if (rows && !rows.querySelector("tr")) {
      const empty = document.createElement("tr");
      empty.className = "empty";
      const cell = document.createElement("td");
      cell.colSpan = 6;
      cell.textContent = "No dead letters.";
      empty.append(cell);
      rows.append(empty);
    }
  }

  document.addEventListener("click", async (event) => {
    const one = event.target.closest("button[data-redrive]");
    const all = event.target.closest("button[data-redrive-all]");
    if (!one && !all) return;
    const button = one || all;
    button.disabled = true;
    try {
      const result = await redrive(one ? { messageIds: [one.dataset.redrive] } : { all: true });
      if (result.ok) {
        const sent = result.body.redriven || [];
        say(sent.length === 1
          ? `Re-drove ${sent[0].messageId} to ${sent[0].exchange} / ${sent[0].routingKey}.`
          : `Re-drove ${sent.length} dead letters.`);
        removeRows(one ? new Set(sent.map((letter) => letter.messageId)) : null);
        const box = document.getElementById("redrive-all-box");
        if (box && all) box.remove();
        if (document.getElementById("dead-letter")) button.remove();
      } else {
        say(result.body.error || `The gateway answered ${result.status}.`, true);
        if (result.status === 401) window.location.assign(`/signin?next=${encodeURIComponent(location.pathname)}`);
      }
    } catch (error) {
      say(`Could not reach the gateway: ${error.message}`, true);
    } finally {
      if (button.isConnected) button.disabled = false;
    }
  });
})();
