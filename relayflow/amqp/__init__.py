"""RabbitMQ transport shared by the services: connecting, confirmed publishing, batched
consuming and dead-lettering with a reason."""

from relayflow.amqp.connection import connect, quietly
from relayflow.amqp.consumer import BatchConsumer, dead_letter
from relayflow.amqp.publisher import OutgoingMessage, Publisher

__all__ = ["BatchConsumer", "OutgoingMessage", "Publisher", "connect", "dead_letter", "quietly"]
