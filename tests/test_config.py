"""Config models: every shipped config validates; bad configs name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from blockwise.config import load, load_config, parse_config
from blockwise.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def minimal(**overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "name": "t",
        "run_dir": "/tmp/blockwise-test-run",
        "inputs": {"affinities": {"file": "/tmp/a.zarr", "dataset": "affs"}},
    }
    config.update(overrides)
    return config


def test_configs_exist() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREMI_DIR", "/data/cremi")
    if path.name.startswith("train_"):
        from blockwise.train.config import TrainConfig

        assert load(path, TrainConfig).name
        return
    config = load_config(path)
    assert config.name
    assert config.merge_until >= max(config.segments.thresholds)


def test_unknown_key_is_named() -> None:
    data = minimal(extract_fragments={"block_shape_vx": [64, 64, 64], "blok_shape": 3})
    with pytest.raises(ConfigError, match=r"unknown key `extract_fragments.blok_shape`"):
        parse_config(data)


def test_wrong_value_names_key_expected_and_received() -> None:
    data = minimal(extract_fragments={"block_shape_vx": [64, -1, 64]})
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert "extract_fragments.block_shape_vx.1" in str(e.value)
    assert "greater than 0" in str(e.value)
    assert "got -1" in str(e.value)


def test_block_not_multiple_of_chunk() -> None:
    data = minimal(
        extract_fragments={"block_shape_vx": [64, 64, 60]}, output={"chunk_shape_vx": [32, 32, 32]}
    )
    with pytest.raises(ConfigError, match=r"must be a multiple of output.chunk_shape_vx"):
        parse_config(data)


def test_missing_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    data = minimal(inputs={"affinities": {"file": "${NOPE_NOT_SET}/a.h5", "dataset": "affs"}})
    with pytest.raises(ConfigError, match=r"NOPE_NOT_SET, which is not set"):
        parse_config(data)


def test_offsets_must_start_with_nearest_neighbours() -> None:
    data = minimal(
        inputs={
            "affinities": {"file": "/tmp/a.zarr", "dataset": "affs"},
            "offsets": [[0, -1, 0], [-1, 0, 0], [0, 0, -1]],
        }
    )
    with pytest.raises(ConfigError, match=r"nearest-neighbour offsets"):
        parse_config(data)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_config(bad)


def test_thresholds_sorted_and_stage_hash_changes() -> None:
    a = parse_config(minimal(segments={"thresholds": [0.7, 0.3]}))
    assert a.segments.thresholds == [0.3, 0.7]
    b = parse_config(
        minimal(segments={"thresholds": [0.7, 0.3]}, agglomerate={"context_vx": [1, 1, 1]})
    )
    assert a.stage_hash("extract_fragments") == b.stage_hash("extract_fragments")
    assert a.stage_hash("agglomerate") != b.stage_hash("agglomerate")


def test_dump_round_trip(tmp_path: Path) -> None:
    config = parse_config(minimal())
    path = tmp_path / "c.yaml"
    config.dump(path)
    assert load_config(path) == config
    assert yaml.safe_load(path.read_text())["run_dir"] == "/tmp/blockwise-test-run"


def test_per_stage_workers_timeouts_and_retries(tmp_path: Path, gala: Path) -> None:
    from gala import gala_data

    from blockwise.execution.local import LocalProfile
    from blockwise.run_context import RunContext
    from blockwise.stage import StageTask, stage_execution
    from blockwise.stages import get_stage
    from blockwise.tasks import build_task

    with pytest.raises(ConfigError, match=r"unknown stage\(s\) \['agglomerat'\]"):
        parse_config(minimal(execution={"stages": {"agglomerat": {"num_workers": 2}}}))
    with pytest.raises(ConfigError, match=r"execution.stages.relabel.block_timeout_s"):
        parse_config(minimal(execution={"stages": {"relabel": {"block_timeout_s": 0}}}))

    execution = {
        "num_workers": 2,
        "block_timeout_s": 60,
        "max_retries": 1,
        "stages": {
            "agglomerate": {"num_workers": 3, "block_timeout_s": 7200},
            "relabel": {"max_retries": 4},
        },
    }
    config = parse_config(gala_data(gala, tmp_path / "run", execution=execution), "gala")
    assert config.execution.longest_block_timeout_s == 7200
    ctx = RunContext(config)
    expected = {
        "extract_fragments": (2, 60.0, 1),
        "agglomerate": (3, 7200.0, 1),
        "relabel": (2, 60.0, 4),
    }
    for name, (workers, timeout, retries) in expected.items():
        stage = get_stage(name)
        settings = stage_execution(config, stage)
        assert (settings.num_workers, settings.block_timeout_s, settings.max_retries) == (
            workers,
            timeout,
            retries,
        )
        # the daisy task and the local profile's worker watch take them
        task = build_task(ctx, stage, lambda block: None)
        assert (task.max_workers, task.timeout_secs, task.max_retries) == (
            workers,
            timeout,
            retries,
        )
        profile = LocalProfile(tmp_path / "config.yaml", stuck_after_s=7200)
        try:
            assert profile.process_function(ctx, StageTask(stage)).stuck_after_s == timeout
        finally:
            profile.teardown()
