"""Deterministic message ids (`relayflow.model.ids`): each fits a message id, whatever the
names it is derived from, and the same input always gives the same id."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relayflow.contracts import SignalWorkflow
from relayflow.model import ids

# The longest workflow id and signal name the contracts accept.
LONG_WORKFLOW = "wf_" + "a" * 125
LONG_NAME = "s" + "n" * 63

names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=128)


def test_a_short_signal_id_reads_as_what_it_is_about() -> None:
    """An operator reading a message id in a dead-letter list sees the workflow and the signal."""
    signal = ids.signal_id("wf_01jd8n2w0a3k5y6q7r8s9t0v1w", "decision", "k-1")
    assert signal.startswith("sig:wf_01jd8n2w0a3k5y6q7r8s9t0v1w:decision:")
    assert signal == ids.signal_id("wf_01jd8n2w0a3k5y6q7r8s9t0v1w", "decision", "k-1")
    assert signal != ids.signal_id("wf_01jd8n2w0a3k5y6q7r8s9t0v1w", "decision", "k-2")


def test_a_signal_id_that_would_be_too_long_is_hashed_whole() -> None:
    """A 128-character workflow id with a 64-character name made a 224-character id, which no
    message may carry: the signal was refused (gateway) or could not be built (admin)."""
    signal = ids.signal_id(LONG_WORKFLOW, LONG_NAME, "k-1")
    assert len(signal) <= ids.MAX_MESSAGE_ID
    assert signal == ids.signal_id(LONG_WORKFLOW, LONG_NAME, "k-1")
    assert signal != ids.signal_id(LONG_WORKFLOW, LONG_NAME, "k-2")
    assert signal != ids.signal_id(LONG_WORKFLOW, LONG_NAME[:-1], "k-1")
    # A valid message id: what the gateway and the admin command send it as.
    message = SignalWorkflow(
        message_id=signal, workflow_id=LONG_WORKFLOW, signal_name=LONG_NAME, payload={}
    )
    assert message.message_id == signal


@given(workflow=names, signal=names, key=names)
def test_every_signal_id_fits_and_is_deterministic(workflow: str, signal: str, key: str) -> None:
    """Whatever the lengths, the id fits a message id, and the same input names the same id."""
    first = ids.signal_id(workflow, signal, key)
    assert 0 < len(first) <= ids.MAX_MESSAGE_ID
    assert first == ids.signal_id(workflow, signal, key)


@given(
    a=st.tuples(names, names, names),
    b=st.tuples(names, names, names),
)
def test_different_inputs_name_different_signals(
    a: tuple[str, str, str], b: tuple[str, str, str]
) -> None:
    """Readable or hashed, two different (workflow, name, key) never share an id."""
    if a != b:
        assert ids.signal_id(*a) != ids.signal_id(*b)
