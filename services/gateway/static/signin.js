// The sign-in page: posts the pasted key as JSON (the gateway sets its session cookie) and goes
// on to the page that sent the reader here (`data-next`, a path on this site the server chose).
"use strict";

(() => {
  const next = document.body.dataset.next || "/";
  const form = document.getElementById("signin");
  const problem = document.getElementById("signin-error");
  const send = document.getElementById("signin-send");

  // A link followed from another site carries no SameSite=Strict cookie, so a signed-in reader
  // lands here: this same-site request does carry it, and the gateway redirects when it is valid.
  fetch(window.location.href, { redirect: "manual" }).then((response) => {
    if (response.type === "opaqueredirect") window.location.replace(next);
  }).catch(() => {});

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.textContent = "";
    send.disabled = true;
    try {
      const response = await fetch("/signin", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ key: form.elements.key.value.trim() }),
      });
      if (response.ok) {
        window.location.replace(next);
        return;
      }
      let body = {};
      try { body = await response.json(); } catch (error) { /* not JSON */ }
      problem.textContent = response.status === 401
        ? "That is not a valid API key (or it was revoked)."
        : body.error || `The gateway answered ${response.status}.`;
    } catch (error) {
      problem.textContent = `Could not reach the gateway: ${error.message}`;
    } finally {
      send.disabled = false;
    }
  });
})();
