"""One message per person: the pure grouping rules (worker.core.grouping) and the grouped
message contract (worker.core.contract)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from worker.core.contract import (
    GROUP_MEMBER_FIELDS,
    GROUP_MESSAGE_TYPE,
    MESSAGE_TYPE,
    build_message,
    group_id,
    idempotency_key,
)
from worker.core.grouping import Row, form_groups, held_until, message_for, singles, window_cutoff

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def row(
    member: str, user: str = "USR-1", *, at: datetime = T0, gid: uuid.UUID | None = None
) -> Row:
    return Row(
        id=uuid.uuid5(uuid.NAMESPACE_URL, member),
        user_guid=user,
        idempotency_key=idempotency_key(member, 1, 0),
        created_at=at,
        group_id=gid,
    )


def payload(r: Row, member: str) -> dict[str, object]:
    return build_message(
        notification_id=r.id,
        user_guid=r.user_guid,
        member_guid=member,
        institution_code=f"bank-{member}",
        reason="revoked",
        oauth_window_uri=f"https://int-widgets.moneydesktop.com/oauth/predirect_to/{member}/t",
        generated_at=T0,
        episode=1,
        reminder=0,
        skip_aggregation=False,
        channel="BROWSER",
        reconnect_url=f"https://reauth.example/r/{member}",
    )


def test_group_id_is_stable_and_order_free() -> None:
    """The same member keys give the same id whatever order they are read in; others differ."""
    keys = ["MBR-b:1:0", "MBR-a:1:0", "MBR-c:2:1"]
    assert group_id(keys) == group_id(reversed(keys)) == group_id([*keys, keys[0]])
    assert group_id(keys) != group_id(keys[:2])
    assert group_id(keys).version == 5


def test_window_is_measured_from_the_earliest_due_row() -> None:
    window = timedelta(minutes=5)
    assert held_until(T0, window) == T0 + window
    # Released once the earliest row became due at or before now - window: never held longer.
    assert window_cutoff(T0 + window, window) == T0
    assert window_cutoff(T0 + window - timedelta(seconds=1), window) < T0


def test_rows_of_one_user_form_one_group_ordered_by_due_time() -> None:
    """Three members of one user → one new group, id from their keys, oldest row first; another
    user's row is its own group of one with the row's own id."""
    a = row("MBR-a", at=T0 + timedelta(seconds=20))
    b = row("MBR-b", at=T0)
    c = row("MBR-c", at=T0 + timedelta(seconds=10))
    other = row("MBR-x", user="USR-2", at=T0 + timedelta(seconds=5))

    groups = form_groups([a, b, c, other])

    assert [g.rows for g in groups] == [(b.id, c.id, a.id), (other.id,)]
    first, second = groups
    assert first.id == group_id([a.idempotency_key, b.idempotency_key, c.idempotency_key])
    assert (first.user_guid, first.new, first.grouped) == ("USR-1", True, True)
    assert (second.id, second.new, second.grouped) == (other.id, True, False)


def test_stored_groups_are_kept_and_never_merged_with_new_rows() -> None:
    """A retried group keeps its id and rows (one canceled member simply missing); a new row of
    the same user forms a group of its own; a grouped message stays grouped when one row is left."""
    gid = group_id(["MBR-a:1:0", "MBR-b:1:0"])
    a = row("MBR-a", gid=gid)
    late = row("MBR-d", at=T0 + timedelta(minutes=30))

    groups = form_groups([late, a])

    assert [(g.id, g.rows, g.new) for g in groups] == [
        (gid, (a.id,), False),
        (late.id, (late.id,), True),
    ]
    assert groups[0].grouped  # still a reauth.oauth_links message under the same id
    assert not groups[1].grouped


def test_member_grouping_is_one_single_message_per_row() -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    groups = singles(ids)
    assert [g.rows for g in groups] == [(i,) for i in ids]
    assert not any(g.grouped or g.new for g in groups)


def test_message_for_a_group_lists_each_member_with_its_link() -> None:
    """The grouped message carries type/version/user once and each member's fields, with the
    member's notification id; a group of one is exactly the member's own message."""
    members = {m: row(m, at=T0 + timedelta(seconds=i)) for i, m in enumerate(["MBR-a", "MBR-b"])}
    payloads = {r.id: {**payload(r, m), "id": "ignored"} for m, r in members.items()}
    (group,) = form_groups(members.values())

    message = message_for(group, payloads)

    assert message["type"] == GROUP_MESSAGE_TYPE == "reauth.oauth_links"
    assert (message["id"], message["version"], message["user_guid"]) == (
        str(group.id),
        1,
        "USR-1",
    )
    assert message["idempotency_keys"] == ["MBR-a:1:0", "MBR-b:1:0"]
    assert [tuple(m) for m in message["members"]] == [GROUP_MEMBER_FIELDS] * 2
    first = message["members"][0]
    assert first["id"] == str(members["MBR-a"].id)
    assert first["oauth_window_uri"].endswith("/MBR-a/t")
    assert first["reconnect_url"] == "https://reauth.example/r/MBR-a"
    assert (first["institution_code"], first["channel"], first["reason"]) == (
        "bank-MBR-a",
        "BROWSER",
        "revoked",
    )

    (alone,) = singles([members["MBR-a"].id])
    single = message_for(alone, payloads)
    assert single["type"] == MESSAGE_TYPE
    assert single["id"] == str(members["MBR-a"].id)  # the row id wins over the payload's
