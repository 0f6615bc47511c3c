"""Log lines (`relayflow.logs`): JSON lines with what they are about, the text format's
brackets, and no secret in either — in the message, its arguments or a traceback."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from relayflow import logs
from relayflow.contracts import StepCommand
from relayflow.logs import LogFormat, Redactor, url_secrets
from relayflow.steps import StepContext, StepRegistry
from relayflow.steps.body import call

KEY = "rf_abcdefghijklmnop_" + "s" * 48


def fail(error: Exception) -> None:
    raise error


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """The root logger writing to a buffer for the test; its handlers restored after."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    buffer = io.StringIO()
    yield buffer
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("at amqp://rf-steps:pa55word-x@mq:5672/ down", "at amqp://rf-steps:***@mq:5672/ down"),
        (
            "postgresql://u:p%40ss@db/x, amqp://a:b@c/",
            "postgresql://u:***@db/x, amqp://a:***@c/",
        ),
        (f"refused {KEY} on GET /", "refused rf_abcdefghijklmnop_*** on GET /"),
        ("GET /events?token=eyJhbGci.x-y_z&x=1 HTTP/1.1", "GET /events?token=***&x=1 HTTP/1.1"),
        ("headers {'authorization': 'Bearer abc.def'}", "headers {'authorization': 'Bearer ***'}"),
        ("dsn host=db password=hunter22 user=x", "dsn host=db password=*** user=x"),
    ],
)
def test_the_patterns_of_a_secret_are_redacted(line: str, shown: str) -> None:
    assert Redactor()(line) == shown


def test_configured_secrets_are_redacted_wherever_they_appear() -> None:
    redact = Redactor(["the-server-secret-0123456789", "guest"])
    assert redact("secret=the-server-secret-0123456789!") == "secret=***!"
    # A secret too short to tell from a word (a development password) is left to the patterns.
    assert redact("user guest") == "user guest"


def test_url_secrets_are_the_passwords_of_each_url_as_written_and_decoded() -> None:
    found = url_secrets("amqp://a:p%40ssword1@h/,amqp://b:second-pw@h2/", "postgresql://x@db/y")
    assert set(found) == {"p%40ssword1", "p@ssword1", "second-pw"}


def test_json_lines_carry_the_service_the_level_and_what_they_are_about(
    output: io.StringIO,
) -> None:
    logs.configure(
        "steps", "DEBUG", LogFormat.JSON, secrets=["the-server-secret-0123456789"], stream=output
    )
    log = logging.getLogger("relayflow.test")
    with logs.bound(workflow_id="wf_1", step="persist", step_key="0", attempt=2, unset=None):
        log.info("connected to %s with %s", "amqp://u:pw-12345678@h/", KEY)
    log.warning("after the block")
    first, second = (orjson.loads(line) for line in output.getvalue().splitlines())
    assert first["message"] == "connected to amqp://u:***@h/ with rf_abcdefghijklmnop_***"
    assert (first["service"], first["level"], first["logger"]) == (
        "steps",
        "info",
        "relayflow.test",
    )
    assert (first["workflow_id"], first["step"], first["step_key"], first["attempt"]) == (
        "wf_1",
        "persist",
        "0",
        2,
    )
    assert "unset" not in first
    assert first["time"].endswith("Z")
    assert "workflow_id" not in second


def test_a_traceback_is_one_json_field_and_redacted(output: io.StringIO) -> None:
    logs.configure(
        "gateway", "INFO", LogFormat.JSON, secrets=["the-server-secret-0123456789"], stream=output
    )
    try:
        fail(RuntimeError("cannot use the-server-secret-0123456789 at amqp://u:pw-12345678@h/"))
    except RuntimeError:
        logging.getLogger("x").exception("it failed")
    (line,) = output.getvalue().splitlines()
    record = orjson.loads(line)
    assert "Traceback" in record["exception"]
    assert "RuntimeError: cannot use *** at amqp://u:***@h/" in record["exception"]


def test_text_lines_end_with_what_they_are_about_and_are_redacted(output: io.StringIO) -> None:
    logs.configure("orchestrator", "INFO", LogFormat.TEXT, stream=output)
    with logs.bound(workflow_id="wf_2", step="validate"):
        try:
            fail(ValueError(f"bad {KEY}"))
        except ValueError:
            logging.getLogger("relayflow.x").exception("refused")
    text = output.getvalue()
    head = text.splitlines()[0]
    assert " orchestrator relayflow.x: refused [workflow_id=wf_2 step=validate]" in head
    assert KEY not in text
    assert "ValueError: bad rf_abcdefghijklmnop_***" in text


async def test_a_step_bodys_own_lines_say_which_invocation_they_are_about(
    output: io.StringIO,
) -> None:
    steps = StepRegistry()

    @steps.step("greet")
    async def greet(ctx: StepContext[dict[str, str]]) -> dict[str, str]:
        logging.getLogger("apps.greeter").info("greeting %s", ctx.input["name"])
        return {"greeting": "hi"}

    logs.configure("steps", "INFO", LogFormat.JSON, stream=output)
    command = StepCommand(
        message_id="cmd-1",
        workflow_id="wf_3",
        workflow_name="greeting",
        step_name="greet",
        step_key="item-7",
        attempt=3,
        input={"name": "Ada"},
    )
    definition = steps.get("greet")
    assert definition is not None
    await call(definition, command, publish=_no_publish)
    (line,) = (orjson.loads(text) for text in output.getvalue().splitlines())
    assert line["message"] == "greeting Ada"
    assert (line["workflow_id"], line["step"], line["step_key"], line["attempt"]) == (
        "wf_3",
        "greet",
        "item-7",
        3,
    )


async def _no_publish(*_: object, **__: object) -> None:
    raise AssertionError("nothing is published")
