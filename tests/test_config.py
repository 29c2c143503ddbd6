"""Node configuration: TOML files, overrides, defaults and clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mesh.config import NodeConfig, defaults_toml, load_config, parse_config
from mesh.errors import ConfigError


def test_a_missing_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path) == NodeConfig()


def test_file_values_apply_and_overrides_win(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(
        'name = "alpha"\nlisten = "tcp://127.0.0.1:7001"\n'
        "[envelope]\nreplay_window_messages = 128\n",
        encoding="utf-8",
    )
    config = load_config(tmp_path, {"listen": "tcp://127.0.0.1:7002"})
    assert (config.name, config.listen) == ("alpha", "tcp://127.0.0.1:7002")
    assert config.envelope.replay_window_messages == 128


def test_the_documented_defaults_parse_back_to_the_defaults() -> None:
    assert parse_config(tomllib.loads(defaults_toml())) == NodeConfig()


def test_every_field_is_documented() -> None:
    def walk(model: type[NodeConfig]) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                missing += walk(annotation)
            elif not field.description:
                missing.append(name)
        return missing

    assert walk(NodeConfig) == []


@pytest.mark.parametrize(("data", "message"), [
    ({"listen": "127.0.0.1:7000"}, "must look like tcp://HOST:PORT"),
    ({"seeds": ["tcp://h:99999"]}, "above 65535"),
    ({"envelope": {"replay_window_messages": 1}}, "envelope.replay_window_messages"),
    ({"envelope": {"no_such_limit": 1}}, "envelope.no_such_limit"),
    ({"transport": {"send_queue_messages_max": 0}}, "transport.send_queue_messages_max"),
])
def test_bad_values_are_named_in_one_config_error(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data, source="node.toml")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text("name = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"node\.toml: not valid TOML"):
        load_config(tmp_path)
