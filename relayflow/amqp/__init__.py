"""RabbitMQ transport shared by the services: connecting, confirmed publishing, batched
consuming, and settling deliveries (ack, hand back after a backoff, dead-letter with a reason)."""

from relayflow.amqp.connection import connect, quietly
from relayflow.amqp.consumer import BatchConsumer
from relayflow.amqp.publisher import OutgoingMessage, Publisher
from relayflow.amqp.settle import Backoff, Settler, dead_letter

__all__ = [
    "Backoff",
    "BatchConsumer",
    "OutgoingMessage",
    "Publisher",
    "Settler",
    "connect",
    "dead_letter",
    "quietly",
]
