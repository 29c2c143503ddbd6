"""``agentmesh kv`` and ``agentmesh lock`` against a real ``agentmesh up`` cluster.

Every command, its text and JSON output and its exit codes (0 done, 1 absent,
2 no quorum, 3 refused by a condition), locks across separate invocations.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import LocalCluster, pid_alive, run_cli, running_up, wait_for
from mesh.identity import read_private_key
from mesh.kv_client import KVClient
from mesh.layout import CLIENT_DIR, NODE_KEY

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def kv_cluster(tmp_path: Path) -> Iterator[Path]:
    """``agentmesh up --nodes 3`` (three voters) running; every process gone afterwards."""
    with running_up(tmp_path / "mesh", "--nodes", "3"):
        yield tmp_path / "mesh"


def kv(cluster: Path, *args: str, code: int = 0,
       stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``agentmesh ARGS --cluster CLUSTER``, which must exit with ``code`` and no traceback."""
    result = run_cli(*args, "--cluster", str(cluster), check=False, stdin=stdin)
    assert result.returncode == code, (
        f"agentmesh {' '.join(args)} exited {result.returncode}, not {code}:\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}")
    assert "Traceback" not in result.stderr, result.stderr
    return result


def kv_json(cluster: Path, *args: str, code: int = 0) -> dict[str, Any]:
    """The one JSON object ``agentmesh ARGS --json`` prints."""
    document = json.loads(kv(cluster, *args, "--json", code=code).stdout)
    assert isinstance(document, dict)
    return document


def test_kv_commands_print_what_they_say_and_exit_with_their_codes(kv_cluster: Path) -> None:
    c = kv_cluster
    assert kv(c, "kv", "put", "color", "blue").stdout == "version 1\n"
    put = kv_json(c, "kv", "put", "color", "green")
    assert put["key"] == "color" and put["ok"] is True and put["version"] == 2
    assert put["index"] > 0
    assert kv(c, "kv", "get", "color").stdout == "green\n"
    assert kv_json(c, "kv", "get", "color") == {"key": "color", "value": "green", "version": 2}

    # A failed compare-and-set: exit 3, the current version shown, nothing written.
    failed = kv(c, "kv", "cas", "color", "red", "--expect-version", "1", code=3)
    assert "version 2" in failed.stderr and "not at version 1" in failed.stderr
    assert failed.stdout == ""
    assert kv_json(c, "kv", "cas", "color", "red", "--expect-version", "1", code=3) == {
        "key": "color", "ok": False, "error": "cas_failed", "version": 2,
        "expected_version": 1}
    assert kv(c, "kv", "get", "color").stdout == "green\n"
    done = kv_json(c, "kv", "cas", "color", "red", "--expect-version", "2")
    assert done["ok"] is True and done["version"] == 3
    assert kv(c, "kv", "cas", "fresh", "new", "--expect-version", "0").stdout == "version 1\n"
    absent = kv(c, "kv", "cas", "ghost", "x", "--expect-version", "4", code=3)
    assert "absent (version 0)" in absent.stderr

    # Values: UTF-8 text round trips; other bytes show as base64.
    kv(c, "kv", "put", "word", "grün ☃")
    assert kv_json(c, "kv", "get", "word")["value"] == "grün ☃"
    raw = b"\xff\xfe\x00bin"
    kv(c, "kv", "put", "blob", base64.b64encode(raw).decode(), "--base64")
    blob = kv_json(c, "kv", "get", "blob")
    assert "value" not in blob and base64.b64decode(blob["value_base64"]) == raw
    text_get = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "kv", "get", "blob", "--cluster", str(c)],
        capture_output=True, timeout=60, check=True)
    assert text_get.stdout == raw + b"\n"
    bad = kv(c, "kv", "put", "blob", "not base64!", "--base64", code=1)
    assert "not valid base64" in bad.stderr

    # Listing, paging.
    for name in ("a", "b", "c"):
        kv(c, "kv", "put", f"app/{name}", f"value {name}")
    assert kv(c, "kv", "list", "app/").stdout.splitlines() == [
        'app/a\t1\t"value a"', 'app/b\t1\t"value b"', 'app/c\t1\t"value c"']
    page = kv_json(c, "kv", "list", "app/", "--limit", "2")
    assert [i["key"] for i in page["items"]] == ["app/a", "app/b"] and page["truncated"]
    assert page["items"][0] == {"key": "app/a", "value": "value a", "version": 1}
    more = kv(c, "kv", "list", "app/", "--limit", "2")
    assert "more keys follow" in more.stderr and "--start-after 'app/b'" in more.stderr
    rest = kv_json(c, "kv", "list", "app/", "--start-after", "app/b")
    assert [i["key"] for i in rest["items"]] == ["app/c"] and not rest["truncated"]
    assert kv(c, "kv", "list", "nothing/").stdout == ""
    everything = kv_json(c, "kv", "list")
    assert {i["key"] for i in everything["items"]} == {
        "color", "fresh", "word", "blob", "app/a", "app/b", "app/c"}

    # Deleting; missing keys exit 1 with a clear message.
    assert kv(c, "kv", "del", "app/a").stdout == "deleted\n"
    again = kv(c, "kv", "del", "app/a", code=1)
    assert "no key 'app/a'" in again.stderr
    assert kv_json(c, "kv", "del", "app/a", code=1)["error"] == "not_found"
    missing = kv(c, "kv", "get", "app/a", code=1)
    assert missing.stdout == "" and "no key 'app/a'" in missing.stderr
    assert kv_json(c, "kv", "get", "app/a", code=1) == {"key": "app/a", "error": "not_found"}
    # After a delete the key starts over at version 1.
    assert kv_json(c, "kv", "put", "app/a", "again")["version"] == 1


def test_a_lock_taken_by_one_invocation_is_released_by_a_later_one(kv_cluster: Path) -> None:
    c = kv_cluster
    owner = "cli/" + read_private_key(c / CLIENT_DIR / NODE_KEY).node_id_hex
    taken = kv_json(c, "lock", "acquire", "jobs", "--ttl", "60")
    assert taken["ok"] is True and taken["owner"] == owner
    token = taken["token"]
    assert taken["lease_id"] > 0 and taken["deadline_ms"] > 0

    held = kv(c, "lock", "acquire", "jobs", "--ttl", "60", "--owner", "worker-2", code=3)
    assert owner in held.stderr and f"token {token}" in held.stderr
    refused = kv_json(c, "lock", "acquire", "jobs", "--ttl", "60", "--owner", "worker-2",
                      code=3)
    assert refused["error"] == "lock_held" and refused["holder"] == owner
    assert refused["token"] == token

    # The same default owner in a new invocation renews the lock, keeping its token.
    assert kv(c, "lock", "acquire", "jobs", "--ttl", "60").stdout.startswith(f"token {token} ")
    assert kv(c, "lock", "holder", "jobs").stdout.startswith(f"{owner} token {token} ")
    assert kv_json(c, "lock", "holder", "jobs")["owner"] == owner

    # Releases by another owner, or with another token, are refused naming the holder.
    wrong_owner = kv(c, "lock", "release", "jobs", "--owner", "worker-2", code=3)
    assert owner in wrong_owner.stderr and f"token {token}" in wrong_owner.stderr
    wrong_token = kv_json(c, "lock", "release", "jobs", "--token", str(token + 1), code=3)
    assert wrong_token == {"name": "jobs", "ok": False, "error": "not_owner",
                           "holder": owner, "token": token}

    assert kv(c, "lock", "release", "jobs").stdout == "released\n"
    assert "is not held" in kv(c, "lock", "holder", "jobs", code=1).stderr
    assert kv_json(c, "lock", "release", "jobs", code=1)["error"] == "not_found"

    # Now free for another owner, with a larger fencing token; explicit token release.
    other = kv_json(c, "lock", "acquire", "jobs", "--ttl", "60", "--owner", "worker-2")
    assert other["owner"] == "worker-2" and other["token"] > token
    assert kv_json(c, "lock", "release", "jobs", "--owner", "worker-2", "--token",
                   str(other["token"]))["ok"] is True

    usage = run_cli("lock", "acquire", "jobs", "--ttl", "0", "--cluster", str(c), check=False)
    assert usage.returncode == 2 and "positive number of seconds" in usage.stderr


def test_fields_the_store_refuses_exit_1_with_one_line_naming_them(kv_cluster: Path) -> None:
    c = kv_cluster
    for args, problem in ((("kv", "put", "", "v"), "key must not be empty"),
                          (("kv", "del", ""), "key must not be empty"),
                          (("kv", "cas", "", "v", "--expect-version", "0"),
                           "key must not be empty"),
                          (("lock", "acquire", "", "--ttl", "5"), "name must not be empty"),
                          (("lock", "release", ""), "name must not be empty")):
        result = kv(c, *args, code=1)  # once a traceback from the command's constructor
        assert result.stdout == ""
        assert result.stderr.splitlines() == [f"agentmesh: error: {problem}"], args
    # A key far over the limit is named by its start and length, not printed whole.
    long_key = "k" * 5000
    refused = kv(c, "kv", "put", long_key, "v", code=1)
    (line,) = refused.stderr.splitlines()
    assert "(5000 characters)" in line and "key_bytes_max is 512" in line
    assert len(line) < 300, line
    assert kv_json(c, "kv", "list")["items"] == []  # nothing was written


def test_a_value_too_large_for_an_argument_goes_in_from_a_file(
    kv_cluster: Path, tmp_path: Path
) -> None:
    c = kv_cluster
    # Above Linux's 128 KiB limit on one argument, below the store's 256 KiB.
    blob = random.Random(5).randbytes(200_000)
    (tmp_path / "blob").write_bytes(blob)
    assert kv_json(c, "kv", "put", "blob", "--file", str(tmp_path / "blob"))["version"] == 1
    stored = kv_json(c, "kv", "get", "blob")
    assert base64.b64decode(stored["value_base64"]) == blob
    # Standard input, and a compare-and-set from a file.
    assert kv(c, "kv", "put", "note", "--file", "-", stdin="two\nlines\n").stdout == "version 1\n"
    assert kv_json(c, "kv", "get", "note")["value"] == "two\nlines\n"
    (tmp_path / "small").write_bytes(b"replaced")
    assert kv_json(c, "kv", "cas", "blob", "--file", str(tmp_path / "small"),
                   "--expect-version", "1")["version"] == 2
    assert kv_json(c, "kv", "get", "blob")["value"] == "replaced"

    (tmp_path / "huge").write_bytes(bytes(600_000))
    (tmp_path / "large").write_bytes(bytes(300_000))
    for args, problem in (
        (("blob", "v", "--file", str(tmp_path / "small")), "give VALUE or --file, not both"),
        (("blob",), "give VALUE, or --file PATH"),
        (("blob", "--base64", "--file", str(tmp_path / "small")), "--base64 is for VALUE"),
        (("blob", "--file", str(tmp_path / "missing")), "No such file or directory"),
        (("blob", "--file", str(tmp_path / "huge")),
         "holds more than raft.max_bytes_per_append (524288) bytes"),
        (("blob", "--file", str(tmp_path / "large")), "value_bytes_max is 262144"),
    ):
        result = kv(c, "kv", "put", *args, code=1)
        (line,) = result.stderr.splitlines()
        assert problem in line, (args, line)
    assert kv_json(c, "kv", "get", "blob")["version"] == 2  # none of them wrote


def test_without_a_quorum_commands_exit_2_with_the_reason(kv_cluster: Path) -> None:
    c = kv_cluster
    kv(c, "kv", "put", "k", "v")
    nodes = json.loads((c / "cluster.json").read_text())["nodes"]
    for node in nodes[1:]:  # two of the three voters
        os.kill(node["pid"], signal.SIGKILL)
    wait_for(lambda: not any(pid_alive(n["pid"]) for n in nodes[1:]),
             what="two voters to be gone")
    for args in (("kv", "put", "k", "w"), ("kv", "get", "k"),
                 ("lock", "acquire", "l", "--ttl", "5")):
        result = kv(c, *args, "--timeout", "1.5", code=2)
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith("agentmesh: unavailable: no voter served the request")
        assert "outcome is unknown" in line
    json_mode = kv(c, "kv", "get", "k", "--json", "--timeout", "1", code=2)
    assert json_mode.stdout == "" and "unavailable" in json_mode.stderr


def test_a_long_running_client_keeps_working_while_other_cli_commands_run(
    kv_cluster: Path,
) -> None:
    # Every standalone client signs with the cluster's one CLI identity; its envelope
    # numbers follow the wall clock, so a later invocation's numbers do not push an
    # earlier, still running client below the nodes' replay windows.
    async def scenario() -> None:
        async with KVClient.connect(kv_cluster) as client:
            assert (await client.put("shared", "one")).ok
            # Another invocation with the CLI identity that speaks to every node.
            await anyio.to_thread.run_sync(
                lambda: run_cli("status", "--cluster", str(kv_cluster), "--json"))
            with anyio.fail_after(5):
                assert (await client.put("shared", "two")).ok
                assert (await client.get("shared")) is not None

    anyio.run(scenario)


def test_kv_commands_work_on_nodes_that_never_saw_the_cli_identity(
    local_cluster: LocalCluster,
) -> None:
    node_dir = local_cluster.make_node_dir("solo")
    node_id = read_private_key(node_dir / NODE_KEY).node_id_hex
    (node_dir / "node.toml").write_text(f'name = "solo"\n[raft]\nvoters = ["{node_id}"]\n')
    local_cluster.start("solo")  # unlike `agentmesh up`, asks no status
    kv(local_cluster.directory, "kv", "put", "k", "v", "--timeout", "3")
