"""End to end: a realistic stream through the real worker (and through ``deskpulse replay``)
must give the oracle's KPIs for every window, grouping and time, in the shape of docs/kpis.md."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from deskpulse.models.settings import Settings
from deskpulse.streams.core import Conversation
from tests.e2e_support import (
    Dataset,
    build_dataset,
    check_counters,
    compare_with_oracle,
    dead_letters,
    kpis_cli,
    kpis_http,
    kpis_store,
    read_counts,
    redis_snapshot,
    wait_for_state,
)
from tests.support import (
    StartWorker,
    WorkerProcess,
    produce_records,
    run_cli,
    settings_env,
    wait_until,
)


@pytest.fixture  # data only, built in well under a second: no shared set-up
def dataset() -> Dataset:
    data = build_dataset(seed=11, rate=2.0)
    print(f"\ndataset: {data.summary()}")
    return data


def tuned(settings: Settings, **update: Any) -> Settings:
    """Short batches; otherwise the test settings (a quick group join on the embedded
    broker) and the defaults operators get."""
    return settings.model_copy(update={"batch_within": 0.1, **update})


def run_live(
    start_worker: StartWorker, settings: Settings, dataset: Dataset, workdir: Path
) -> tuple[WorkerProcess, list[tuple[str, int, int]]]:
    """Start a worker, produce the dataset to it, wait until the state holds all of it."""
    worker = start_worker(settings, workdir, timeout_s=90)
    started = time.monotonic()
    # surveys whose tickets and chats are not even sent yet: held, not dropped
    head = dataset.records[: dataset.head]
    placed = asyncio.run(produce_records(settings, head))
    waiting = wait_until(
        lambda: (c := read_counts(settings)).applied >= dataset.head and c,
        60,
        message=worker.describe,
    )
    assert waiting.applied == waiting.held == dataset.head, waiting
    print(f"{dataset.head} surveys sent before any opener are held: {waiting}")
    placed += asyncio.run(produce_records(settings, dataset.records[dataset.head :]))
    produced = time.monotonic()
    counts = wait_for_state(settings, dataset, timeout_s=180, describe=worker.describe)
    check_counters(counts, dataset)
    print(
        f"produced {len(dataset.records)} records in {produced - started:.1f}s; "
        f"state complete {time.monotonic() - started:.1f}s after the first: {counts}"
    )
    return worker, placed


@pytest.mark.parametrize("engine_process", [False, True], ids=["in-process", "engine-process"])
def test_live_worker_matches_the_oracle(
    settings: Settings,
    make_topics: Any,
    dataset: Dataset,
    tmp_path: Path,
    engine_process: bool,
    start_worker: StartWorker,
) -> None:
    settings = tuned(settings, engine_process=engine_process)
    make_topics(settings)
    worker, placed = run_live(start_worker, settings, dataset, tmp_path / "worker")
    started = time.monotonic()
    documents = compare_with_oracle(
        dataset,
        lambda width, at_s, by: kpis_cli(settings, tmp_path, width=width, at_s=at_s, by=by),
    )
    print(f"{len(documents)} CLI documents equal the oracle ({time.monotonic() - started:.1f}s)")

    # The worker serves the very same documents.
    for (width, at_s, by), document in documents.items():
        served = kpis_http(worker, width=width, at_s=at_s, by=by)
        assert served == document, (width, at_s, by)

    # Something to compare in every part of the document, and the empty cases too.
    full = documents[("24h", max(at for _, at, _ in documents), ())]["groups"][0]
    assert full["tickets_created"] > 1000
    assert full["first_response"]["count"] > 500
    assert full["chats"]["answered"] > 100
    assert full["chats"]["abandoned"] > 0
    assert full["csat"]["responses"] > 0
    assert full["nps"]["responses"] > 0
    assert full["ces"]["responses"] > 0
    late = documents[("5m", max(at for _, at, _ in documents), ())]["groups"][0]
    assert late["tickets_created"] == 0, "the window after the data is empty"
    assert late["first_response"]["p50_seconds"] is None
    assert late["csat"]["ratio"] is None

    # Every malformed record went to the dead-letter topic, once.
    letters = dead_letters(settings, dataset, placed)
    assert sum(letters.values()) == len(letters) == dataset.rejected

    assert worker.stop() == 0, worker.describe()


def _state(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """What a prefix holds, keyed without the prefix, in comparable form.

    Bucket hashes, roll-ups and totals exactly; conversations decoded (a JSON object's
    key order may follow the processing order); the held/expiry/deadline indexes exactly;
    meta without its version (the number of transactions differs by batching); neither
    meta nor config with the state's generation (random per prefix).
    ``bidx`` is left out: it may keep the name of a bucket a later batch emptied again;
    so are ``bver`` (the buckets' stamps: the generation and the version of their commit)
    and ``lmoved``, ``hmoved`` and ``lgm`` (logs of the commits: their number differs by
    batching; ``lgm``'s run in meta too).
    """
    snapshot = redis_snapshot(client, f"{prefix}:*")
    out: dict[str, Any] = {}
    for key, (kind, content) in snapshot.items():
        name = key[len(prefix) + 1 :]
        if name.startswith("{p"):
            part, _, rest = name.partition("}:")
            if rest in ("bidx", "bver", "lmoved", "hmoved", "lgm"):
                continue
            if rest == "conv":
                content = {k: Conversation.loads(v) for k, v in content.items()}
            if rest == "meta":
                content = {
                    k: v
                    for k, v in content.items()
                    if k not in (b"version", b"gen") and k[:4] != b"lgm:"
                }
            name = f"{part}}}:{rest}"
        elif name == "config":  # the generation is random per state
            content = {k: v for k, v in content.items() if k != b"generation"}
        out[name] = (kind, content)
    return out


def test_replay_leaves_the_state_the_live_worker_does(
    settings: Settings,
    make_topics: Any,
    dataset: Dataset,
    tmp_path: Path,
    start_worker: StartWorker,
) -> None:
    # No SLA breach check during the test: claiming a breach writes ``due``, ``breached``
    # and a ``tot`` counter, which the replay (no timers) leaves to the next live worker.
    settings = tuned(settings, breach_check_interval=3600)
    make_topics(settings)
    worker, _ = run_live(start_worker, settings, dataset, tmp_path / "worker")
    assert worker.stop() == 0, worker.describe()

    replayed = settings.model_copy(
        update={
            "redis_prefix": settings.redis_prefix + "-replay",
            # the replay dead-letters the malformed records again: keep the live topic exact
            "topic_deadletter": settings.topic_deadletter + ".replay",
        }
    )
    started = time.monotonic()
    done = run_cli(["replay"], settings_env(replayed), cwd=tmp_path, timeout_s=240)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    counts = wait_for_state(replayed, dataset, timeout_s=5, settle_s=0, claims=False)
    check_counters(counts, dataset)
    print(f"replay of {len(dataset.records)} records took {elapsed:.1f}s: {counts}")

    # neither claimed a breach (no check ran): the oracle without breaches
    live_docs = compare_with_oracle(
        dataset, lambda width, at_s, by: kpis_store(settings, width, at_s, by), claimed_until_s=None
    )
    replay_docs = compare_with_oracle(
        dataset, lambda width, at_s, by: kpis_store(replayed, width, at_s, by), claimed_until_s=None
    )
    for key, document in live_docs.items():
        assert replay_docs[key] == document, key  # identical, not merely close

    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        live = _state(client, settings.redis_prefix)
        replay = _state(client, replayed.redis_prefix)
    finally:
        client.close()
    buckets = [name for name in live if ":b:" in name or ":r:" in name]
    assert len(buckets) > 100, sorted(live)[:20]
    assert any(name.endswith(":tot") for name in live)
    assert sorted(live) == sorted(replay), set(live) ^ set(replay)
    kinds = Counter(name.split(":")[1] if ":" in name else name for name in live)
    print(f"compared {len(live)} keys: {dict(sorted(kinds.items()))}")
    differing = [name for name in live if live[name] != replay[name]]
    assert not differing, [(name, live[name], replay[name]) for name in differing[:3]]
