// Serve the `quote` workflow's `price` step from Node.js: consume its StepCommands from the
// queue `<ns>.step.price`, answer each with a StepResult on `step.result`, and ack the command
// only once the broker has confirmed the result. A crash before that leaves the command on the
// queue; it comes back (redelivered) and is answered again under the same result id, which the
// orchestrator's inbox counts once.
//
//   node serve-price.mjs          (AMQP_URL, RELAYFLOW_NAMESPACE as for the services)
//
// Prints {"serving": "<queue>"} once it consumes, then one JSON line per command answered.

import amqp from "amqplib";
import { confirmedPublisher, RESULT_KEY, resultId, settings, stepQueue } from "./relayflow.mjs";

const BODY = "price";
const PREFETCH = 16;
// Answers kept for commands seen again (a redelivery, a copy): sent as they were the first
// time, without pricing again. Bounded; one forgotten is priced again, under the same id.
const REMEMBERED = 10_000;
const SUPPORTED_CURRENCIES = new Set(["EUR", "USD", "GBP"]);

class StepFailure extends Error {
  constructor(type, message, retryable) {
    super(message);
    this.type = type;
    this.retryable = retryable;
  }
}

// The step itself: total the lines `normalize` produced (its output is in `dependencies`,
// keyed by step name).
function price(command) {
  const normalized = command.dependencies?.normalize;
  if (typeof normalized?.currency !== "string" || !Array.isArray(normalized?.lines)) {
    throw new StepFailure(
      "InvalidDependencies",
      "expected dependencies.normalize with `currency` and `lines`",
      false,
    );
  }
  const { currency, lines } = normalized;
  if (!SUPPORTED_CURRENCIES.has(currency)) {
    // Trying again cannot help: reported as not retryable, the workflow fails at once.
    throw new StepFailure(
      "UnsupportedCurrency",
      `cannot price in ${currency}; this service prices in ${[...SUPPORTED_CURRENCIES].join(", ")}`,
      false,
    );
  }
  if (command.attempt === 1 && lines.some((line) => String(line.sku).startsWith("flaky"))) {
    // A passing failure: retryable, so the orchestrator sends attempt 2 after its back-off.
    throw new StepFailure("PriceListReloading", "the price list is being reloaded", true);
  }
  let units = 0;
  let totalCents = 0;
  for (const line of lines) {
    units += line.qty;
    totalCents += line.qty * line.unitCents;
  }
  return { currency, lines: lines.length, units, totalCents, pricedBy: "node" };
}

function answer(command, startedAt) {
  const finishedAt = new Date().toISOString();
  const result = {
    type: "StepResult",
    schemaVersion: 1,
    messageId: resultId(command),
    workflowId: command.workflowId,
    stepName: command.stepName,
    stepKey: command.stepKey ?? "0",
    attempt: command.attempt,
    startedAt,
    finishedAt,
    createdAt: finishedAt,
  };
  if (command.idempotencyKey) {
    result.idempotencyKey = command.idempotencyKey;
  }
  try {
    return { ...result, status: "succeeded", output: price(command) };
  } catch (error) {
    if (!(error instanceof StepFailure)) {
      throw error;
    }
    const failure = { type: error.type, message: error.message, retryable: error.retryable };
    return { ...result, status: "failed", error: failure };
  }
}

// A delivery this service can answer, or why not (it is then dead-lettered by the broker).
function commandOf(message) {
  let command;
  try {
    command = JSON.parse(message.content.toString("utf8"));
  } catch (error) {
    return { reason: `not JSON: ${error.message}` };
  }
  if (command?.type !== "StepCommand") {
    return { reason: `not a StepCommand: type ${JSON.stringify(command?.type)}` };
  }
  if ((command.body ?? command.stepName) !== BODY) {
    return { reason: `a command for body ${command.body ?? command.stepName}, not ${BODY}` };
  }
  if (command.schemaVersion !== undefined && command.schemaVersion !== 1) {
    return { reason: `schemaVersion ${command.schemaVersion}; this service reads version 1` };
  }
  if (typeof command.workflowId !== "string" || !Number.isInteger(command.attempt)) {
    return { reason: "a StepCommand without workflowId or attempt" };
  }
  return { command };
}

const answered = new Map();

function remember(commandId, result) {
  answered.set(commandId, result);
  if (answered.size > REMEMBERED) {
    answered.delete(answered.keys().next().value);
  }
}

const queue = stepQueue(BODY);
const connection = await amqp.connect(settings.amqpUrl);
const channel = await connection.createConfirmChannel();
try {
  await channel.checkQueue(queue);
} catch {
  console.error(
    `serve-price.mjs: the broker has no queue ${queue}: start relayflow (scripts/run) with ` +
      `RELAYFLOW_NAMESPACE=${settings.namespace} first`,
  );
  process.exit(2);
}
await channel.prefetch(PREFETCH);
const publish = confirmedPublisher(channel);

const inflight = new Set();

async function handle(message) {
  const { command, reason } = commandOf(message);
  if (!command) {
    console.error(`dead-lettering ${message.properties.messageId ?? "a message"}: ${reason}`);
    // No requeue: the queue's dead-letter exchange takes it to <ns>.dead-letters.
    channel.nack(message, false, false);
    return;
  }
  const stored = answered.get(command.messageId);
  const result = stored ?? answer(command, new Date().toISOString());
  try {
    await publish(RESULT_KEY, result);
  } catch (error) {
    console.error(`could not publish ${result.messageId}: ${error.message}; handing back`);
    channel.nack(message, false, true);
    return;
  }
  remember(command.messageId, result);
  channel.ack(message);
  const repeated = stored !== undefined || message.fields.redelivered;
  console.log(
    JSON.stringify({
      command: command.messageId,
      result: result.messageId,
      status: result.status,
      repeated,
    }),
  );
}

const { consumerTag } = await channel.consume(queue, (message) => {
  if (message === null) {
    console.error("serve-price.mjs: the broker cancelled the consumer (queue deleted?)");
    process.exit(1);
  }
  const task = handle(message).finally(() => inflight.delete(task));
  inflight.add(task);
});
console.log(JSON.stringify({ serving: queue }));

let stopping = false;
async function stop(signal) {
  if (stopping) {
    return;
  }
  stopping = true;
  console.error(`serve-price.mjs: ${signal}: finishing ${inflight.size} command(s) in flight`);
  await channel.cancel(consumerTag);
  await Promise.allSettled(inflight);
  await channel.close();
  await connection.close();
  process.exit(0);
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));
connection.on("close", () => {
  if (!stopping) {
    console.error("serve-price.mjs: the broker connection closed");
    process.exit(1);
  }
});
