// What a program outside Python needs to speak relayflow's broker contract, written from
// schemas/ (the JSON Schemas and asyncapi.yaml) and the README: names, ids and settings.

import { createHash, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";

// The settings the services read, under the same names.
export const settings = {
  amqpUrl: process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/",
  namespace: process.env.RELAYFLOW_NAMESPACE ?? "relayflow",
  gatewayUrl: (process.env.RELAYFLOW_URL ?? "http://127.0.0.1:8000").replace(/\/+$/, ""),
};

// The topology (asyncapi.yaml, channels): one direct exchange named like the namespace; starts
// go on `workflow.start`, results on `step.result`, a step body's commands arrive on its queue.
export const START_KEY = "workflow.start";
export const RESULT_KEY = "step.result";
export const exchangeName = () => settings.namespace;
export const stepQueue = (body) => `${settings.namespace}.step.${body}`;

const CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz";

// 26 lowercase Crockford-base32 digits of a 16-byte value read as one big-endian 128-bit
// number, most significant digit first (26 x 5 = 130 bits: the first digit is always 0-7).
export function base32(bytes) {
  let number = BigInt(`0x${Buffer.from(bytes).toString("hex")}`);
  let digits = "";
  for (let i = 0; i < 26; i += 1) {
    digits = CROCKFORD[Number(number & 31n)] + digits;
    number >>= 5n;
  }
  return digits;
}

// The workflow id an idempotency key stands for, as the gateway derives it (README, "Starting a
// workflow straight from the broker"), so that a start here and a POST with the same
// Idempotency-Key name one run.
export function workflowIdForKey(workflowName, key, tenant = "default") {
  let text = `${workflowName}\u0000${key}`;
  if (tenant !== "default") {
    text = `tenant:${tenant}\u0000${text}`;
  }
  const digest = createHash("sha256").update(text, "utf8").digest();
  return `wf_${base32(digest.subarray(0, 16))}`;
}

// The id of the StepResult that answers one attempt of one invocation: deterministic, so that
// an answer sent twice (a redelivered command) is one input to the orchestrator's inbox.
export function resultId(command) {
  const key = command.stepKey ?? "0";
  return `res:${command.workflowId}:${command.stepName}:${key}:${command.attempt}`;
}

export const newMessageId = () => `msg_${randomUUID()}`;

// Every event name a workflow's stream can carry: the WorkflowEvent schema's enum, plus the one
// the gateway sends for a workflow nobody started.
export function workflowEventNames() {
  const url = new URL("../../schemas/WorkflowEvent.schema.json", import.meta.url);
  const schema = JSON.parse(readFileSync(url, "utf8"));
  return [...schema.$defs.EventType.enum, "workflow.unknown"];
}

export const TERMINAL_EVENTS = new Set([
  "workflow.completed",
  "workflow.failed",
  "workflow.cancelled",
  "workflow.compensated",
  "workflow.compensation_failed",
  "workflow.unknown",
]);

// The AMQP properties every relayflow publisher sets. Consumers read only the body, so none is
// required; `messageId` is what `relayflow dead-letters` lists, shows and redrives by.
export function publishOptions(message) {
  return {
    persistent: true,
    mandatory: true,
    contentType: "application/json",
    messageId: message.messageId,
    type: message.type,
    headers: { "x-schema-version": message.schemaVersion },
  };
}

// A publisher on a confirm channel that waits for the broker's confirm of each message; one
// no queue is bound for (mandatory: returned before its confirm) or that the broker refuses is
// an error, never a silent drop.
export function confirmedPublisher(channel) {
  const returned = new Set();
  channel.on("return", (bounced) => returned.add(bounced.properties.messageId));
  return (routingKey, message) =>
    new Promise((resolve, reject) => {
      const body = Buffer.from(JSON.stringify(message));
      channel.publish(exchangeName(), routingKey, body, publishOptions(message), (error) => {
        const bounced = returned.delete(message.messageId);
        if (error) {
          reject(new Error(`the broker refused ${message.type} ${message.messageId}`));
        } else if (bounced) {
          reject(
            new Error(
              `no queue is bound to ${routingKey} on exchange ${exchangeName()}: is relayflow ` +
                `running with RELAYFLOW_NAMESPACE=${settings.namespace}?`,
            ),
          );
        } else {
          resolve();
        }
      });
    });
}
