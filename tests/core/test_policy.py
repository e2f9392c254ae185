"""The pure policy: reasons, skip_aggregation, channels, episodes, reminders and backoff."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.policy import (
    CONNECTION_STATUSES,
    DEFAULT_REASON_TABLE,
    OAUTH_ERROR_REASONS,
    OAUTH_STATUSES,
    STATUS_TABLE,
    Basis,
    Channel,
    Generate,
    MemberSnapshot,
    Outcome,
    PolicyConfig,
    Reason,
    SkipWhy,
    State,
    Update,
    after_outcome,
    channel_params,
    decide,
    next_check_at,
    reason_for,
    skip_aggregation_for,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
CFG = PolicyConfig()
APP_CFG = replace(
    CFG, app_redirect_url="https://app.example.com/oauth/done", app_url_scheme="exampleapp"
)


def member(**kw: object) -> MemberSnapshot:
    base: dict[str, object] = {
        "member_guid": "MBR-1",
        "is_oauth": True,
        "connection_status": "CONNECTED",
    }
    base.update(kw)
    return MemberSnapshot(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("EXPIRED", Reason.EXPIRED),
        ("DENIED", Reason.REVOKED),
        ("PREVENTED", Reason.REVOKED),
        ("IMPAIRED", Reason.REVOKED),
        ("IMPORTED", Reason.REVOKED),
        ("CONNECTED", None),
        ("CHALLENGED", None),
        ("LOCKED", None),
        ("DISCONTINUED", None),
        (None, None),
    ],
)
def test_reason_by_connection_status(status: str | None, expected: Reason | None) -> None:
    """Default table: EXPIRED → expired; DENIED, PREVENTED, IMPAIRED, IMPORTED → revoked."""
    assert reason_for(member(connection_status=status), NOW, CFG) is expected


def test_non_oauth_and_terminal_members_are_never_eligible() -> None:
    """Non-OAuth members, and members MX called not-OAuth-capable or gone, get nothing."""
    assert reason_for(member(is_oauth=False, connection_status="EXPIRED"), NOW, CFG) is None
    for state in (State.NOT_OAUTH_CAPABLE, State.GONE):
        assert reason_for(member(connection_status="EXPIRED", state=state), NOW, CFG) is None


def test_reason_overrides_from_config() -> None:
    """REAUTH_REASON_OVERRIDES adds a status (IMPEDED → revoked) or removes one (IMPORTED)."""
    from worker.config import load_settings

    cfg = PolicyConfig.from_settings(
        load_settings(reason_overrides={"impeded": "revoked", "IMPORTED": None})
    )
    assert reason_for(member(connection_status="IMPEDED"), NOW, cfg) is Reason.REVOKED
    assert reason_for(member(connection_status="IMPORTED"), NOW, cfg) is None


@pytest.mark.parametrize(
    ("fields", "eligible"),
    [
        ({"oauth_status": "PENDING"}, True),
        ({"oauth_status": None, "connection_status": "CREATED"}, True),
        ({"oauth_status": None, "connection_status": "PENDING"}, True),
        ({"oauth_status": "ERRORED", "oauth_error_reason": "CANCELLED"}, True),
        ({"oauth_status": "ERRORED", "oauth_error_reason": "SESSION_ERROR"}, True),
        ({"oauth_status": "ERRORED", "oauth_error_reason": "DENIED"}, False),
        ({"oauth_status": "ERRORED", "oauth_error_reason": "PROVIDER_ERROR"}, False),
        ({"oauth_status": "SUCCESS"}, False),
        ({"oauth_status": None, "connection_status": "CONNECTED"}, False),
    ],
)
def test_abandoned_after_threshold(fields: dict[str, object], eligible: bool) -> None:
    """An OAuth start older than abandon_after that never completed is 'abandoned'."""
    m = member(oauth_started_at=NOW - timedelta(minutes=31), **fields)
    assert (reason_for(m, NOW, CFG) is Reason.ABANDONED) is eligible


def test_young_oauth_start_is_not_abandoned_but_scheduled() -> None:
    """A start younger than the threshold is not eligible; it is looked at again when it ages."""
    started = NOW - timedelta(minutes=10)
    m = member(oauth_started_at=started, oauth_status="PENDING")
    assert reason_for(m, NOW, CFG) is None
    assert next_check_at(m, NOW, CFG) == started + CFG.abandon_after
    d = decide(m, NOW, CFG)
    assert isinstance(d, Update)
    assert d.fields.next_attempt_at == started + CFG.abandon_after


@pytest.mark.parametrize(
    ("fields", "cfg", "expected"),
    [
        ({"is_being_aggregated": True}, CFG, (True, SkipWhy.AGGREGATION_IN_PROGRESS)),
        (
            {"successfully_aggregated_at": NOW - timedelta(hours=2)},
            CFG,
            (True, SkipWhy.RECENTLY_AGGREGATED),
        ),
        ({}, replace(CFG, aggregate_after_reauth=False), (True, SkipWhy.DISABLED_BY_CONFIG)),
        ({"successfully_aggregated_at": NOW - timedelta(days=3)}, CFG, (False, SkipWhy.STALE_DATA)),
        ({}, CFG, (False, SkipWhy.STALE_DATA)),
    ],
)
def test_skip_aggregation_and_why(
    fields: dict[str, object], cfg: PolicyConfig, expected: tuple[bool, SkipWhy]
) -> None:
    """skip_aggregation is true while aggregating, after a recent aggregation or by config."""
    assert skip_aggregation_for(member(**fields), NOW, cfg) == expected


def test_channel_parameters() -> None:
    """APP gets redirect and scheme when configured; BROWSER gets neither, ever."""
    app = channel_params(Channel.APP, APP_CFG)
    assert app.referral_source == "APP"
    assert app.client_redirect_url == "https://app.example.com/oauth/done"
    assert app.ui_message_webview_url_scheme == "exampleapp"
    browser = channel_params(Channel.BROWSER, APP_CFG)
    assert browser.referral_source == "BROWSER"
    assert browser.client_redirect_url is None
    assert browser.ui_message_webview_url_scheme is None
    assert channel_params(Channel.APP, CFG).client_redirect_url is None


def test_new_episode_then_reminders_on_schedule() -> None:
    """Entering a reason opens episode 1 with reminder 1 now, then reminders at +24 h and +72 h."""
    m = member(connection_status="EXPIRED")
    d = decide(m, NOW, CFG)
    assert isinstance(d, Generate)
    assert (d.episode, d.reminder, d.new_episode, d.reason) == (1, 1, True, Reason.EXPIRED)
    f = after_outcome(m, d, Outcome.SUCCESS, NOW, CFG)
    assert f.state is State.AWAITING_USER
    assert f.reminders_sent == 1
    assert f.next_attempt_at == NOW + timedelta(hours=24)

    m2 = _apply(m, f)
    early = decide(m2, NOW + timedelta(hours=23), CFG)
    assert isinstance(early, Update)
    assert early.fields.next_attempt_at == NOW + timedelta(hours=24)
    d2 = decide(m2, NOW + timedelta(hours=24), CFG)
    assert isinstance(d2, Generate)
    assert (d2.episode, d2.reminder, d2.new_episode) == (1, 2, False)
    f2 = after_outcome(m2, d2, Outcome.SUCCESS, NOW + timedelta(hours=24), CFG)
    assert f2.next_attempt_at == NOW + timedelta(hours=72)
    m3 = _apply(m2, f2)
    d3 = decide(m3, NOW + timedelta(hours=72), CFG)
    assert isinstance(d3, Generate)
    assert d3.reminder == 3
    f3 = after_outcome(m3, d3, Outcome.SUCCESS, NOW + timedelta(hours=72), CFG)
    assert f3.next_attempt_at is None
    m4 = _apply(m3, f3)
    done = decide(m4, NOW + timedelta(days=30), CFG)
    assert isinstance(done, Update)
    assert done.note == "all reminders sent"


def test_episode_ends_when_member_reconnects() -> None:
    """Back to CONNECTED closes the episode; a later revocation opens episode 2."""
    m = member(
        connection_status="CONNECTED", state=State.AWAITING_USER, reason=Reason.REVOKED,
        episode=1, episode_started_at=NOW - timedelta(hours=1), reminders_sent=1,
    )  # fmt: skip
    d = decide(m, NOW, CFG)
    assert isinstance(d, Update)
    assert d.fields.state is State.IDLE
    assert d.fields.episode == 1
    again = decide(
        replace(m, connection_status="DENIED", state=State.IDLE, reminders_sent=0), NOW, CFG
    )
    assert isinstance(again, Generate)
    assert (again.episode, again.reminder) == (2, 1)


def test_transient_failures_back_off_then_give_up() -> None:
    """Transient failures retry within about a minute first, back off, and stop at max_attempts."""
    cfg = replace(CFG, max_attempts=3)
    m = member(connection_status="EXPIRED")
    g = decide(m, NOW, cfg)
    assert isinstance(g, Generate)
    f1 = after_outcome(m, g, Outcome.TRANSIENT, NOW, cfg, rng=random.Random(1))
    assert f1.state is State.PENDING
    assert f1.attempts == 1
    assert f1.episode == 1
    assert f1.next_attempt_at is not None
    assert NOW < f1.next_attempt_at <= NOW + timedelta(seconds=60)
    m1 = _apply(m, f1)
    # Not retried before the backoff elapses.
    assert isinstance(decide(m1, NOW + timedelta(seconds=1), cfg), Update) or (
        f1.next_attempt_at <= NOW + timedelta(seconds=1)
    )
    g2 = decide(m1, f1.next_attempt_at, cfg)
    assert isinstance(g2, Generate)
    assert (g2.episode, g2.reminder, g2.new_episode) == (1, 1, False)
    f2 = after_outcome(m1, g2, Outcome.TRANSIENT, f1.next_attempt_at, cfg)
    m2 = _apply(m1, f2)
    g3 = decide(m2, NOW + timedelta(days=1), cfg)
    assert isinstance(g3, Generate)
    f3 = after_outcome(m2, g3, Outcome.TRANSIENT, NOW + timedelta(days=1), cfg)
    assert f3.state is State.GAVE_UP
    assert f3.next_attempt_at is None
    stuck = decide(_apply(m2, f3), NOW + timedelta(days=2), cfg)
    assert isinstance(stuck, Update)
    forced = decide(_apply(m2, f3), NOW + timedelta(days=2), cfg, force=True)
    assert isinstance(forced, Generate)
    assert forced.reminder == 1


def test_retry_after_is_never_undercut() -> None:
    """A 429's Retry-After pushes the next attempt at least that far out."""
    m = member(connection_status="EXPIRED")
    g = decide(m, NOW, CFG)
    assert isinstance(g, Generate)
    f = after_outcome(m, g, Outcome.TRANSIENT, NOW, CFG, retry_after=600, rng=random.Random(0))
    assert f.next_attempt_at is not None
    assert f.next_attempt_at >= NOW + timedelta(seconds=600)


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        (Outcome.NOT_OAUTH_CAPABLE, State.NOT_OAUTH_CAPABLE),
        (Outcome.MEMBER_NOT_FOUND, State.GONE),
        (Outcome.BAD_REQUEST, State.GAVE_UP),
    ],
)
def test_permanent_outcomes_are_terminal(outcome: Outcome, state: State) -> None:
    """Permanent MX answers are recorded and never retried on a schedule."""
    m = member(connection_status="EXPIRED")
    g = decide(m, NOW, CFG)
    assert isinstance(g, Generate)
    f = after_outcome(m, g, outcome, NOW, CFG, error="x")
    assert f.state is state
    assert f.next_attempt_at is None
    assert isinstance(decide(_apply(m, f), NOW + timedelta(days=9), CFG), Update)


def test_configuration_error_spends_no_attempt() -> None:
    """401/403 after a session refresh leaves the member as it was, looked at again later."""
    m = member(connection_status="EXPIRED", attempts=0)
    g = decide(m, NOW, CFG)
    assert isinstance(g, Generate)
    f = after_outcome(m, g, Outcome.CONFIGURATION, NOW, CFG, error="401")
    assert f.attempts == 0
    assert f.state is State.IDLE
    assert f.episode == 0
    assert f.next_attempt_at == NOW + CFG.backoff_base


def test_force_skips_reminder_timing_but_never_repeats_a_reminder() -> None:
    """rerun --force sends the next reminder early; with all sent it sends nothing."""
    m = member(
        connection_status="EXPIRED", state=State.AWAITING_USER, reason=Reason.EXPIRED, episode=1,
        episode_started_at=NOW, reminders_sent=1, next_attempt_at=NOW + timedelta(hours=24),
    )  # fmt: skip
    d = decide(m, NOW + timedelta(minutes=1), CFG, force=True)
    assert isinstance(d, Generate)
    assert d.reminder == 2
    all_sent = replace(m, reminders_sent=3)
    assert isinstance(decide(all_sent, NOW, CFG, force=True), Update)


def _apply(m: MemberSnapshot, f: object) -> MemberSnapshot:
    from worker.core.policy import ReauthFields

    assert isinstance(f, ReauthFields)
    return replace(
        m, state=f.state, reason=f.reason, episode=f.episode,
        episode_started_at=f.episode_started_at, reminders_sent=f.reminders_sent,
        attempts=f.attempts, next_attempt_at=f.next_attempt_at,
    )  # fmt: skip


# --- properties ---------------------------------------------------------------------------------

times = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)
snapshots = st.builds(
    MemberSnapshot,
    member_guid=st.just("MBR-p"),
    is_oauth=st.booleans(),
    connection_status=st.none() | st.sampled_from(sorted(CONNECTION_STATUSES)),
    oauth_status=st.none() | st.sampled_from(sorted(OAUTH_STATUSES)),
    oauth_error_reason=st.none() | st.sampled_from(sorted(OAUTH_ERROR_REASONS)),
    oauth_started_at=st.none() | times,
    successfully_aggregated_at=st.none() | times,
    is_being_aggregated=st.booleans(),
    channel=st.sampled_from(list(Channel)),
)
outcomes = st.sampled_from(list(Outcome))


@settings(max_examples=300, deadline=None)
@given(
    m=snapshots,
    start=times,
    steps=st.lists(st.tuples(st.integers(0, 200_000), outcomes), max_size=25),
    force=st.lists(st.booleans(), min_size=25, max_size=25),
)
def test_never_a_second_notification_for_the_same_reminder(
    m: MemberSnapshot, start: datetime, steps: list[tuple[int, Outcome]], force: list[bool]
) -> None:
    """Whatever the sequence of decisions, outcomes and forced reruns, every (episode, reminder)
    succeeds at most once, and reminders within an episode come in order."""
    now = start
    notified: set[tuple[int, int]] = set()
    for i, (advance, outcome) in enumerate(steps):
        now += timedelta(seconds=advance)
        d = decide(m, now, APP_CFG, force=force[i])
        if isinstance(d, Update):
            m = _apply(m, d.fields)
            continue
        key = (d.episode, d.reminder)
        if outcome in (Outcome.SUCCESS,):
            assert key not in notified
            assert d.reminder <= APP_CFG.effective_reminders
            notified.add(key)
        m = _apply(m, after_outcome(m, d, outcome, now, APP_CFG, rng=random.Random(i)))


@settings(max_examples=300, deadline=None)
@given(m=snapshots, now=times, cfg_app=st.booleans())
def test_never_a_redirect_with_browser(m: MemberSnapshot, now: datetime, cfg_app: bool) -> None:
    """No decision ever sends client_redirect_url or a URL scheme with referral_source BROWSER."""
    d = decide(m, now, APP_CFG if cfg_app else CFG)
    if isinstance(d, Generate) and d.params.referral_source == "BROWSER":
        assert d.params.client_redirect_url is None
        assert d.params.ui_message_webview_url_scheme is None


@settings(max_examples=200, deadline=None)
@given(m=snapshots, now=times)
def test_same_inputs_same_decision(m: MemberSnapshot, now: datetime) -> None:
    """The policy is deterministic: the same snapshot and time give the same decision."""
    assert decide(m, now, CFG) == decide(m, now, CFG)
    assert decide(m, now, CFG) == decide(replace(m), now, replace(CFG))


def test_forced_rerun_of_a_gave_up_member_gets_a_fresh_attempt_budget() -> None:
    """rerun --force revives a gave-up member with attempts reset, so one more transient
    failure does not give up again at once."""
    cfg = replace(CFG, max_attempts=3)
    m = member(
        connection_status="EXPIRED", state=State.GAVE_UP, reason=Reason.EXPIRED, episode=1,
        episode_started_at=NOW, attempts=3,
    )  # fmt: skip
    g = decide(m, NOW, cfg, force=True)
    assert isinstance(g, Generate)
    f = after_outcome(m, g, Outcome.TRANSIENT, NOW, cfg)
    assert f.state is State.PENDING
    assert f.attempts == 1


# --- the connection status table ----------------------------------------------------------------

#: Written down independently of worker/policy.py: MX's 22 statuses by id, and the decision.
EXPECTED_STATUSES = {
    "CREATED": (0, None), "PREVENTED": (1, Reason.REVOKED), "DENIED": (2, Reason.REVOKED),
    "CHALLENGED": (3, None), "REJECTED": (4, None), "LOCKED": (5, None),
    "CONNECTED": (6, None), "IMPEDED": (7, None), "RECONNECTED": (8, None),
    "DEGRADED": (9, None), "DISCONNECTED": (10, None), "DISCONTINUED": (11, None),
    "CLOSED": (12, None), "DELAYED": (13, None), "FAILED": (14, None), "UPDATED": (15, None),
    "DISABLED": (16, None), "IMPORTED": (17, Reason.REVOKED), "RESUMED": (18, None),
    "EXPIRED": (19, Reason.EXPIRED), "IMPAIRED": (20, Reason.REVOKED), "PENDING": (21, None),
}  # fmt: skip


def test_status_table_covers_all_22_mx_statuses_in_id_order() -> None:
    """Every status MX documents has exactly one rule, with MX's id, a meaning, a why and a
    basis (MX's words or our inference)."""
    assert [(r.status, r.id) for r in STATUS_TABLE] == [
        (name, ident) for name, (ident, _) in EXPECTED_STATUSES.items()
    ]
    assert len(CONNECTION_STATUSES) == 22
    for rule in STATUS_TABLE:
        assert rule.meaning
        assert rule.why
        assert rule.basis in set(Basis)


@pytest.mark.parametrize(("status", "expected"), list(EXPECTED_STATUSES.items()))
def test_every_status_decision(status: str, expected: tuple[int, Reason | None]) -> None:
    """Each of the 22 statuses gives its documented decision on an OAuth member without an
    OAuth start (LOCKED, CHALLENGED, REJECTED and IMPEDED: no link)."""
    assert reason_for(member(connection_status=status), NOW, CFG) is expected[1]


def test_impeded_is_reachable_through_overrides_only() -> None:
    """IMPEDED ("action needed at the bank") is no link by default; an operator can map it."""
    from worker.config import load_settings

    assert "IMPEDED" not in DEFAULT_REASON_TABLE
    cfg = PolicyConfig.from_settings(load_settings(reason_overrides={"IMPEDED": "revoked"}))
    assert reason_for(member(connection_status="IMPEDED"), NOW, cfg) is Reason.REVOKED


def test_docs_status_table_matches_the_policy() -> None:
    """docs/MX.md's status table shows, for each status, the same id, decision and basis."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "MX.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0].isdigit():
            rows[cells[1]] = (int(cells[0]), cells[3], cells[4])
    expected = {
        r.status: (r.id, r.reason.value if r.reason else "no link", r.basis.value)
        for r in STATUS_TABLE
    }
    assert rows == expected


# --- OAuth results ------------------------------------------------------------------------------


def test_every_mx_oauth_value_is_accepted() -> None:
    """auth_status UNKNOWN/PENDING/SUCCESS/ERRORED and all seven error reasons are known."""
    assert {"UNKNOWN", "PENDING", "SUCCESS", "ERRORED"} == OAUTH_STATUSES
    assert {
        "UNKNOWN_ERROR", "CANCELLED", "DENIED", "IMPEDED", "PROVIDER_ERROR", "SERVER_ERROR",
        "SESSION_ERROR",
    } == OAUTH_ERROR_REASONS  # fmt: skip


@pytest.mark.parametrize(
    ("error_reason", "after_delay"),
    [
        ("CANCELLED", Reason.ABANDONED),
        ("SESSION_ERROR", Reason.ABANDONED),
        ("PROVIDER_ERROR", Reason.OAUTH_FAILED),
        ("SERVER_ERROR", Reason.OAUTH_FAILED),
        ("UNKNOWN_ERROR", Reason.OAUTH_FAILED),
        ("DENIED", None),
        ("IMPEDED", None),
    ],
)
def test_oauth_errors(error_reason: str, after_delay: Reason | None) -> None:
    """A person who tried and was failed by MX or the bank (PROVIDER_ERROR, SERVER_ERROR,
    UNKNOWN_ERROR) is offered a new link after REAUTH_OAUTH_ERROR_DELAY, as oauth_failed, never
    as abandoned; CANCELLED/SESSION_ERROR are abandoned; DENIED/IMPEDED get no link."""
    cfg = replace(CFG, abandon_after=timedelta(minutes=30), oauth_error_delay=timedelta(hours=2))
    started = NOW - timedelta(hours=1)
    m = member(
        connection_status="PENDING", oauth_status="ERRORED", oauth_error_reason=error_reason,
        oauth_started_at=started,
    )  # fmt: skip
    later = NOW + timedelta(hours=1, seconds=1)
    if after_delay is Reason.OAUTH_FAILED:
        assert reason_for(m, NOW, cfg) is None  # not yet: the delay runs from the OAuth start
        assert next_check_at(m, NOW, cfg) == started + cfg.oauth_error_delay
    assert reason_for(m, later, cfg) is after_delay


def test_unknown_oauth_status_reads_like_no_result() -> None:
    """auth_status UNKNOWN on a member that never connected is an abandoned start, like none."""
    m = member(
        connection_status="CREATED", oauth_status="UNKNOWN",
        oauth_started_at=NOW - timedelta(hours=1),
    )  # fmt: skip
    assert reason_for(m, NOW, CFG) is Reason.ABANDONED
