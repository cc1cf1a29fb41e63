"""`streamrec up` as a user runs it: a real subprocess, real signals, real embedded services."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import confluent_kafka
import orjson
import pytest

from models.checkpoint import Manifest, list_versions, read_manifest, version_dir
from streaming.ingest.state_store import read_stats
from streaming.io.kafka import KafkaAdmin, client_config
from streaming.io.producer import RecordProducer
from streaming.io.redis_client import connect
from streaming.ops import health
from streaming.settings import Settings
from tests.integration.helpers import cli_env, start_up, wait_for

pytestmark = pytest.mark.integration


def _cmdline(pid: int) -> str:
    """The command line of `pid`, or "" once it has exited (processes come and go mid-scan)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pids_matching(text: str) -> list[int]:
    return [int(proc.name) for proc in Path("/proc").iterdir()
            if proc.name.isdigit() and text in _cmdline(int(proc.name))]


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        try:
            # A process may exit between being found and being scanned: it then has no children.
            tasks = list(Path(f"/proc/{todo.pop()}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(children - found)
            found |= children
    return found


def _start_up(tmp_path: Path) -> tuple[subprocess.Popen[str], list[str]]:
    proc, lines, _ = start_up(tmp_path, "--rate", "300")
    return proc, lines


def _service_markers(lines: list[str]) -> list[str]:
    text = "".join(lines)
    kafka = re.search(r"^kafka\s+(\S+)\s+\((.*)\)$", text, re.M)
    redis_addr = re.search(r"^redis\s+redis://([^/\s]+)", text, re.M)
    assert kafka and redis_addr, text
    # The Apache Kafka JVM runs `kafka.Kafka <its data dir>/server.properties` (up prints the
    # data dir); Tansu has its listener URL on its command line. redis-server rewrites its
    # process title to "redis-server HOST:PORT".
    data = re.search(r"data in (\S+)$", kafka.group(2))
    broker = f"kafka.Kafka {data.group(1)}/server.properties" if data else f"tcp://{kafka.group(1)}"
    return [broker, f"redis-server {redis_addr.group(1)}"]


def _assert_stopped_cleanly(markers: list[str], workers: list[int], run_dir: Path) -> None:
    """After ``up`` exited: its broker, Redis and workers are gone, and so is its endpoints file."""
    assert not any(_pids_matching(m) for m in markers), "broker or Redis left running"
    assert not set(workers) & set(_pids_matching("deploy.cli worker")), "worker left running"
    assert not (run_dir / "current.json").exists()


def test_services_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    proc, lines = _start_up(tmp_path)
    markers = _service_markers(lines)
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    deadline = time.monotonic() + 10
    while any(_pids_matching(m) for m in markers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_pids_matching(m) for m in markers), "orphaned broker or Redis"


def test_up_with_duration_prints_a_summary_and_other_commands_find_it(
    stack: Settings, tmp_path: Path
) -> None:
    env = cli_env(stack)
    result = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "up", "--duration", "12", "--rate", "400",
         "--set", "stream.attribution_window_ms=2000", "--set", "stream.allowed_lateness_ms=500"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["emitted"] >= 400
    assert summary["arrived"] == summary["delivered"] == summary["emitted"]
    assert summary["processed"] == summary["emitted"]  # the Faust worker kept up
    assert summary["invalid_input"] == summary["dead_lettered"] == 0
    assert summary["examples"] > 0  # 2 s windows closed during the run


def test_a_second_up_continues_where_the_first_stopped(tmp_path: Path) -> None:
    """Two runs on one data directory: the first run's events stay in the topic, its feature
    state and group commits stay, and the trainer resumes at its checkpoint's offsets. The
    first run is stopped with SIGINT (Ctrl-C), the second with SIGTERM: both leave no process."""
    ckpt = tmp_path / "ckpt"
    args = ("--rate", "150", "--no-dashboard",
            "--set", "stream.attribution_window_ms=2000", "--set", "stream.allowed_lateness_ms=300",
            "--set", "trainer.publish_interval_s=3", "--set", "trainer.batch_size=64",
            "--set", f"trainer.checkpoint_dir={ckpt}")

    def run(events: int, processed_total: int, sig: signal.Signals
            ) -> tuple[dict, list[str], Manifest]:
        proc, lines, settings = start_up(tmp_path, "--events", str(events), *args)
        assert settings is not None
        assert re.search(r"^kafka .*\(Apache Kafka 4\.\d+\.\d+, KRaft, ", "".join(lines), re.M)
        markers = _service_markers(lines)
        # This run's worker (other test sessions on the machine may run workers of their own).
        workers = [p for p in _descendants(proc.pid) if p in _pids_matching("deploy.cli worker")]
        assert workers, "up should have started a worker"
        try:
            client = connect(settings.redis)
            wait_for(f"{processed_total} events processed", lambda: read_stats(
                client, "sr:", range(4)).get("processed", 0) >= processed_total, 120)
            high = _event_offsets(settings)
            client.close()
        finally:
            proc.send_signal(sig)
            out, _ = proc.communicate(timeout=90)
        # Either signal is a clean stop: exit code 0, nothing left running.
        assert proc.returncode == 0, out[-3000:]
        _assert_stopped_cleanly(markers, workers, tmp_path)
        versions = list_versions(ckpt)
        assert versions, out[-3000:]
        return ({"summary": orjson.loads(out.strip().splitlines()[-1]), "offsets": high},
                lines + out.splitlines(keepends=True), read_manifest(version_dir(ckpt, versions[-1])))

    first, _, m1 = run(600, 600, signal.SIGINT)
    assert first["summary"]["emitted"] == first["summary"]["processed"] == 600
    assert first["summary"]["arrived"] == first["summary"]["delivered"] == 600
    assert sum(first["offsets"]) == 600 and m1.examples_seen > 0

    second, lines2, m2 = run(400, 1000, signal.SIGTERM)
    text = "".join(lines2)
    assert "topics created: none" in text, text  # the first run's topics, not new ones
    # The first run's events are still in the topic: offsets continue from where it ended.
    assert sum(second["offsets"]) == 1000
    # This run's counters count this run; Redis kept the first run's (1000 processed in all,
    # none twice: the synthetic ids of each run are its own).
    assert second["summary"]["emitted"] == second["summary"]["processed"] == 400
    assert second["summary"]["duplicates"] == 0
    trainer_log = Path(re.search(r"^logs\s+(\S+)", text, re.M).group(1)) / "trainer.log"
    log_text = trainer_log.read_text()
    assert f"resumed from checkpoint v{m1.version}" in log_text
    assert "not seeking to the offsets" not in log_text
    assert (m2.kafka_cluster_id, m2.topic_ids) == (m1.kafka_cluster_id, m1.topic_ids)
    assert m2.version > m1.version
    for key, offset in m1.offsets.items():
        assert m2.offsets[key] >= offset
    # Resumed at the first run's offsets: every example trained once over both runs. (From the
    # beginning it would count the first run's examples twice; a skip would leave a gap.)
    assert sum(m2.offsets.values()) == m2.examples_seen > m1.examples_seen


def _event_offsets(settings: Settings) -> list[int]:
    """Log-start must be 0 (nothing deleted) and these are the log-end offsets per partition."""
    consumer = confluent_kafka.Consumer(client_config(settings.kafka, **{"group.id": "test-offsets"}))
    try:
        out = []
        for p in range(settings.topics.events_partitions):
            low, high = consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(settings.topics.events, p), timeout=10)
            assert low == 0
            out.append(high)
        return out
    finally:
        consumer.close()


BURST = 20  # poison messages in the run below


def _trainer_ranks(up_pid: int) -> list[int]:
    """The trainer's rank processes under torchrun (not the launcher, not torchrun itself)."""
    return [p for p in _descendants(up_pid) if p in _pids_matching("deploy.cli train")
            and "torch.distributed.run" not in _cmdline(p)
            and any(p in _descendants(q) for q in _pids_matching("torch.distributed.run"))]


def test_up_survives_poison_and_restarts_components_killed_with_sigkill(
        tmp_path: Path) -> None:
    """A burst of messages at the broker's size limit, then kill -9 of the worker, the scorer
    and one of two trainer ranks during a run: each comes back (the supervisor's backoff; a
    killed rank ends its torchrun group, which the supervisor starts again, resuming from its
    checkpoint), no event is lost, every poison message is dead-lettered, and the summary
    counts one restart each."""
    ckpt = tmp_path / "ckpt"
    proc, lines, settings = start_up(
        tmp_path, "--rate", "150", "--no-dashboard", "--trainer-ranks", "2",
        "--set", "runtime.restart_backoff_s=0.5", "--set", "trainer.publish_interval_s=3",
        "--set", f"trainer.checkpoint_dir={ckpt}", "--set", "trainer.batch_size=64",
        "--set", "stream.attribution_window_ms=2000", "--set", "stream.allowed_lateness_ms=300")
    assert settings is not None
    out = ""
    trainer_pids: list[int] = []
    try:
        # First a burst of poison: messages just under the broker's limit (not JSON, so each is
        # dead-lettered, cut to 64 KiB). No component may stop for them.
        limit = int(KafkaAdmin(settings).topic_config(settings.topics.events)["max.message.bytes"])
        with RecordProducer(settings, extra_config={"message.max.bytes": 2 * limit,
                                                    "compression.type": "none"}) as producer:
            refused = producer.deliver([(settings.topics.events, b"u-poison",
                                         os.urandom(limit - 200), ()) for _ in range(BURST)])
        assert refused == {}
        for command in ("deploy.cli worker", "deploy.cli score"):
            (pid,) = [p for p in _descendants(proc.pid) if p in _pids_matching(command)]
            os.kill(pid, signal.SIGKILL)
            wait_for(f"a new {command}", lambda c=command, old=pid: [
                p for p in _descendants(proc.pid) if p in _pids_matching(c) and p != old], 60)
        wait_for("a first checkpoint", lambda: list_versions(ckpt), 120)
        ranks = _trainer_ranks(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(max(ranks), signal.SIGKILL)
        wait_for("the trainer to come back", lambda: len([
            p for p in _trainer_ranks(proc.pid) if p not in ranks]) >= 2, 90)
        before = max(list_versions(ckpt))
        wait_for("a checkpoint from the restarted trainer",
                 lambda: max(list_versions(ckpt)) > before, 120)
        client = connect(settings.redis)
        try:
            # Beats since the trainer came back: the killed processes' beats are still recent.
            since_ms = int(time.time() * 1000)
            wait_for("the restarted components to consume", lambda: {
                "ingest", "trainer", "scorer"} <= health.consuming(health.parse(client.hgetall(
                    health.key("sr:"))), int(time.time() * 1000), since_ms=since_ms), 120)
        finally:
            client.close()
        trainer_pids = [p for p in _descendants(proc.pid)
                        if p in _pids_matching("deploy.cli train")]
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out[-3000:]
    # The launcher, torchrun and both ranks are gone (the ranks live in sessions of their own).
    wait_for("the trainer's processes to exit", lambda: not set(trainer_pids) & set(
        _pids_matching("deploy.cli train")), 30)
    text = "".join(lines) + out
    for name in ("worker-0", "scorer-0"):
        assert f"{name} exited (code -9); restarting it" in text, text[-3000:]
    assert "trainer exited" in text, text[-3000:]
    summary = orjson.loads(out.strip().splitlines()[-1])
    assert summary["restarts"] == {"worker-0": 1, "trainer": 1, "scorer-0": 1}, summary
    # Nothing lost across the worker's restart: every delivered event was processed, and every
    # poison message was dead-lettered.
    assert summary["delivered"] == summary["emitted"] > 0
    assert summary["arrived"] == summary["processed"] == summary["emitted"] + BURST
    assert summary["dead_lettered"] == BURST
    logs = re.search(r"^logs\s+(\S+)", text, re.M)
    assert logs, text[-2000:]
    assert "resumed from checkpoint" in (Path(logs.group(1)) / "trainer.log").read_text()
