"""The Raft benchmark's peers and its floor run in short form and leave nothing behind.

PySyncObj and etcd are optional benchmark-only peers: the smoke runs are skipped,
with the install command as the reason, where they are not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from nacl.exceptions import BadSignatureError

from conftest import wait_for

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "raft_peers.py"
KEYS = ("system", "writes_per_s", "p50_ms", "p99_ms", "failover_ms_p50", "failover_ms_all", "notes")


def _load_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPT.with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


raft_peers = _load_module("raft_peers")

needs_pysyncobj = pytest.mark.skipif(
    not raft_peers.pysyncobj_available(),
    reason=f"pysyncobj is not installed (optional benchmark peer: {raft_peers.PYSYNCOBJ_INSTALL})",
)
needs_etcd = pytest.mark.skipif(
    raft_peers.etcd_binary() is None,
    reason=f"the etcd binary is not installed (optional benchmark peer: {raft_peers.ETCD_INSTALL})",
)


def _processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is inside ``directory``."""
    found = []
    root = str(directory.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (cwd == root or cwd.startswith(root + os.sep)):
            found.append(int(entry.name))
    return found


def _kill_leftovers(tmp_path: Path) -> None:
    for pid in _processes_in(tmp_path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _check_report(report: dict[str, object], system: str) -> None:
    for key in KEYS:
        assert key in report, (key, report)
    assert report["system"] == system
    assert report["writes_per_s"] > 0, report  # type: ignore[operator]
    assert 0 < report["p50_ms"] <= report["p99_ms"], report  # type: ignore[operator]
    assert report["errors"] == 0, report
    failovers = report["failover_ms_all"]
    assert isinstance(failovers, list) and len(failovers) == 1, report
    assert failovers[0] > 0 and report["failover_ms_p50"] == failovers[0], report


def _check_cleaned_up(tmp_path: Path) -> None:
    assert _processes_in(tmp_path) == []
    assert list(tmp_path.iterdir()) == [], "the temporary cluster directory was left behind"


@needs_pysyncobj
def test_pysyncobj_short_run_reports_every_figure_and_cleans_up(tmp_path: Path) -> None:
    report = raft_peers.bench_pysyncobj(1.0, 64, 8, failovers=1, tmp_dir=str(tmp_path))
    _check_report(report, "pysyncobj")
    assert report["in_leader"]["writes_per_s"] > 0, report
    assert report["in_leader"]["p50_ms"] <= report["in_leader"]["p99_ms"], report
    _check_cleaned_up(tmp_path)


@needs_etcd
def test_etcd_short_run_reports_every_figure_and_cleans_up(tmp_path: Path) -> None:
    report = raft_peers.bench_etcd(1.0, 64, 8, failovers=1, tmp_dir=str(tmp_path))
    _check_report(report, "etcd")
    _check_cleaned_up(tmp_path)


@pytest.mark.parametrize("auth", ["ed25519", "mac", "none"])
def test_floor_short_run_reports_every_figure_and_cleans_up(tmp_path: Path, auth: str) -> None:
    report = raft_peers.bench_floor(1.0, 64, 8, tmp_dir=str(tmp_path), auth=auth)
    for key in KEYS:
        assert key in report, (key, report)
    assert report["system"] == "floor" and report["auth"] == auth
    assert report["writes_per_s"] > 0 and report["single_writes"] > 0, report
    assert 0 < report["p50_ms"] <= report["p99_ms"], report
    assert report["failover_ms_p50"] is None and report["failover_ms_all"] == [], report
    _check_cleaned_up(tmp_path)


@pytest.mark.parametrize("mode", ["ed25519", "mac"])
def test_the_floor_refuses_a_frame_altered_or_from_another_sender(mode: str) -> None:
    raft_floor = _load_module("raft_floor")
    master = bytes(range(32))
    leader = raft_floor._Auth(mode, master, "leader")
    frame = raft_floor._Auth(mode, master, "client").seal([[1, b"key", b"value"]])
    assert leader.opener("client")(frame) == [[1, b"key", b"value"]]
    refused = (BadSignatureError, raft_floor.FloorError)
    with pytest.raises(refused):
        leader.opener("follower1")(frame)
    with pytest.raises(refused):
        leader.opener("client")(frame[:-1] + bytes([frame[-1] ^ 1]))
    with pytest.raises(ValueError, match="auth must be one of"):
        raft_floor._Auth("rot13", master, "leader")


def test_a_floor_frame_that_fails_is_reported_not_left_to_hang() -> None:
    raft_floor = _load_module("raft_floor")
    errors: list[Exception] = []
    seen: list[list[bytes]] = []
    framed = raft_floor._Framed(lambda _conn, frames: seen.append(frames), errors.append)
    framed.data_received(b"\x00\x00\x00\x02hi\x00\x00\x00\x03abc\x00\x00")  # two, a part
    assert seen == [[b"hi", b"abc"]] and errors == []
    framed.data_received(b"\x00\x01z")  # completes the third
    assert seen[-1] == [b"z"]
    framed.data_received((raft_floor.FRAME_BYTES_MAX + 1).to_bytes(4, "big"))
    assert isinstance(errors[-1], raft_floor.FloorError) and "above" in str(errors[-1])

    def refuse(_conn: object, _frames: list[bytes]) -> None:
        raise BadSignatureError("forged")

    raft_floor._Framed(refuse, errors.append).data_received(b"\x00\x00\x00\x01x")
    assert isinstance(errors[-1], BadSignatureError)


def _start_cli(tmp_path: Path, system: str, *options: str) -> subprocess.Popen[bytes]:
    """The script in a subprocess; its clusters under tmp_path/clusters, stderr in a file."""
    (tmp_path / "clusters").mkdir()
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), "--system", system, "--outstanding", "4",
             "--tmp-dir", str(tmp_path / "clusters"), *options],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip


def _stderr(tmp_path: Path) -> str:
    return (tmp_path / "stderr.txt").read_text()


def _interrupt_during(tmp_path: Path, system: str, phase: str, signum: int) -> None:
    options = (
        ("--seconds", "0.5", "--failovers", "50") if phase == "failover" else ("--seconds", "60")
    )
    bench = _start_cli(tmp_path, system, *options)
    try:
        wait_for(lambda: f"{system}: {phase}" in _stderr(tmp_path), timeout_s=60, what=phase)
        assert len(_processes_in(tmp_path / "clusters")) >= 2
        bench.send_signal(signum)
        assert bench.wait(timeout=60) == 130, _stderr(tmp_path)
        assert "cleaned up" in _stderr(tmp_path)
        _check_cleaned_up(tmp_path / "clusters")
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        _kill_leftovers(tmp_path)


@needs_pysyncobj
@pytest.mark.parametrize(
    ("phase", "signum"),
    [("throughput", signal.SIGINT), ("throughput", signal.SIGTERM), ("failover", signal.SIGINT)],
    ids=["ctrl-c-under-load", "sigterm-under-load", "ctrl-c-in-failover"],
)
def test_interrupting_the_pysyncobj_run_stops_and_removes_the_cluster(
    tmp_path: Path, phase: str, signum: int
) -> None:
    _interrupt_during(tmp_path, "pysyncobj", phase, signum)


def test_interrupting_the_floor_run_stops_and_removes_it(tmp_path: Path) -> None:
    _interrupt_during(tmp_path, "floor", "throughput", signal.SIGINT)


@needs_etcd
@pytest.mark.parametrize("phase", ["throughput", "failover"])
def test_interrupting_the_etcd_run_stops_and_removes_the_cluster(
    tmp_path: Path, phase: str
) -> None:
    _interrupt_during(tmp_path, "etcd", phase, signal.SIGINT)


_FAKE_RUN = """
import asyncio, sys
sys.path.insert(0, {scripts!r})
import raft_peers

async def _load() -> None:
    print("raft_peers: fake: throughput", file=sys.stderr, flush=True)
    await asyncio.sleep(120)

def bench_fake(*_args, **_options):
    asyncio.run(_load())

raft_peers.BENCHES["fake"] = bench_fake
sys.exit(raft_peers.main(["--system", "fake"]))
"""


def test_ctrl_c_stops_a_run_started_with_sigint_ignored(tmp_path: Path) -> None:
    # A background job of a non-interactive shell starts with SIGINT ignored, and
    # Python then leaves it so: the run would go on for its whole length.
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        bench = subprocess.Popen(
            [sys.executable, "-c", _FAKE_RUN.format(scripts=str(SCRIPT.parent))],
            stdout=subprocess.DEVNULL, stderr=stderr,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )  # fmt: skip
    try:
        wait_for(lambda: "fake: throughput" in _stderr(tmp_path), timeout_s=30, what="the run")
        bench.send_signal(signal.SIGINT)
        assert bench.wait(timeout=30) == 130, _stderr(tmp_path)
        assert "interrupted" in _stderr(tmp_path)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()


@needs_pysyncobj
@pytest.mark.skipif(not Path("/usr/bin/setpriv").exists(), reason="needs util-linux setpriv")
def test_replicas_die_with_a_killed_benchmark(tmp_path: Path) -> None:
    bench = _start_cli(tmp_path, "pysyncobj", "--seconds", "60")
    try:
        wait_for(lambda: "pysyncobj: throughput" in _stderr(tmp_path), timeout_s=60, what="load")
        bench.kill()  # SIGKILL: no finally runs; the parent-death signal must do it
        bench.wait(timeout=10)
        wait_for(lambda: not _processes_in(tmp_path), timeout_s=10, what="replicas to exit")
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        _kill_leftovers(tmp_path)


def test_missing_pysyncobj_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft_peers, "pysyncobj_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install pysyncobj==0\.3\.17"):
        raft_peers.bench_pysyncobj(1.0, 64, 8, failovers=1)


def test_missing_etcd_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(raft_peers, "etcd_binary", lambda: None)
    with pytest.raises(RuntimeError, match="apt-get install etcd-server"):
        raft_peers.bench_etcd(1.0, 64, 8, failovers=1)
    assert raft_peers.main(["--system", "etcd"]) == 2
    assert "apt-get install etcd-server" in capsys.readouterr().err


def test_nonsense_arguments_are_refused_before_starting_anything() -> None:
    with pytest.raises(ValueError, match="outstanding"):
        raft_peers.bench_etcd(1.0, 64, 0)
    with pytest.raises(ValueError, match="seconds"):
        raft_peers.bench_pysyncobj(0.0, 64, 8)
