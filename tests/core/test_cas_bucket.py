"""The durable broker's storage honours compare-and-set (processors.core.cas_bucket).

Tansu's S3 engine orders concurrent updates of one object (the topic list, a partition's
watermark) by ``If-Match``; plain ``localbucket`` ignores it on PUT, and concurrent topic
creations were lost (22 of 40 kept). These tests show the fault on plain ``localbucket``, the
fix on the server the durable broker runs, and what it means end to end: topics created at once
all survive a broker restart, and producers writing one partition at once lose no record (on
plain ``localbucket`` they fail with the "Unknown broker error" a resumed run died of).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from processors.core.stack import EmbeddedBroker, free_port


def _serve(module: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", str(port), str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            _request("PUT", f"{endpoint}/bucket")
            return proc, endpoint
        except urllib.error.HTTPError:
            return proc, endpoint
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, f"{module} did not serve"
            time.sleep(0.05)


def _request(
    method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> str:
    """The response's ETag; raises HTTPError for an error status."""
    req = urllib.request.Request(url, data=body or None, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as response:
        return str(response.headers.get("ETag", ""))


def _status(method: str, url: str, body: bytes, headers: dict[str, str]) -> int:
    try:
        _request(method, url, body, headers)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


@pytest.fixture(params=["localbucket", "processors.core.cas_bucket"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    proc, endpoint = _serve(request.param, tmp_path / "store")
    try:
        yield request.param, endpoint
    finally:
        proc.kill()
        proc.wait()


def test_a_put_with_a_stale_etag_is_refused(server: tuple[str, str]) -> None:
    module, endpoint = server
    url = f"{endpoint}/bucket/clusters/meta.json"
    first = _request("PUT", url, b'{"topics": 1}')
    second = _request("PUT", url, b'{"topics": 2}', {"If-Match": first})
    stale = _status("PUT", url, b'{"topics": 3}', {"If-Match": first})
    missing = _status("PUT", f"{url}.absent", b"{}", {"If-Match": first})
    if module == "localbucket":  # the fault this module exists for
        assert (stale, missing) == (200, 200)
        return
    assert (stale, missing) == (412, 412)
    assert _status("PUT", url, b'{"topics": 4}', {"If-Match": second}) == 200
    assert _status("PUT", url, b"{}", {"If-None-Match": "*"}) == 412  # create-once still holds


def _in_threads(count: int, work: object) -> None:
    threads = [threading.Thread(target=work, args=(k,)) for k in range(count)]  # type: ignore[arg-type]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_topics_created_at_once_all_survive_a_restart(tmp_path: Path) -> None:
    storage = tmp_path / "store"
    errors: list[str] = []

    with EmbeddedBroker(log_path=tmp_path / "b1.log", storage_dir=storage) as broker:

        def create(k: int) -> None:
            admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
            for i in range(8):
                for future in admin.create_topics([NewTopic(f"t{k}-{i}", 2, 1)]).values():
                    try:
                        future.result(15)
                    except Exception as exc:  # collected, asserted below
                        errors.append(str(exc))

        _in_threads(4, create)
    assert not errors
    with EmbeddedBroker(log_path=tmp_path / "b2.log", storage_dir=storage) as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        topics = {t for t in admin.list_topics(timeout=15).topics if t.startswith("t")}
    assert topics == {f"t{k}-{i}" for k in range(4) for i in range(8)}


def test_producers_writing_one_partition_at_once_lose_nothing(tmp_path: Path) -> None:
    per_producer, producers = 150, 4
    with EmbeddedBroker(log_path=tmp_path / "b.log", storage_dir=tmp_path / "store") as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        admin.create_topics([NewTopic("shared", 1, 1)])["shared"].result(15)
        failed: list[str] = []

        def produce(k: int) -> None:
            producer = Producer(
                {"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0, "acks": "all"}
            )
            for i in range(per_producer):
                producer.produce(
                    "shared",
                    value=f"{k}-{i}".encode(),
                    partition=0,
                    on_delivery=lambda err, _msg: err and failed.append(str(err)),
                )
                producer.poll(0)
            producer.flush(30)

        _in_threads(producers, produce)
        assert not failed
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap_servers,
                "group.id": "check",
                "enable.auto.commit": False,
            }
        )
        consumer.assign([TopicPartition("shared", 0, 0)])
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 60
        while len(seen) < per_producer * producers and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=1):
                if message.error() is None:
                    seen[message.offset()] = message.value().decode()
        consumer.close()
    assert sorted(seen) == list(range(per_producer * producers))  # contiguous, none twice
    assert len(set(seen.values())) == per_producer * producers  # every record, once


def test_a_read_pairs_the_body_with_its_own_etag(server: tuple[str, str]) -> None:
    """While one thread rewrites an object, every GET's ETag is the MD5 of the body it sent."""
    module, endpoint = server
    url = f"{endpoint}/bucket/watermark.json"
    _request("PUT", url, b"0")
    stop = threading.Event()

    def rewrite() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            _request("PUT", url, str(n).encode() * 50)

    writer = threading.Thread(target=rewrite)
    writer.start()
    mismatched = reads = 0
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline and not mismatched:
            with urllib.request.urlopen(url, timeout=5) as response:
                body, etag = response.read(), response.headers["ETag"].strip('"')
            reads += 1
            mismatched += hashlib.md5(body).hexdigest() != etag
    finally:
        stop.set()
        writer.join()
    if module == "localbucket":  # the fault: about 3 reads in 100 while it is rewritten
        assert mismatched, f"no mismatch in {reads} reads"
    else:
        assert reads > 50 and not mismatched


_KEYS = [
    "c/t/partitions/0/records/00000000000000000000.batch",
    "c/t/partitions/0/records/00000000000000000003.batch",
    "c/t/partitions/0/records/00000000000000000007.batch",
    "c/t/partitions/0/watermark.json",
    "c/t/partitions/1/records/00000000000000000000.batch",
    "c/t/partitions/10/records/00000000000000000000.batch",
    "c/t/partitions/0/rec.txt",
    "c/u/x",
    "c/t2/y",
    "meta.json",
]


def _listing(endpoint: str, query: dict[str, str]) -> list[tuple[str, ...]]:
    """Every page of a ListObjectsV2 (following its continuation tokens): the prefix asked,
    keys and common prefixes in order, and whether it was truncated."""
    pages: list[tuple[str, ...]] = []
    token = None
    while True:
        args = {"list-type": "2", **query, **({"continuation-token": token} if token else {})}
        with urllib.request.urlopen(f"{endpoint}/bucket?{urlencode(args)}", timeout=5) as r:
            root = ET.fromstring(r.read())
        text = [e.text or "" for e in root.iter() if e.tag.split("}")[1] in ("Key", "Prefix")]
        truncated = root.findtext("{*}IsTruncated")
        pages.append((*text, str(truncated)))
        token = root.findtext("{*}NextContinuationToken")
        if not token:
            return pages


def test_a_listing_from_the_prefix_folder_answers_as_a_walk_of_the_bucket(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    servers = [_serve(module, folder) for module in ("localbucket", "processors.core.cas_bucket")]
    try:
        for key in _KEYS:
            _request("PUT", f"{servers[0][1]}/bucket/{key}", key.encode())
        queries = [
            {"prefix": prefix, **extra}
            for prefix in ("", "c/", "c/t", "c/t/", "c/t/partitions/0/rec", "c/t/partitions/0/")
            for extra in (
                {},
                {"delimiter": "/"},
                {"max-keys": "1"},
                {"max-keys": "2", "delimiter": "/"},
                {"start-after": "c/t/partitions/0/records/00000000000000000000.batch"},
                {"start-after": "a"},
                {"start-after": "z"},
            )
        ]
        for query in queries:
            plain, scoped = (_listing(endpoint, query) for _, endpoint in servers)
            assert scoped == plain, query
        records = "c/t/partitions/0/records/"
        (page,) = _listing(servers[1][1], {"prefix": records})
        assert page == (records, *(k for k in _KEYS if k.startswith(records)), "false")
    finally:
        for proc, _ in servers:
            proc.kill()
            proc.wait()


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _delete_body(keys: list[str], quiet: bool = False) -> bytes:
    objects = "".join(f"<Object><Key>{key}</Key></Object>" for key in keys)
    namespace = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
    return f"<Delete {namespace}>{objects}<Quiet>{str(quiet).lower()}</Quiet></Delete>".encode()


def test_delete_objects_deletes_every_listed_key_and_answers_for_each(
    server: tuple[str, str], tmp_path: Path
) -> None:
    module, endpoint = server
    for key in ("t/p0/records/0.batch", "t/p0/records/1.batch", "t/p1/watermark.json"):
        _request("PUT", f"{endpoint}/bucket/{key}", b"data")
    listed = ["t/p0/records/0.batch", "t/p0/records/1.batch", "t/p0/absent.batch"]
    status, body = _post(f"{endpoint}/bucket?delete", _delete_body(listed))
    if module == "localbucket":  # the fault: Tansu deletes a topic's objects this way
        assert status == 501
        return
    assert status == 200
    deleted = [e.text for e in ET.fromstring(body).iter() if e.tag.endswith("Key")]
    assert deleted == listed  # a missing key counts as deleted, as on S3
    store = tmp_path / "store" / "bucket"
    assert not (store / "t" / "p0").exists()  # its folders, left empty, went too
    assert (store / "t" / "p1" / "watermark.json").read_bytes() == b"data"
    # quiet: only errors are listed; a body that is not a Delete document deletes nothing
    status, body = _post(
        f"{endpoint}/bucket?delete", _delete_body(["t/p1/watermark.json"], quiet=True)
    )
    assert status == 200 and not [e for e in ET.fromstring(body) if e.tag.endswith("Deleted")]
    _request("PUT", f"{endpoint}/bucket/kept", b"data")
    assert _post(f"{endpoint}/bucket?delete", b"<Delete><Object>")[0] == 400
    assert _post(f"{endpoint}/bucket?delete", b"<Other/>")[0] == 400
    assert (store / "kept").is_file()


def test_a_durable_broker_deletes_a_topic_and_creates_it_again_empty(tmp_path: Path) -> None:
    storage = tmp_path / "store"
    with EmbeddedBroker(log_path=tmp_path / "b.log", storage_dir=storage) as broker:
        bootstrap = broker.bootstrap_servers
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("rotated", 2, 1)])["rotated"].result(10)
        producer = Producer({"bootstrap.servers": bootstrap})
        for i in range(20):
            producer.produce("rotated", f"old-{i}".encode(), partition=i % 2)
        assert producer.flush(10) == 0
        assert any("rotated" in str(p) for p in storage.rglob("*.batch"))
        admin.delete_topics(["rotated"], operation_timeout=10)["rotated"].result(20)
        assert "rotated" not in admin.list_topics(timeout=10).topics
        assert not any("rotated" in str(p) for p in storage.rglob("*.batch"))
        admin.create_topics([NewTopic("rotated", 2, 1)])["rotated"].result(10)
        producer.produce("rotated", b"new", partition=0)
        assert producer.flush(10) == 0
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader"})
        try:
            marks = [
                consumer.get_watermark_offsets(TopicPartition("rotated", p), timeout=10)
                for p in (0, 1)
            ]
        finally:
            consumer.close()
        assert marks == [(0, 1), (0, 0)]  # no old record, offsets from 0 again


def _modified(text: str) -> int:
    """An S3 listing's ``LastModified`` in nanoseconds since the epoch."""
    seconds, _, fraction = text.rstrip("Z").partition(".")
    whole = datetime.strptime(seconds, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return int(whole) * 10**9 + int(fraction.ljust(9, "0")[:9])


def test_a_listing_orders_objects_written_within_a_second_as_written(
    server: tuple[str, str], tmp_path: Path
) -> None:
    module, endpoint = server
    for key in ("p/0.batch", "p/1.batch", "p/2.batch", "p/3.batch"):
        _request("PUT", f"{endpoint}/bucket/{key}", b"data")
    folder = tmp_path / "store" / "bucket" / "p"
    now = time.time_ns() // 10**9 * 10**9 + 5 * 10**8  # mid-second: 0 to 2 share it
    mtimes = {"0": now - 500_000, "1": now, "2": now, "3": now - 10**9}  # 1 and 2: a tie
    for name, mtime in mtimes.items():
        os.utime(folder / f"{name}.batch", ns=(mtime, mtime))
    with urllib.request.urlopen(f"{endpoint}/bucket?list-type=2&prefix=p/", timeout=5) as r:
        root = ET.fromstring(r.read())
    stamps = [_modified(e.text or "") for e in root.iter() if e.tag.endswith("LastModified")]
    if module == "localbucket":  # the fault: to the second, so Tansu's "latest" is the first
        assert stamps[0] == stamps[1] == stamps[2]
        return
    assert stamps == [mtimes["0"], now, now + 1, mtimes["3"]]


def test_a_durable_broker_s_high_watermark_counts_records_produced_apart(
    tmp_path: Path,
) -> None:
    with EmbeddedBroker(log_path=tmp_path / "b.log", storage_dir=tmp_path / "store") as broker:
        bootstrap = broker.bootstrap_servers
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("apart", 1, 1)])["apart"].result(10)
        producer = Producer({"bootstrap.servers": bootstrap})
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermark"})
        try:
            for n in range(1, 5):
                producer.produce("apart", b"x")
                producer.flush(10)
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition("apart", 0), timeout=10, cached=False
                )
                assert high == n  # was 1 for all four: ties to the second
        finally:
            consumer.close()
