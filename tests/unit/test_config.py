"""Configuration: flags over environment over file, errors naming the key."""

from pathlib import Path

import pytest

from gpufleet import config as cfg


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch):
    file = tmp_path / "agent.toml"
    file.write_text('interval = 30\ncluster = "from-file"\nnode = "file-node"\n')
    monkeypatch.setenv("GPUFLEET_CLUSTER", "from-env")
    settings = cfg.load(cfg.AgentConfig, {"node": "flag-node", "interval": None}, file)
    assert (settings.interval, settings.cluster, settings.node) == (30, "from-env", "flag-node")


def test_unknown_key_in_file_is_named(tmp_path: Path):
    file = tmp_path / "c.toml"
    file.write_text("bucket = 'b'\nbukcet = 'typo'\n")
    with pytest.raises(cfg.ConfigError, match="bukcet: Extra inputs are not permitted"):
        cfg.load(cfg.CollectorConfig, {}, file)


def test_bad_values_are_named_with_the_reason():
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(cfg.SimulateConfig, {"broker": "tcp://x:1", "nodes": 0, "cluster": "a b"}, None)
    message = str(caught.value)
    assert "broker: Value error, broker must look like mqtt://HOST:PORT" in message
    assert "nodes: Input should be greater than or equal to 1" in message
    assert "cluster: Value error" in message


def test_sample_interval_must_divide_interval():
    with pytest.raises(cfg.ConfigError, match="whole multiple"):
        cfg.load(cfg.AgentConfig, {"interval": 10, "sample_interval": 3}, None)


def test_token_comes_from_environment_and_is_never_shown(monkeypatch):
    monkeypatch.setenv("GPUFLEET_INFLUX_TOKEN", "s3cret")
    settings = cfg.load(cfg.CollectorConfig, {}, None)
    assert settings.influx_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_broken_toml_is_a_clear_error(tmp_path: Path):
    file = tmp_path / "bad.toml"
    file.write_text("interval = = 3")
    with pytest.raises(cfg.ConfigError, match="not valid TOML"):
        cfg.load(cfg.AgentConfig, {}, file)


def test_a_collector_takes_one_cluster_or_all_and_never_a_topic_filter():
    assert cfg.load(cfg.CollectorConfig, {}, None).cluster == "+"
    assert cfg.load(cfg.CollectorConfig, {"cluster": "c7"}, None).cluster == "c7"
    for hostile in ("c7/#", "#", "c 7", ""):
        with pytest.raises(cfg.ConfigError):
            cfg.load(cfg.CollectorConfig, {"cluster": hostile}, None)
