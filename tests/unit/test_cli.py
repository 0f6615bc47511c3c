"""`relayflow` (relayflow/cli) against a gateway played by `httpx.MockTransport`: what each command
sends (paths, bodies, the key, the idempotency and sender headers), what it prints, and its exit
codes — `--wait` and `tail` through a dropped stream, resumed with Last-Event-ID. The real
gateway and the whole system are in tests/integration/test_cli_gateway.py and
tests/e2e/test_cli.py."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from relayflow.admin import translate
from relayflow.cli import CliError, build
from relayflow.cli.context import Context
from relayflow.cli.follow import Event, follow

WF = "wf_01jd8n2w0a3k5y6q7r8s9t0v1w"
STEPS = ["validate", "persist", "finalize"]
Handler = Callable[[httpx.Request], httpx.Response]


def invoke(handler: Handler, *args: str, key: str | None = "rf_k_secret") -> Result:
    """The command as typed, its HTTP requests answered by `handler`."""
    return CliRunner().invoke(
        build(),
        list(args),
        obj=Context(transport=httpx.MockTransport(handler)),
        env={"RELAYFLOW_API_KEY": key, "RELAYFLOW_URL": None},
    )


def event(seq: int, name: str, step: str | None = None, **data: Any) -> dict[str, Any]:
    return {
        "type": "WorkflowEvent",
        "messageId": f"evt:{WF}:{seq}",
        "workflowId": WF,
        "workflowName": "formSubmission",
        "seq": seq,
        "event": name,
        "stepName": step,
        "createdAt": "2026-01-02T03:04:05+00:00",
        "data": data,
    }


def sse(*events: dict[str, Any]) -> httpx.Response:
    body = ": ping\n\n" + "".join(
        f"id: {e['seq']}\nevent: {e['event']}\ndata: {json.dumps(e)}\n\n" for e in events
    )
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)


def history(terminal: str, **data: Any) -> list[dict[str, Any]]:
    events = [event(1, "workflow.started", input={})]
    for step in STEPS[:2]:
        events += [event(len(events) + 1, "step.started", step, attempt=1)]
        events += [event(len(events) + 1, "step.completed", step, attempt=1, output={})]
    return [*events, event(len(events) + 1, terminal, **data)]


def view(status: str = "running", **extra: Any) -> dict[str, Any]:
    return {
        "workflowId": WF,
        "name": "formSubmission",
        "status": status,
        "input": {},
        "createdAt": "2026-01-02T03:04:05+00:00",
        "updatedAt": "2026-01-02T03:04:06+00:00",
        "steps": [{"name": name, "status": "completed", "attempts": 1} for name in STEPS],
        **extra,
    }


class Gateway:
    """Answers the routes a `start --wait` or `tail` uses: the start, the state, and the event
    stream in `streams` (one answer per connection, in order)."""

    def __init__(self, *streams: httpx.Response, state: dict[str, Any] | None = None) -> None:
        self.streams = list(streams)
        self.state = state or view()
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = (request.method, request.url.path)
        if route == ("POST", "/workflows/formSubmission"):
            return httpx.Response(202, json={"workflowId": WF, "status": "accepted"})
        if route == ("GET", f"/workflows/{WF}"):
            return httpx.Response(200, json=self.state)
        if route == ("GET", f"/workflows/{WF}/events"):
            return self.streams.pop(0)
        return httpx.Response(404, json={"error": f"no route {route}"})

    def event_requests(self) -> Iterator[httpx.Request]:
        return (r for r in self.requests if r.url.path.endswith("/events"))


def test_start_sends_the_input_the_key_and_the_idempotency_key(tmp_path: Path) -> None:
    """The input from a file, the API key as a bearer token, --key as Idempotency-Key; the id
    alone on stdout so that `ID=$(relayflow workflows start …)` works."""
    form = {"name": "Ada", "email": "ada@example.com", "message": "hi"}
    (tmp_path / "form.json").write_text(json.dumps(form))
    gateway = Gateway()
    ran = invoke(
        gateway,
        "workflows",
        "start",
        "formSubmission",
        "--input",
        f"@{tmp_path / 'form.json'}",
        "--key",
        "order-7",
    )
    assert ran.exit_code == 0, ran.output
    assert ran.stdout == f"{WF}\n"
    [request] = gateway.requests
    assert json.loads(request.content) == form
    assert request.headers["Authorization"] == "Bearer rf_k_secret"
    assert request.headers["Idempotency-Key"] == "order-7"
    as_json = invoke(Gateway(), "workflows", "start", "formSubmission", "-i", "{}", "--json")
    assert json.loads(as_json.stdout) == {"workflowId": WF, "status": "accepted"}


def test_no_key_no_authorization_header() -> None:
    """A gateway that runs open needs no key, and none is made up."""
    gateway = Gateway()
    assert invoke(gateway, "workflows", "start", "formSubmission", key=None).exit_code == 0
    assert "Authorization" not in gateway.requests[0].headers


def test_wait_follows_a_dropped_stream_to_completion() -> None:
    """A connection cut mid-run is opened again after the last event seen: the run is followed
    to its end, each event once, and a completed run exits 0 with the progress on stderr."""
    events = history("workflow.completed", output={"ok": True})
    gateway = Gateway(sse(*events[:3]), sse(*events[3:]))
    ran = invoke(gateway, "workflows", "start", "formSubmission", "--wait")
    assert ran.exit_code == 0, ran.output
    assert ran.stdout == f"{WF}\n"
    first, second = gateway.event_requests()
    assert "Last-Event-ID" not in first.headers
    assert second.headers["Last-Event-ID"] == "3"
    progress = ran.stderr.splitlines()
    assert f"{WF}: 0/3 steps, running validate" in progress
    assert f"{WF}: 1/3 steps" in progress
    assert any("reconnecting after event 3" in line for line in progress)
    assert progress[-1].startswith(f"{WF} completed in ")
    assert progress[-1].endswith("(2/3 steps)")


@pytest.mark.parametrize(
    ("terminal", "code"),
    [
        pytest.param("workflow.completed", 0, id="completed"),
        pytest.param("workflow.failed", 1, id="failed"),
        pytest.param("workflow.cancelled", 1, id="cancelled"),
        pytest.param("workflow.compensated", 1, id="compensated"),
        pytest.param("workflow.compensation_failed", 1, id="compensation-failed"),
    ],
)
def test_wait_exit_code_is_the_outcome(terminal: str, code: int) -> None:
    """Only a completed run exits 0: a compensated one undid what it was asked to do. The
    failure's error is on stderr."""
    error = {"type": "DisposableEmail", "message": "use a lasting address", "step": "validate"}
    gateway = Gateway(sse(*history(terminal, error=error)))
    ran = invoke(gateway, "workflows", "start", "formSubmission", "--wait")
    assert ran.exit_code == code, ran.output
    last = ran.stderr.splitlines()[-1]
    assert terminal.removeprefix("workflow.") in last
    if code:
        assert "DisposableEmail: use a lasting address (step validate)" in last


def test_wait_json_prints_the_final_state_and_quiet_prints_no_progress() -> None:
    """With --json, one document: the run's final state (its output or error); --quiet keeps
    stderr for errors only."""
    gateway = Gateway(sse(*history("workflow.completed")), state=view("completed", output=1))
    ran = invoke(gateway, "workflows", "start", "formSubmission", "--wait", "--json", "-q")
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["output"] == 1
    assert ran.stderr == ""


def test_tail_prints_each_event_and_exits_with_the_outcome() -> None:
    """One line per event (seq, time, event, step, detail), or the events' JSON one per line."""
    events = history("workflow.failed", error={"type": "Boom", "message": "no"})
    ran = invoke(Gateway(sse(*events)), "workflows", "tail", WF)
    assert ran.exit_code == 1, ran.output
    lines = ran.stdout.splitlines()
    assert len(lines) == len(events)
    assert lines[1].split() == ["2", "2026-01-02T03:04:05+00:00", "step.started", "validate"]
    assert lines[-1].split()[2:] == ["workflow.failed", "Boom:", "no"]
    as_json = invoke(Gateway(sse(*events)), "workflows", "tail", WF, "--json")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == events


def test_tail_after_the_end_reads_the_outcome_from_the_state() -> None:
    """`--after` at or past the end is answered 204 (nothing more will come): the exit code
    still says how the run ended."""
    gateway = Gateway(httpx.Response(204), state=view("completed"))
    ran = invoke(gateway, "workflows", "tail", WF, "--after", "9")
    assert ran.exit_code == 0, ran.output
    assert ran.stdout == ""
    assert next(gateway.event_requests()).headers["Last-Event-ID"] == "9"


def test_an_unknown_workflow_stream_is_an_error() -> None:
    """The gateway waits for an id nobody knows, then says so: exit 2, naming the id."""
    unknown = httpx.Response(
        200,
        headers={"content-type": "text/event-stream"},
        text=f'event: workflow.unknown\ndata: {{"workflowId": "{WF}"}}\n\n',
    )
    ran = invoke(Gateway(unknown), "workflows", "tail", WF)
    assert ran.exit_code == 2
    assert f"no workflow {WF}" in ran.stderr


async def test_a_stream_that_stays_down_is_given_up() -> None:
    """A gateway that keeps answering 503 is retried with growing pauses, then the command
    fails saying for how long and after which event, rather than hanging."""
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": "PostgreSQL is not answering"})

    context = Context()
    async with httpx.AsyncClient(transport=httpx.MockTransport(down), base_url="http://gw") as http:
        with pytest.raises(CliError, match=r"lost the event stream .* last event seen is 4"):
            async for _ in follow(http, context, WF, after=4, give_up_after=0.0, sleep=sleep):
                pass
    # With some patience: the pauses double, each attempt says why.
    heard: list[str] = []
    answers = [httpx.Response(503, json={"error": "busy"})] * 3 + [
        sse(event(5, "workflow.completed", output=None))
    ]

    def busy(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    async with httpx.AsyncClient(transport=httpx.MockTransport(busy), base_url="http://gw") as http:
        events: list[Event] = [
            got
            async for got in follow(
                http, context, WF, after=4, sleep=sleep, on_reconnect=heard.append
            )
        ]
    assert [e.seq for e in events] == [5]
    assert pauses[-3:] == [0.25, 0.5, 1.0]
    assert all("503 PostgreSQL" in why or "503 busy" in why for why in heard)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        pytest.param(
            httpx.Response(
                422,
                json={
                    "error": "invalid input for formSubmission",
                    "fields": [{"loc": ["email"], "message": "not an email", "type": "x"}],
                },
            ),
            "starting formSubmission: 422 invalid input for formSubmission\n  email: not an email",
            id="fields",
        ),
        pytest.param(
            httpx.Response(401, json={"error": "an API key is required"}),
            "starting formSubmission: 401 an API key is required (set RELAYFLOW_API_KEY to an "
            "API key)",
            id="no-key",
        ),
        pytest.param(
            httpx.Response(502, text="Bad Gateway"),
            "starting formSubmission: 502 Bad Gateway",
            id="not-the-gateway",
        ),
    ],
)
def test_a_refusal_shows_the_gateways_error(answer: httpx.Response, problem: str) -> None:
    """The gateway's `error` (and each field at fault) is what the person reads, exit 2."""
    ran = invoke(lambda request: answer, "workflows", "start", "formSubmission", "-i", "{}")
    assert ran.exit_code == 2
    assert ran.stdout == ""
    assert ran.stderr == f"relayflow: {problem}\n"


def test_an_unreachable_gateway_names_the_address() -> None:
    """Not a traceback: where it looked, and which variable moves it."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    ran = invoke(refuse, "workflows", "status", WF)
    assert ran.exit_code == 2
    assert "cannot reach the gateway at http://127.0.0.1:8000" in ran.stderr
    assert "RELAYFLOW_URL" in ran.stderr
    assert "Traceback" not in ran.output


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        pytest.param(
            ("start", "formSubmission", "-i", "{"), "--input is not valid JSON", id="json"
        ),
        pytest.param(("start", "formSubmission", "-i", "@/nonexistent"), "cannot read", id="file"),
        pytest.param(("signal", WF, "decision", "--data", "[1]"), "a JSON object", id="object"),
        pytest.param(("signal", WF, "decision"), "Missing option '--data'", id="missing"),
        pytest.param(("cancel", WF, "--broker", "--key", "k"), "--broker sends", id="key"),
        pytest.param(("list", "--limit", "0"), "--limit", id="limit"),
        pytest.param(("nonsense",), "No such command 'nonsense'", id="command"),
    ],
)
def test_usage_errors_exit_2_and_send_nothing(args: tuple[str, ...], problem: str) -> None:
    """A typo is caught before anything is sent, naming the option at fault."""
    gateway = Gateway()
    ran = invoke(gateway, "workflows", *args)
    assert ran.exit_code == 2, ran.output
    assert problem in ran.stderr
    assert gateway.requests == []


def test_cancel_retry_and_signal_send_what_the_gateway_expects() -> None:
    """An action's body is {} with the reason in the query; a signal's body is its payload,
    with the sender and the idempotency key as headers."""
    sent: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if "/signals/" in request.url.path:
            return httpx.Response(
                202, json={"workflowId": WF, "signal": "decision", "signalId": "sig:1"}
            )
        action = request.url.path.rsplit("/", 1)[1]
        return httpx.Response(202, json={"workflowId": WF, "action": action, "messageId": "m1"})

    cancel = invoke(accept, "workflows", "cancel", WF, "--reason", "stuck for a week")
    assert (cancel.exit_code, cancel.stdout) == (0, f"cancel of {WF} accepted (m1)\n")
    retry = invoke(accept, "workflows", "retry", WF, "--key", "r-1", "--json")
    assert json.loads(retry.stdout)["action"] == "retry"
    signal = invoke(
        accept, "workflows", "signal", WF, "decision", "--data", '{"approved": true}', "--by", "ada"
    )
    assert signal.stdout == f"signal decision for {WF} accepted (sig:1)\n"
    first, second, third = sent
    assert (first.url.path, first.url.params["reason"]) == (
        f"/workflows/{WF}/cancel",
        "stuck for a week",
    )
    assert json.loads(first.content) == {}
    assert "Idempotency-Key" not in first.headers
    assert (second.url.path, second.headers["Idempotency-Key"]) == (f"/workflows/{WF}/retry", "r-1")
    assert "reason" not in second.url.params
    assert third.url.path == f"/workflows/{WF}/signals/decision"
    assert json.loads(third.content) == {"approved": True}
    assert third.headers["X-Relayflow-Sender"] == "ada"


def test_list_reads_page_after_page_up_to_the_limit() -> None:
    """More than one page (200 at most) is read by following `next` as `before`; the filters
    go to every page."""
    asked: list[httpx.QueryParams] = []

    def pages(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params)
        start = 0 if "before" not in request.url.params else 200
        items = [
            {
                "workflowId": f"wf_{start + n}",
                "name": "approval",
                "status": "failed",
                "createdAt": "t",
                "updatedAt": "u",
                "lastSeq": 3,
                "stepsTotal": 7,
                "stepsCompleted": 2,
                "activeSteps": [],
            }
            for n in range(200)
        ]
        return httpx.Response(200, json={"items": items, "next": "cursor-1"})

    ran = invoke(
        pages, "workflows", "list", "--status", "failed", "--workflow", "approval", "--limit", "250"
    )
    assert ran.exit_code == 0, ran.output
    lines = ran.stdout.splitlines()
    assert lines[0].split("\t") == [
        "id",
        "workflow",
        "status",
        "steps",
        "active",
        "created",
        "updated",
    ]
    assert lines[1].split("\t") == ["wf_0", "approval", "failed", "2/7", "-", "t", "u"]
    assert lines[-1] == "250 workflow(s)"
    assert [dict(params) for params in asked] == [
        {"limit": "200", "status": "failed", "workflow": "approval"},
        {"limit": "200", "status": "failed", "workflow": "approval", "before": "cursor-1"},
    ]
    as_json = invoke(pages, "workflows", "list", "--limit", "2", "--json")
    assert [json.loads(line)["workflowId"] for line in as_json.stdout.splitlines()] == [
        "wf_0",
        "wf_1",
    ]


def test_status_shows_the_state_and_each_step() -> None:
    """Status, error and steps in a few lines; --json is the gateway's WorkflowView."""
    state = view("failed", error={"type": "Boom", "message": "no", "step": "persist"})
    ran = invoke(Gateway(state=state), "workflows", "status", WF)
    assert ran.exit_code == 0, ran.output
    lines = ran.stdout.splitlines()
    assert lines[0] == f"{WF}  formSubmission  failed"
    assert "  error    Boom: no (step persist)" in lines
    assert lines[-3].split() == ["validate", "completed", "attempts", "1"]
    as_json = invoke(Gateway(state=state), "workflows", "status", WF, "--json")
    assert json.loads(as_json.stdout) == state


def test_the_deprecated_alias_maps_its_broker_commands() -> None:
    """`relayflow-admin workflows cancel|retry|signal` went to the broker: `--broker` keeps
    them there; everything else is the same command line."""
    assert translate(["workflows", "cancel", "wf_1"]) == ["workflows", "cancel", "wf_1", "--broker"]
    assert translate(["--namespace", "workflows", "workflows", "signal", "wf_1", "x"])[-1] == (
        "--broker"
    )
    assert translate(["--amqp-url=amqp://x", "workflows", "retry", "wf_1"])[-1] == "--broker"
    for argv in (["dead-letters", "list"], ["keys", "list", "--json"], ["workflows", "status"]):
        assert translate(argv) == argv


def test_broker_setup_writes_the_definitions_for_the_owner_only(tmp_path: Path) -> None:
    """Needs no broker: the file (passwords hashed, mode 0600) and each service's URL."""
    out = tmp_path / "broker.json"
    ran = CliRunner().invoke(
        build(), ["--namespace", "shop", "broker", "setup", "--out", str(out), "--vhost", "v/1"]
    )
    assert ran.exit_code == 0, ran.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    document = json.loads(out.read_text())
    assert {user["name"] for user in document["users"]} >= {
        "rf-shop-gateway",
        "rf-shop-orchestrator",
    }
    assert "AMQP_URL=amqp://rf-shop-gateway:" in ran.stdout
    assert "@127.0.0.1:5672/v%2F1" in ran.stdout
    assert "RELAYFLOW_BROKER_SENDERS=" in ran.stdout
    as_json = CliRunner().invoke(build(), ["broker", "setup", "--out", str(out), "--json"])
    assert as_json.exit_code == 0, as_json.output
    made = json.loads(as_json.stdout)
    assert made["file"] == str(out)
    assert made["amqp_urls"]["gateway"].startswith("amqp://rf-relayflow-gateway:")
    assert made["broker_senders"].startswith("engine=")
