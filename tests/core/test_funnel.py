"""The funnel's pure rules: which stages a decision means, how a summary row advances, the
report's arithmetic and the institution alert rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.core import funnel
from worker.core.funnel import Event, How, InstitutionRate, Stage, Summary
from worker.core.policy import Reason, ReauthFields, State

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
T0 = NOW - timedelta(hours=5)


def _fields(state: State, *, episode: int = 2, reminders: int = 0) -> ReauthFields:
    in_ep = state in (State.PENDING, State.AWAITING_USER, State.GAVE_UP)
    return ReauthFields(
        state=state,
        reason=Reason.REVOKED if in_ep else None,
        episode=episode,
        episode_started_at=T0 if in_ep else None,
        reminders_sent=reminders,
        attempts=0,
        next_attempt_at=None,
    )


@pytest.mark.parametrize(
    ("before", "after", "kwargs", "expected"),
    [
        # A new episode whose first link went out.
        (State.IDLE, _fields(State.AWAITING_USER, reminders=1), {"before_reminders": 0},
         [Stage.DETECTED, Stage.LINK]),
        # A new episode whose MX call failed transiently: detected, no link yet.
        (State.IDLE, _fields(State.PENDING), {"before_reminders": 0}, [Stage.DETECTED]),
        # The second reminder's link.
        (State.AWAITING_USER, _fields(State.AWAITING_USER, reminders=2), {"before_reminders": 1},
         [Stage.LINK]),
        # A redelivered batch (no before_reminders): nothing new.
        (State.PENDING, _fields(State.AWAITING_USER, reminders=1), {}, []),
        # Waiting for the next reminder: nothing.
        (State.AWAITING_USER, _fields(State.AWAITING_USER, reminders=1), {}, []),
        (State.PENDING, _fields(State.GAVE_UP), {}, [Stage.GAVE_UP]),
        (State.GAVE_UP, _fields(State.GAVE_UP), {}, []),
        (State.AWAITING_USER, _fields(State.NOT_OAUTH_CAPABLE), {}, [Stage.NOT_OAUTH_CAPABLE]),
        # MX refused a brand-new episode at once: it is still detected, and ends.
        (State.IDLE, _fields(State.NOT_OAUTH_CAPABLE), {"new_episode": True},
         [Stage.DETECTED, Stage.NOT_OAUTH_CAPABLE]),
        (State.IDLE, _fields(State.GONE), {}, []),
        (State.AWAITING_USER, _fields(State.GONE), {}, [Stage.GONE]),
        (State.AWAITING_USER, _fields(State.IDLE), {"confirmed": True}, [Stage.CONFIRMED]),
        (State.AWAITING_USER, _fields(State.IDLE), {}, [Stage.ENDED]),
        (State.IDLE, _fields(State.IDLE), {"confirmed": True}, []),
    ],
)  # fmt: skip
def test_change_events(
    before: State, after: ReauthFields, kwargs: dict[str, object], expected: list[Stage]
) -> None:
    events = funnel.change_events(7, before, after, now=NOW, **kwargs)  # type: ignore[arg-type]
    assert [e.stage for e in events] == expected
    assert all(e.member_id == 7 and e.episode == 2 for e in events)


def test_detected_carries_reason_how_and_the_episode_start() -> None:
    (e,) = funnel.change_events(1, State.IDLE, _fields(State.PENDING), now=NOW, how=How.WEBHOOK)
    assert (e.stage, e.detail, e.how, e.at) == (Stage.DETECTED, "revoked", "webhook", T0)


@pytest.mark.parametrize(
    ("trigger", "how"),
    [("webhook", How.WEBHOOK), ("scan", How.SCAN), ("beat", How.SCAN), ("rerun", How.RERUN),
     ("import", How.IMPORT), ("refresh", How.SCAN)],
)  # fmt: skip
def test_how_of_trigger(trigger: str, how: How) -> None:
    assert How.of_trigger(trigger) is how


def _summary() -> Summary:
    detected = Event(1, 2, Stage.DETECTED, T0, detail="expired", how="scan")
    return funnel.opened(detected, institution_code="chase", channel="APP")


def _at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def test_a_reconnected_episode_advances_stage_by_stage() -> None:
    s = _summary()
    path = [
        Event(1, 2, Stage.LINK, _at(0), reminder=1),
        Event(1, 2, Stage.NOTIFIED, _at(0.1), reminder=1),
        Event(1, 2, Stage.NOTIFIED, _at(24), reminder=2),
        Event(1, 2, Stage.CLICKED, _at(25)),
        Event(1, 2, Stage.OPENED, _at(25.1)),
        Event(1, 2, Stage.RESULT, _at(25.2), detail="SERVER_ERROR"),
        Event(1, 2, Stage.CLICKED, _at(26)),
        Event(1, 2, Stage.RESULT, _at(26.1), detail="success"),
        Event(1, 2, Stage.CONFIRMED, _at(26.2)),
    ]
    for e in path:
        s = funnel.advance(s, e)
    assert s.reason == "expired"
    assert s.institution_code == "chase"
    assert s.channel == "APP"
    assert s.link_at == _at(0)
    assert s.notified_at == _at(0.1)
    assert s.clicked_at == _at(25)  # the first click
    assert s.result_at == _at(25.2)
    assert s.result == "success"
    assert s.confirmed_at == s.ended_at == _at(26.2)
    assert s.reminders_sent == 2
    assert s.converting_reminder == 2
    assert s.reconnect_s == int(26.2 * 3600)
    assert s.outcome == "reconnected"


def test_advance_is_idempotent_and_a_success_is_not_undone() -> None:
    s = _summary()
    for e in [
        Event(1, 2, Stage.RESULT, _at(1), detail="success"),
        Event(1, 2, Stage.CONFIRMED, _at(2)),
    ]:
        s = funnel.advance(s, e)
    again = funnel.advance(funnel.advance(s, Event(1, 2, Stage.CONFIRMED, _at(3))),
                           Event(1, 2, Stage.RESULT, _at(3), detail="CANCELLED"))  # fmt: skip
    assert again.result == "success"
    assert again.confirmed_at == _at(2)
    assert again.outcome == "reconnected"
    # An episode that ended is not reopened by a late GONE.
    assert funnel.advance(again, Event(1, 2, Stage.GONE, _at(4))) == again


def test_gave_up_is_an_outcome_that_a_rerun_can_still_turn_into_a_reconnection() -> None:
    s = funnel.advance(_summary(), Event(1, 2, Stage.GAVE_UP, _at(1)))
    assert s.outcome == "gave_up"
    assert s.ended_at is None
    # A rerun's new link reopens it.
    assert funnel.advance(s, Event(1, 2, Stage.LINK, _at(2), reminder=1)).outcome is None
    s = funnel.advance(s, Event(1, 2, Stage.CONFIRMED, _at(5)))
    assert s.outcome == "reconnected"
    assert s.converting_reminder is None


@pytest.mark.parametrize(
    ("outcome", "aggregated_h", "counts"),
    [("reconnected", 3.0, True), ("reconnected", -1.0, False), ("reconnected", None, False),
     ("gave_up", 3.0, False), (None, 3.0, False)],
)  # fmt: skip
def test_aggregated_after_reconnect(
    outcome: str | None, aggregated_h: float | None, counts: bool
) -> None:
    at = None if aggregated_h is None else _at(aggregated_h)
    assert funnel.aggregated_after_reconnect(outcome, T0, at) is counts


def test_conversion_and_percentiles() -> None:
    stages = {"detected": 200, "link": 190, "notified": 180, "clicked": 90, "opened": 60,
              "result": 60, "confirmed": 45, "aggregated": 0}  # fmt: skip
    rows = {r["stage"]: r for r in funnel.conversion(stages)}
    assert rows["detected"]["of_previous"] is None
    assert rows["clicked"]["of_previous"] == 0.5
    assert rows["confirmed"]["of_detected"] == 0.225
    assert rows["aggregated"]["of_previous"] == 0.0
    hist = {10: 1, 30: 2, 600: 1}
    assert funnel.percentile(hist, 0.5) == 30
    assert funnel.percentile(hist, 0.9) == 600
    assert funnel.percentile({}, 0.5) is None
    assert funnel.reconnect_curve(hist, 8) == [(0.0, 0.0), (0.1667, 0.125), (0.5, 0.375),
                                               (10.0, 0.5)]  # fmt: skip


def test_wilson_lower_bound() -> None:
    assert funnel.wilson_lower(0, 0) == 0.0
    # Known value: 5 of 10 at 95% → 0.2366.
    assert round(funnel.wilson_lower(5, 10), 4) == 0.2366
    assert funnel.wilson_lower(10, 10) < 1.0


def test_alerts_need_volume_and_a_clear_gap_against_the_rest() -> None:
    rates = [
        InstitutionRate("good_a", 200, 40),
        InstitutionRate("good_b", 300, 60),
        # Clearly worse with enough volume: listed.
        InstitutionRate("bad_bank", 60, 45),
        # As bad, but 5 tries are too few to say.
        InstitutionRate("tiny", 5, 5),
        # Somewhat worse, within the margin: not listed.
        InstitutionRate("meh", 100, 28),
    ]
    out = funnel.alerts(rates)
    assert [a["institution"] for a in out] == ["bad_bank"]
    (a,) = out
    assert a["failure_rate"] == 0.75
    assert float(str(a["wilson_lower"])) > float(str(a["rest_rate"])) + funnel.ALERT_MARGIN


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("2w", 1209600)]
)
def test_parse_since(text: str, seconds: int) -> None:
    assert funnel.parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "-3d", "0d", "3y", "1.5d", "99999w"])
def test_parse_since_refuses_bad_values_naming_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="--since"):
        funnel.parse_since(text)


def test_parse_by() -> None:
    assert funnel.parse_by("Institution") is funnel.By.INSTITUTION
    assert funnel.parse_by(None) is None
    with pytest.raises(ValueError, match="--by 'bank': expected one of reason, institution"):
        funnel.parse_by("bank")
