"""The diskcache queue: numbering, chunks, leases, settling, the rejected area, the cap."""

from __future__ import annotations

import time
from pathlib import Path

from hamustro_logging.queue import Queue
from hamustro_logging.wire import Event, iter_frames

HEADER = b"\x0a\x01d"


def events(n: int, name: bytes = b"e") -> list[Event]:
    return [Event(1_700_000_000 + i, name) for i in range(n)]


def test_numbers_continue_and_chunks_are_bounded(tmp_path: Path) -> None:
    q = Queue(tmp_path, chunk_events=4)
    hid = q.register_header("s", HEADER)
    first = q.append("s", hid, events(10))
    assert (first.first_nr, first.last_nr, first.stored, first.dropped) == (1, 10, 10, 0)
    assert q.append("s", hid, events(1)).last_nr == 11
    assert q.pending_count() == 11 and q.last_numbers() == {"s": 11}
    batch = q.claim("a", 60, max_events=100)
    assert batch is not None
    assert [nr for nr, _ in batch.frames()] == list(range(1, 12))
    # 4 + 4 + 2 from the first append; the second append's event joins the last
    # chunk (its numbers run on, and it is below the limit): 4 + 4 + 3.
    assert [int(k.rsplit("/", 1)[1]) for k in batch.keys] == [4, 4, 3]
    assert batch.body.startswith(HEADER)


def test_a_claimed_chunk_is_not_extended(tmp_path: Path) -> None:
    q = Queue(tmp_path, chunk_events=10)
    hid = q.register_header("s", HEADER)
    q.append("s", hid, events(2))
    batch = q.claim("a", 60)
    assert batch is not None and batch.count == 2
    q.append("s", hid, events(1))  # the leased chunk is left alone: a new one
    assert q.ack(batch).sent == 2
    rest = q.claim("a", 60)
    assert rest is not None and [nr for nr, _ in rest.frames()] == [3]


def test_a_lease_keeps_others_off_until_it_expires(tmp_path: Path) -> None:
    q = Queue(tmp_path)
    hid = q.register_header("s", HEADER)
    q.append("s", hid, events(3))
    mine = q.claim("a", lease_seconds=0.3)
    assert mine is not None and mine.count == 3
    assert q.claim("b", lease_seconds=60) is None  # leased by a
    time.sleep(0.4)
    theirs = q.claim("b", lease_seconds=60)  # a "died": its lease expired
    assert theirs is not None and theirs.count == 3
    assert q.ack(mine).sent == 0  # a's lease is gone: a deletes nothing
    assert q.pending_count() == 3
    assert q.ack(theirs).sent == 3 and q.pending_count() == 0


def test_release_gives_back_and_maybe_sent_counts_a_resend(tmp_path: Path) -> None:
    q = Queue(tmp_path)
    hid = q.register_header("s", HEADER)
    q.append("s", hid, events(2))
    batch = q.claim("a", 60)
    assert batch is not None
    q.release(batch, maybe_sent=True)
    again = q.claim("a", 60)
    assert again is not None and again.keys == batch.keys
    assert q.ack(again).resent == 2


def test_a_resend_settled_in_part_counts_the_stored_payloads_as_resent(tmp_path: Path) -> None:
    """A chunk sent before (its answer lost) and now settled payload by payload."""
    q = Queue(tmp_path)
    hid = q.register_header("s", HEADER)
    q.append("s", hid, events(4))
    batch = q.claim("a", 60)
    assert batch is not None
    q.release(batch, maybe_sent=True)
    again = q.claim("a", 60)
    assert again is not None
    done = q.settle(again, [True, None, "400", True])
    assert (done.sent, done.rejected, done.resent) == (2, 1, 2)
    assert q.pending_count() == 1


def test_settle_splits_delivered_rejected_and_unknown(tmp_path: Path) -> None:
    q = Queue(tmp_path)
    hid = q.register_header("s", HEADER)
    q.append("s", hid, events(6))
    batch = q.claim("a", 60)
    assert batch is not None
    done = q.settle(batch, [True, False, None, None, True, False])
    assert (done.sent, done.rejected) == (2, 2)
    assert q.pending_count() == 2 and q.rejected_count() == 2
    assert [nr for _, _, nr, _ in q.iter_events()] == [3, 4]
    assert [nr for _, _, nr, _ in q.iter_events(rejected=True)] == [2, 6]
    rest = q.claim("a", 60)
    assert rest is not None and [nr for nr, _ in rest.frames()] == [3, 4]
    q.ack(rest)
    assert q.retry_rejected() == 2
    assert (q.pending_count(), q.rejected_count()) == (2, 0)
    back = q.claim("a", 60)
    assert back is not None and [nr for nr, _ in back.frames()] == [2, 6]


def test_a_full_queue_refuses_new_events_and_keeps_old_ones(tmp_path: Path) -> None:
    q = Queue(tmp_path, max_events=5)
    hid = q.register_header("s", HEADER)
    assert q.append("s", hid, events(4)).stored == 4
    done = q.append("s", hid, events(3, b"new"))
    assert (done.stored, done.dropped, done.last_nr) == (1, 2, 5)
    assert q.append("s", hid, events(1)).dropped == 1
    assert q.pending_count() == 5
    by_bytes = Queue(tmp_path / "b", max_bytes=100)
    hid = by_bytes.register_header("s", HEADER)
    done = by_bytes.append("s", hid, events(50))
    assert 0 < done.stored < 50 and by_bytes.pending_bytes() <= 100


def test_a_backlog_is_read_lazily(tmp_path: Path) -> None:
    q = Queue(tmp_path, chunk_events=100)
    hid = q.register_header("s", HEADER)
    for _ in range(20):
        q.append("s", hid, events(100))
    q.close()
    reopened = Queue(tmp_path)
    assert reopened.pending_count() == 2000  # a counter: nothing scanned
    batch = reopened.claim("a", 60, max_events=250)
    assert batch is not None and batch.count == 200  # whole chunks, within the limit
    assert len(list(iter_frames(batch.data))) == 200


def test_set_user_survives_a_new_queue_object_and_signing_out_forgets_it(tmp_path: Path) -> None:
    q = Queue(tmp_path)
    assert q.load_user("client-1") == (None, None)
    q.set_user("client-1", "acme", "u-7")
    q.close()
    q = Queue(tmp_path)  # a later run
    assert q.load_user("client-1") == ("acme", "u-7")
    assert q.load_user("client-2") == (None, None)
    q.set_user("client-1", None, None)
    assert q.load_user("client-1") == (None, None)
    q.close()


# -- the ledger (issue 18) -----------------------------------------------------------------


def test_settle_counts_each_outcome_in_the_ledger_with_the_rows(tmp_path: Path) -> None:
    q = Queue(tmp_path)
    hid = q.register_header("s", HEADER)
    q.append("s", hid, events(6))
    batch = q.claim("a", 60)
    assert batch is not None
    q.settle(batch, [True, "400", None, None, True, "413"], kept_maybe_sent=[False] * 6)
    ledger = q.ledger()
    assert (ledger.stored, ledger.sent, ledger.resent) == (6, 2, 0)
    assert ledger.rejected == {"400": 1, "413": 1}
    assert ledger.unaccounted(q.pending_count()) == 0
    q.retry_rejected()
    assert q.ledger().retried == 2 and q.ledger().unaccounted(q.pending_count()) == 0


def test_a_resend_is_counted_at_its_claim_and_taken_back_when_nothing_was_stored(
    tmp_path: Path,
) -> None:
    q = Queue(tmp_path)
    hid = q.register_header("s", HEADER)
    q.append("s", hid, events(3))
    first = q.claim("a", 60)
    assert first is not None
    assert q.release(first, maybe_sent=True).resent == 0  # a first send is no duplicate
    second = q.claim("a", 60)
    assert second is not None
    assert q.ledger().resent == 3  # counted before the request goes out
    assert q.release(second, maybe_sent=False).resent == 0  # "not stored": taken back
    assert q.ledger().resent == 0
    third = q.claim("a", 60)  # the first attempt's mark is still there
    assert third is not None and q.ledger().resent == 3
    assert q.ack(third).resent == 3 and q.ledger().resent == 3


def test_only_the_part_of_a_split_batch_a_gateway_may_have_stored_keeps_its_mark(
    tmp_path: Path,
) -> None:
    q = Queue(tmp_path)
    hid = q.register_header("s", HEADER)
    q.append("s", hid, events(4))
    batch = q.claim("a", 60)
    assert batch is not None
    # halves: the first got a 200, the second's request a 502 (maybe stored)
    q.settle(batch, [True, True, None, None], kept_maybe_sent=[False, False, True, True])
    again = q.claim("a", 60)
    assert again is not None and [nr for nr, _ in again.frames()] == [3, 4]
    assert q.ack(again).resent == 2 and q.ledger().resent == 2


def test_add_to_ledger_takes_known_names_and_counts_that_only_grow(tmp_path: Path) -> None:
    q = Queue(tmp_path)
    q.add_to_ledger({"dropped/closed": 2, "dropped/invalid": 1})
    with q._transaction():  # also inside the caller's transaction
        q.add_to_ledger({"dropped/closed": 1})
    assert q.ledger().dropped == {"closed": 3, "invalid": 1}
    for bad in ({"delivered": 1}, {"dropped/Bad Reason": 1}, {"dropped/closed": -1}):
        try:
            q.add_to_ledger(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")
    assert q.ledger().dropped_total == 4


def test_fates_say_where_each_range_of_numbers_is(tmp_path: Path) -> None:
    q = Queue(tmp_path, chunk_events=2)
    hid = q.register_header("s", HEADER)
    q.append("s", hid, events(8))
    batch = q.claim("a", 60, max_events=6)
    assert batch is not None and batch.count == 6
    q.settle(batch, [True, True, "400", None, True, True])
    fates = q.fates("s", [(1, 2), (3, 4), (5, 8), (9, 9)])
    assert [(f.pending, f.rejected, f.set_aside, f.delivered) for f in fates] == [
        (0, 0, 0, 2),
        (1, 1, 0, 0),
        (2, 0, 0, 2),
        (0, 0, 0, 1),  # a number never stored reads as not held: the caller knows its own
    ]


def test_rebind_keeps_the_old_group_so_its_writer_goes_on_logging_into_it(tmp_path: Path) -> None:
    writer = Queue(tmp_path)
    hid = writer.register_header("s", HEADER, "old")
    writer.append("s", hid, events(2))
    cli = Queue(tmp_path)
    assert cli.rebind("new") == 2
    writer.append("s", hid, events(3))  # the old app, still running
    sender = Queue(tmp_path)
    new = sender.claim("b", 60, destination="new")
    assert new is not None and new.count == 2
    assert sender.claim("b", 60, destination="new") is None  # the 3 wait for "old"
    assert sender.aside_count() == 0 and sender.pending_count() == 5
    assert cli.rebind("new") == 3  # a later rebind moves them too
    for q in (writer, cli, sender):
        q.close()
