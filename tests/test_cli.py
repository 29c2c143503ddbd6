"""The agentmesh command line: authority, keys, configuration errors, signals."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli, wait_for
from mesh.config import defaults_toml
from mesh.identity import node_id_of, read_certificate, read_public_key
from mesh.runtime import RUN_FILE_NAME

REPO = Path(__file__).resolve().parent.parent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_init_and_keygen_write_private_keys_for_the_owner_only(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    run_cli("ca", "init", "--dir", str(ca))
    assert _mode(ca / "authority.key") == 0o600
    assert _mode(ca / "client" / "node.key") == 0o600
    authority_key = (ca / "authority.key").read_bytes()
    run_cli("ca", "init", "--dir", str(ca))  # idempotent: the authority is kept
    assert (ca / "authority.key").read_bytes() == authority_key

    node = tmp_path / "n1"
    result = run_cli("keygen", "--dir", str(node), "--ca", str(ca), "--roles", "node", "voter")
    printed = json.loads(result.stdout)
    certificate = read_certificate(node / "node.cert")
    assert _mode(node / "node.key") == 0o600
    assert printed["node_id"] == certificate.node_id.hex()
    assert certificate.node_id == node_id_of(certificate.public_key)
    assert certificate.roles == ("node", "voter") and certificate.name == "n1"
    assert read_public_key(node / "authority.pub") == read_public_key(ca / "authority.pub")


def test_keygen_without_an_authority_says_how_to_make_one(tmp_path: Path) -> None:
    result = run_cli("keygen", "--dir", str(tmp_path / "n"), "--ca", str(tmp_path / "nope"),
                     check=False)
    assert result.returncode == 1
    assert "agentmesh ca init" in result.stderr and "Traceback" not in result.stderr


def test_node_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    run_cli("ca", "init", "--dir", str(tmp_path / "ca"))
    node = tmp_path / "n"
    run_cli("keygen", "--dir", str(node), "--ca", str(tmp_path / "ca"))
    os.chmod(node / "node.key", 0o644)
    result = run_cli("node", "run", "--dir", str(node), check=False, timeout_s=30)
    assert result.returncode == 1
    assert "node.key" in result.stderr and "0644" in result.stderr and "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr


def test_node_refuses_an_unknown_config_key_by_name(tmp_path: Path) -> None:
    run_cli("ca", "init", "--dir", str(tmp_path / "ca"))
    node = tmp_path / "n"
    run_cli("keygen", "--dir", str(node), "--ca", str(tmp_path / "ca"))
    (node / "node.toml").write_text("[envelope]\nenvelope_size_bytes_maxx = 10\n")
    result = run_cli("node", "run", "--dir", str(node), check=False, timeout_s=30)
    assert result.returncode == 1
    assert "envelope_size_bytes_maxx" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_node_run_stops_cleanly_on_signal(tmp_path: Path, signum: int) -> None:
    run_cli("ca", "init", "--dir", str(tmp_path / "ca"))
    node = tmp_path / "n"
    run_cli("keygen", "--dir", str(node), "--ca", str(tmp_path / "ca"))
    process = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "node", "run", "--dir", str(node)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for((node / RUN_FILE_NAME).exists, what="the node to start")
        process.send_signal(signum)
        assert process.wait(timeout=10) == 0
        assert process.stderr is not None
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_config_doc_lists_every_default() -> None:
    documented = (REPO / "docs" / "CONFIG.md").read_text().split("```toml\n", 1)[1].split("```")[0]
    assert documented == defaults_toml(), "docs/CONFIG.md is stale: regenerate it from " \
        "`agentmesh config defaults`"
    assert run_cli("config", "defaults").stdout == defaults_toml()


_LOADED_LAYERS = """
import sys
from mesh.cli import main
code = main(sys.argv[1:])
layers = sorted({name.split(".")[0] for name in sys.modules} & {"agents", "sim"})
print("layers:", ",".join(layers), file=sys.stderr)
raise SystemExit(code)
"""


def _layers_loaded_by(*args: str) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-c", _LOADED_LAYERS, *args],
                            capture_output=True, text=True, timeout=60)
    return result.returncode, result.stderr.rsplit("layers:", 1)[-1].strip()


def test_mesh_commands_start_without_loading_the_layers_above() -> None:
    # Loading every layer's subcommands took a third of each command's start-up.
    assert _layers_loaded_by("config", "defaults") == (0, "")


def test_the_layers_commands_are_still_there_when_asked_for() -> None:
    code, layers = _layers_loaded_by("sim", "--scenario", "gossip", "--nodes", "3",
                                     "--duration", "1", "--seeds", "1")
    assert code == 0 and layers == "agents,sim"
    help_text = run_cli("--help").stdout
    for command in ("kv", "status", "demo", "sim", "task", "workflow"):
        assert command in help_text
