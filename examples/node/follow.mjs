// Follow a workflow's events over SSE (`GET /workflows/{id}/events`) with the `eventsource`
// package, until its terminal event. A dropped connection (a network blip, a gateway restart)
// is reopened by the package itself, which sends the id of the last event it received as
// `Last-Event-ID`: the gateway replays what came after it, so no event is missed or repeated.
//
//   node follow.mjs WORKFLOW_ID [--last-event-id N] [--drop-after N] [--timeout SECONDS]
//
// --last-event-id N  start after event N (as a client that saw 1..N before it went away)
// --drop-after N     close the connection after N events and open a new one that resumes
//                    after the last event seen (an explicit resume, without a broken network)
//
// Prints one JSON line per connection made ({"connect": n, "lastEventId": id or null}) and per
// event ({"id", "event", "data"}); exits 0 after the terminal event, 1 if the stream fails or
// the time runs out. RELAYFLOW_URL is the gateway (default http://127.0.0.1:8000);
// RELAYFLOW_API_KEY, when the gateway asks for a key.

import { parseArgs } from "node:util";
import { EventSource } from "eventsource";
import { settings, TERMINAL_EVENTS, workflowEventNames } from "./relayflow.mjs";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    "last-event-id": { type: "string" },
    "drop-after": { type: "string" },
    timeout: { type: "string", default: "120" },
  },
});
if (positionals.length !== 1) {
  console.error("follow.mjs: give one workflow id");
  process.exit(2);
}
const [workflowId] = positionals;
const dropAfter = values["drop-after"] === undefined ? null : Number(values["drop-after"]);
const url = `${settings.gatewayUrl}/workflows/${encodeURIComponent(workflowId)}/events`;
const apiKey = process.env.RELAYFLOW_API_KEY;

let connects = 0;
let received = 0;
// The last event id seen, for a resume this program opens itself.
let lastSeen = values["last-event-id"] ?? null;

const emit = (line) => console.log(JSON.stringify(line));

function open(resumeAfter) {
  // The package sets Last-Event-ID on its own reconnects; a first connection that resumes
  // sets it here, as a browser that kept the id would.
  const fetchWithHeaders = (input, init) => {
    const headers = { ...init.headers };
    if (resumeAfter !== null && headers["Last-Event-ID"] === undefined) {
      headers["Last-Event-ID"] = resumeAfter;
    }
    if (apiKey) {
      headers.Authorization = `Bearer ${apiKey}`;
    }
    connects += 1;
    emit({ connect: connects, lastEventId: headers["Last-Event-ID"] ?? null });
    return fetch(input, { ...init, headers });
  };
  const source = new EventSource(url, { fetch: fetchWithHeaders });
  const onEvent = (event) => {
    if (source.readyState === EventSource.CLOSED) {
      return; // one this program dropped: its replacement resumes after `lastSeen`
    }
    received += 1;
    lastSeen = event.lastEventId;
    emit({ id: event.lastEventId, event: event.type, data: JSON.parse(event.data) });
    if (TERMINAL_EVENTS.has(event.type)) {
      source.close();
      process.exit(0);
    }
    if (dropAfter !== null && received === dropAfter) {
      source.close();
      open(lastSeen);
    }
  };
  for (const name of workflowEventNames()) {
    source.addEventListener(name, onEvent);
  }
  source.addEventListener("error", (error) => {
    if (source.readyState === EventSource.CLOSED) {
      console.error(`follow.mjs: the stream failed for good: ${error.message ?? "closed"}`);
      process.exit(1);
    }
    // CONNECTING: the package reconnects by itself after the gateway's `retry` delay.
    console.error(`follow.mjs: disconnected (${error.message ?? "stream ended"}); reconnecting`);
  });
}

open(lastSeen);
setTimeout(() => {
  console.error(`follow.mjs: no terminal event within ${values.timeout} s`);
  process.exit(1);
}, Number(values.timeout) * 1000);
