#!/usr/bin/env python3
"""The mutation check: each key claim of docs/reliability.md, broken on purpose, fails its tests.

Every entry of ``MUTATIONS`` is a one-line break of one claim: the file, the
exact line to find (it must occur once), its replacement, the claim it
breaks, and the tests that prove the claim. For each entry this script
copies the tree into a temporary folder (the working tree is never
touched), applies the break there, runs the cited tests with
``python -m pytest -x -q`` (``PYTHONPATH`` set to the copy, so the scripts
the tests start in subprocesses import the broken copy too), and puts the
line back. A break the tests do not notice is a survivor: the script names
it and exits 1. First, the cited tests run once on the unbroken copy: a
test that fails there would "kill" every break for nothing.

    python .ci/mutations.py            # all of them (a few minutes on 2 cores)
    python .ci/mutations.py --list     # name, claim and tests of each
    python .ci/mutations.py --only retry-after-cap --only number-gap

Why a hand-written list rather than mutmut or cosmic-ray: those generate a
mutant for every operator of every line (thousands here), and each mutant
needs tests that start real processes, SIGKILL them and mount a tmpfs: a run
would take hours, and most mutants would be of lines no claim rests on
(message wording, counters of stderr lines). The page makes a few dozen
claims, each resting on one line a reviewer can point at; the list names
that line and the tests the page cites for it, runs in minutes in CI, and
grows with every new claim (the page's "mutation" column names its
entries). Standard library only, like the rest of CI's scripts.

Exit status: 0 every break was caught; 1 a break survived (named); 2 the
list is stale (a line not found, or found twice) or a cited test fails or
cannot be collected on the unbroken tree.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What the cited tests need of the tree (copied once per run).
COPIED = ("pyproject.toml", "README.md", "CHANGELOG.md", "hamustro_logging", "tests", "docs")
#: A break that makes its tests hang is caught, after this long.
TIMEOUT = 240.0


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    find: str
    replace: str
    claim: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "number-gap",
        "hamustro_logging/store/append.py",
        "NUMBER_GAP = 1_000_000",
        "NUMBER_GAP = 0",
        "numbering goes on past a gap in a new database: no number another worker gave is reused",
        # (test_folder_deleted_under_a_running_app proves it with another
        # worker's numbers too, but fails today for another reason: the
        # reliability page's known limits.)
        (
            "tests/faults/test_storage.py::test_a_folder_wiped_under_two_workers_never_reuses_a_number",
        ),
    ),
    Mutation(
        "redirect-is-delivery",
        "hamustro_logging/retry.py",
        "    if status == 200:",
        "    if status is not None and 200 <= status < 400:",
        "a redirect (3xx) is never a delivery: the events are kept",
        (
            "tests/test_retry.py::test_only_a_200_is_a_delivery",
            "tests/faults/test_transport.py::test_a_redirect_to_a_get_that_answers_200_keeps_the_events",
        ),
    ),
    Mutation(
        "no-answer-is-delivery",
        "hamustro_logging/retry.py",
        "    if status == 200:",
        "    if status == 200 or status is None:",
        "no answer (refused, reset, timed out) is never a delivery: the events are kept",
        (
            "tests/test_retry.py::test_only_a_200_is_a_delivery",
            "tests/test_handler.py::test_dead_collector_keeps_everything_for_the_next_start",
        ),
    ),
    Mutation(
        "5xx-splits",
        "hamustro_logging/retry.py",
        "    if status in (400, 413):",
        "    if status in (400, 413) or (status or 0) >= 500:",
        "a 5xx keeps the whole batch and backs off; it never sets events aside",
        (
            "tests/test_retry.py::test_only_a_200_is_a_delivery",
            "tests/test_tracker.py::test_500_keeps_everything_and_a_later_run_delivers_once",
        ),
    ),
    Mutation(
        "bisection-stops-at-two",
        "hamustro_logging/delivery.py",
        "            if hi - lo == 1:",
        "            if hi - lo <= 2:",
        "a 400 is bisected down to the one refused event; its neighbours are delivered",
        (
            "tests/faults/test_refusals.py::test_a_refused_event_is_set_aside_and_the_rest_delivered",
        ),
    ),
    Mutation(
        "413-size-not-learnt",
        "hamustro_logging/delivery.py",
        "                self._shrink(size)",
        "                pass",
        "a 413 lowers the request size for what follows",
        (
            "tests/faults/test_stuck.py::test_413_splits_remembers_the_size_and_delivers_everything_once",
        ),
    ),
    Mutation(
        "405-not-at-the-cap",
        "hamustro_logging/retry.py",
        "        if answer.status == 405 or _is_redirect(answer):",
        "        if _is_redirect(answer):",
        "a 405 (wrong secret) is retried at the backoff cap",
        (
            "tests/test_retry.py::test_405_and_a_redirect_wait_the_cap_from_the_first_failure",
            "tests/test_retry.py::test_a_405_is_retried_at_the_backoff_cap_through_a_delivery",
        ),
    ),
    Mutation(
        "retry-after-uncapped",
        "hamustro_logging/retry.py",
        "            delay = max(delay, min(answer.retry_after, self.max_retry_after))",
        "            delay = max(delay, answer.retry_after)",
        "Retry-After is capped at 1 h",
        (
            "tests/test_retry.py::test_retry_after_is_capped_at_max_retry_after",
            "tests/test_retry.py::"
            "test_retry_after_through_a_delivery_is_obeyed_above_the_cap_and_capped_at_an_hour",
        ),
    ),
    Mutation(
        "retry-after-ignored",
        "hamustro_logging/retry.py",
        "        if answer.retry_after is not None:",
        "        if False:",
        "no retry before Retry-After (503 and 429)",
        (
            "tests/test_retry.py::test_retry_after_is_a_floor_above_the_cap",
            "tests/faults/test_collector_faults.py::"
            "test_429_retry_after_is_obeyed_and_a_forced_flush_delivers",
        ),
    ),
    Mutation(
        "close-waits-longer",
        "hamustro_logging/handler.py",
        "        if self._flusher.stop(self.close_timeout):",
        "        if self._flusher.stop(4 * self.close_timeout):",
        "close() and logging.shutdown() return within close_timeout",
        (
            "tests/test_handler.py::test_hanging_collector_does_not_block_emit_or_close",
            "tests/faults/test_crash_fork.py::test_exit_with_hanging_collector_is_prompt",
        ),
    ),
    Mutation(
        "dead-owner-lease-held",
        "hamustro_logging/owners.py",
        "        gone[owner] = owner_gone(owner)",
        "        gone[owner] = False",
        "the lease of a killed sender is taken over at once, not at its expiry",
        (
            "tests/faults/test_stuck.py::test_the_lease_of_a_killed_sender_is_taken_over_at_once",
            "tests/faults/test_crash_fork.py::test_sigkill_while_posting_loses_nothing",
        ),
    ),
    Mutation(
        "resend-not-counted",
        "hamustro_logging/store/settle.py",
        "                        resent += n",
        "                        resent += 0",
        "a possible duplicate (the answer lost) is counted in stats()['resent']",
        (
            "tests/test_handler.py::test_answer_lost_after_storing_may_duplicate_but_never_loses",
            "tests/faults/test_refusals.py::"
            "test_a_lost_200_gives_a_counted_duplicate_and_nothing_lost",
        ),
    ),
    Mutation(
        "resend-in-part-not-counted",
        "hamustro_logging/store/settle.py",
        "                        resent += stored",
        "                        resent += 0",
        "a possible duplicate (the answer lost) is counted in stats()['resent']",
        (
            "tests/test_queue.py::"
            "test_a_resend_settled_in_part_counts_the_stored_payloads_as_resent",
        ),
    ),
    Mutation(
        "damaged-chunk-sent",
        "hamustro_logging/store/damage.py",
        "        if isinstance(value, bytes) and count_frames(value) == n:",
        "        if isinstance(value, bytes):",
        "a damaged row is set aside, every other event goes out",
        (
            "tests/faults/test_damage.py::test_a_damaged_row_is_set_aside_and_every_other_event_goes_out",
        ),
    ),
    Mutation(
        "no-disk-floor",
        "hamustro_logging/store/append.py",
        "        if free + pages * page_size < self.min_free_bytes:",
        "        if False:",
        "new events are refused under the free-space floor (min_free_bytes)",
        (
            "tests/faults/test_disk_full.py::"
            "test_under_the_floor_new_events_are_refused_and_pending_ones_still_go_out",
            "tests/faults/test_disk_full.py::"
            "test_a_small_disk_filled_by_the_queue_drains_when_the_collector_is_back",
        ),
    ),
    Mutation(
        "full-disk-settle-raises",
        "hamustro_logging/delivery.py",
        "            self._owed.append(_Owed(batch, tuple(verdicts), maybe))",
        "            raise",
        "a delete a full disk refuses is owed in memory; delivery goes on, nothing raises",
        (
            "tests/faults/test_disk_full.py::test_a_disk_another_file_filled_still_delivers_each_event_once",
        ),
    ),
    Mutation(
        "full-disk-no-memory-claim",
        "hamustro_logging/delivery.py",
        "                self._unleased = True",
        "                return None",
        "a claim a full disk refuses goes on in memory: sending needs no disk",
        (
            "tests/faults/test_disk_full.py::test_a_disk_another_file_filled_still_delivers_each_event_once",
        ),
    ),
    Mutation(
        "full-disk-owed-sent-again",
        "hamustro_logging/delivery.py",
        "        exclude = {key for owed in self._owed for key in owed.batch.keys}",
        "        exclude: set[str] = set()",
        "what was sent while its delete is owed is not sent again",
        (
            "tests/faults/test_disk_full.py::test_a_disk_another_file_filled_still_delivers_each_event_once",
        ),
    ),
    Mutation(
        "journal-checksum-ignored",
        "hamustro_logging/journal.py",
        "            if zlib.crc32(body) != crc:",
        "            if False:",
        "a torn journal record (its checksum fails) ends the segment; nothing after it is read",
        (
            "tests/test_journal.py::test_a_record_is_read_back_and_a_torn_one_ends_the_segment",
            "tests/test_journal.py::test_a_damaged_record_before_the_end_sets_the_segment_aside",
        ),
    ),
    Mutation(
        "pickle-unpickled",
        "hamustro_logging/store/db.py",
        "        if mode == diskcache.core.MODE_PICKLE:",
        "        if False:",
        "a pickle in a tampered queue file is never unpickled",
        ("tests/test_tracker.py::test_a_tampered_pickle_in_the_queue_is_refused_not_run",),
    ),
    Mutation(
        "salvage-unbounded",
        "hamustro_logging/salvage.py",
        "            if time.monotonic() >= deadline:",
        "            if False:",
        "a salvage reads for one slice (SALVAGE_SECONDS) and goes on at later opens",
        (
            "tests/faults/test_salvage.py::"
            "test_a_salvage_cut_short_goes_on_at_later_opens_and_carries_each_row_once",
        ),
    ),
    Mutation(
        "salvage-carries-twice",
        "hamustro_logging/store/corrupt.py",
        "                cache.set(key, got.position)",
        "                cache.set(key, position)",
        "a salvage that goes on carries each row once (never what was sent since)",
        (
            "tests/faults/test_salvage.py::"
            "test_a_salvage_goes_on_at_claims_and_each_readable_event_is_sent_once",
        ),
    ),
    Mutation(
        "salvage-journal-offsets-late",
        "hamustro_logging/store/corrupt.py",
        '                for key, value in rows_with(aside, "j/", KEY_PREFIXES, db.timeout):',
        "                for key, value in []:",
        "a salvage carries the journal offsets first: no segment is moved in twice meanwhile",
        (
            "tests/faults/test_salvage.py::"
            "test_the_journal_offsets_are_carried_before_the_first_slice",
        ),
    ),
    Mutation(
        "salvage-jumps-over-rows",
        "hamustro_logging/salvage.py",
        "                found = _row(con, position)",
        "                found = None",
        "every readable row of a damaged database is carried, those between damaged pages too",
        (
            "tests/faults/test_salvage.py::test_a_corrupt_file_of_8_mib_costs_the_constructor_"
            "one_bounded_slice[ClientTracker-a queue, damage in patches]",
            "tests/faults/test_damage.py::test_a_damaged_database_opened_by_a_new_handler_is_salvaged",
        ),
    ),
    Mutation(
        "one-pass-skips-a-check",
        "hamustro_logging/mapping.py",
        "        if type(user_id) is not int or not 0 <= user_id <= UINT32_MAX:",
        "        if type(user_id) is not int:",
        "the one-pass encoding of the common event is the full path's, or leaves the record to it",
        ("tests/test_properties.py::test_the_one_pass_body_is_the_full_paths_or_none",),
    ),
    Mutation(
        "one-pass-encodes-differently",
        "hamustro_logging/mapping.py",
        '        parts.append(b"\\x38\\x01")',
        '        parts.append(b"\\x38\\x00")',
        "the one-pass encoding of the common event is the full path's, or leaves the record to it",
        ("tests/test_properties.py::test_the_one_pass_body_is_the_full_paths_or_none",),
    ),
    Mutation(
        "one-pass-head-of-another-second",
        "hamustro_logging/mapping.py",
        "    if head is None or not head[0] <= at < head[1]:",
        "    if head is None:",
        "the one-pass encoding of the common event is the full path's, or leaves the record to it",
        (
            "tests/test_properties.py::"
            "test_the_one_pass_start_kept_for_a_name_follows_each_events_second",
        ),
    ),
    Mutation(
        "one-pass-v2-skips-a-check",
        "hamustro_logging/mapping.py",
        "                if type(key) is not str or not key:",
        "                if type(key) is not str:",
        "schema 2's one-pass encoding is the full path's, or leaves the record to it",
        ("tests/test_properties.py::test_the_one_pass_body_of_schema_2_is_the_full_paths_or_none",),
    ),
    Mutation(
        "one-pass-v2-miscounts-the-size",
        "hamustro_logging/mapping.py",
        "            size += len(encoded_params)",
        "            size += 0",
        "schema 2's one-pass encoding is the full path's, or leaves the record to it",
        ("tests/test_properties.py::test_the_one_pass_body_of_schema_2_is_the_full_paths_or_none",),
    ),
    Mutation(
        "child-collects-parents-garbage",
        "hamustro_logging/store/db.py",
        "        gc.freeze()",
        "        pass",
        "a child forked inside SQLite never calls SQLite, not even through the collector",
        (
            "tests/faults/test_hangs.py::"
            "test_a_child_forked_inside_sqlite_never_collects_the_parents_garbage",
        ),
    ),
    Mutation(
        "every-event-refused",
        "hamustro_logging/mapping.py",
        "    return tuple.__new__(Event, (int(at), name, user_id, ip_bytes, params_bytes, is_testing))",  # noqa: E501
        '    raise EventError("event", "refused")',
        "bad input is refused naming its field; good input is encoded (hypothesis)",
        ("tests/test_properties.py::test_build_event_refuses_clearly_or_encodes_what_was_given",),
    ),
    Mutation(
        "wrong-field-named",
        "hamustro_logging/mapping.py",
        '            raise EventError("user_id", f"int {user_id} is outside 0..{UINT32_MAX}")',
        '            raise EventError("event", f"int {user_id} is outside 0..{UINT32_MAX}")',
        "an EventError names the field at fault (hypothesis)",
        (
            "tests/test_properties.py::test_build_event_refuses_clearly_or_encodes_what_was_given",
            "tests/test_properties.py::test_map_record_refuses_clearly_or_encodes_what_was_given",
        ),
    ),
)


def pytest(copy: Path, tests: tuple[str, ...]) -> tuple[int | None, str]:
    """Run ``tests`` in ``copy``; (pytest's exit status or None on a timeout, its last lines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMUSTRO_")}
    env["PYTHONPATH"] = str(copy)  # the copy, in this process and in the scripts tests start
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(copy / ".hypothesis")
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", *tests]
    try:
        done = subprocess.run(  # noqa: S603 -- this interpreter, our own test suite
            argv, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return None, f"no end within {TIMEOUT:g} s"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, "\n".join(lines[-15:])


def copy_tree(into: Path) -> Path:
    copy = into / "tree"
    copy.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, copy / name)
    return copy


def check_list(copy: Path, chosen: list[Mutation]) -> list[str]:
    """Every line to find occurs once in its file: else the list is stale."""
    stale = []
    for m in chosen:
        count = (copy / m.file).read_text().count(m.find + "\n")
        if count != 1:
            stale.append(f"{m.name}: {m.find.strip()!r} occurs {count} times in {m.file}")
    return stale


def run(chosen: list[Mutation]) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hamustro-mutations-") as tmp:
        copy = copy_tree(Path(tmp))
        stale = check_list(copy, chosen)
        if stale:
            print("the mutation list is stale:\n  " + "\n  ".join(stale))
            return 2
        cited = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        print(f"== {len(cited)} cited tests on the unbroken copy", flush=True)
        status, tail = pytest(copy, cited)
        if status != 0:
            print(f"the cited tests do not pass unbroken (pytest status {status}):\n{tail}")
            return 2
        survivors = []
        for m in chosen:
            path = copy / m.file
            original = path.read_text()
            path.write_text(original.replace(m.find + "\n", m.replace + "\n", 1))
            begun = time.monotonic()
            try:
                status, tail = pytest(copy, m.tests)
            finally:
                path.write_text(original)
            took = time.monotonic() - begun
            if status == 0:
                survivors.append(m.name)
                verdict = "SURVIVED"
            elif status in (1, None):
                verdict = "killed" if status == 1 else "killed (hung)"
            else:
                print(f"{m.name}: pytest status {status}, not a test failure:\n{tail}")
                return 2
            print(f"{verdict:>14}  {m.name}  ({took:.0f} s)  {m.claim}", flush=True)
    print(f"== {len(chosen)} breaks, {len(survivors)} survived, {time.monotonic() - started:.0f} s")
    if survivors:
        print("survivors (their claim is not proved by the tests cited): " + ", ".join(survivors))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="show the breaks and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="this break (repeatable)")
    args = parser.parse_args(argv)
    names = {m.name for m in MUTATIONS}
    if len(names) != len(MUTATIONS):
        print("two breaks share a name")
        return 2
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        print(f"no such break: {', '.join(unknown)} (see --list)")
        return 2
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}\n    {m.file}: {m.find.strip()}\n    -> {m.replace.strip()}")
            print(f"    claim: {m.claim}")
            for test in m.tests:
                print(f"    test:  {test}")
        return 0
    return run(chosen)


if __name__ == "__main__":
    sys.exit(main())
