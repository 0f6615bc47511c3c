// Start a `quote` workflow through the broker: a StartWorkflow on `workflow.start`, persistent,
// mandatory, confirmed. The workflow id is derived from the idempotency key as the gateway
// derives it, so publishing again (or POSTing with the same Idempotency-Key) runs it once.
//
//   node start.mjs --key order-42 [--input '{"currency": "eur", "items": [...]}'] [--workflow quote]
//
// Prints {"workflowId": …, "messageId": …} once the broker has confirmed the start.

import { parseArgs } from "node:util";
import amqp from "amqplib";
import { confirmedPublisher, newMessageId, START_KEY, settings, workflowIdForKey } from "./relayflow.mjs";

const EXAMPLE_INPUT = {
  currency: "eur",
  items: [
    { sku: "B-2", qty: 1, unitCents: 1000 },
    { sku: "A-1", qty: 3, unitCents: 250 },
  ],
};

const { values } = parseArgs({
  options: {
    key: { type: "string" },
    input: { type: "string" },
    workflow: { type: "string", default: "quote" },
  },
});
if (!values.key) {
  console.error("start.mjs: --key is required (the idempotency key the workflow id comes from)");
  process.exit(2);
}
let input = EXAMPLE_INPUT;
if (values.input) {
  try {
    input = JSON.parse(values.input);
  } catch (error) {
    console.error(`start.mjs: --input is not JSON: ${error.message}`);
    process.exit(2);
  }
}

const start = {
  type: "StartWorkflow",
  schemaVersion: 1,
  messageId: newMessageId(),
  workflowId: workflowIdForKey(values.workflow, values.key),
  idempotencyKey: values.key,
  createdAt: new Date().toISOString(),
  workflowName: values.workflow,
  input,
};

const connection = await amqp.connect(settings.amqpUrl);
try {
  const channel = await connection.createConfirmChannel();
  await confirmedPublisher(channel)(START_KEY, start);
  await channel.close();
} finally {
  await connection.close();
}
console.log(JSON.stringify({ workflowId: start.workflowId, messageId: start.messageId }));
