from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from scratchllm.config import from_dict, load_config, parse_override, to_toml
from scratchllm.errors import ScratchError


@dataclass
class Opt:
    lr: float = 1e-3
    steps: int = 10
    schedule: Literal["cosine", "wsd"] = "cosine"


@dataclass
class Root:
    name: str = "run"
    out: Path = Path("runs/x")
    tags: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    train: Opt = field(default_factory=Opt)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_toml_and_overrides(tmp_path):
    p = write(tmp_path, 'name = "a"\n[train]\nlr = 0.1\n[weights]\nprose = 0.7\ncode = 0.3\n')
    cfg = load_config(Root, p, ["train.lr=3e-4", "train.steps=5", "train.schedule=wsd", "tags=[\"x\", \"y\"]", "seed=7"])
    assert cfg.name == "a" and cfg.train.lr == 3e-4 and cfg.train.steps == 5
    assert cfg.train.schedule == "wsd" and cfg.tags == ["x", "y"] and cfg.seed == 7
    assert cfg.weights == {"prose": 0.7, "code": 0.3}
    assert isinstance(cfg.out, Path)


def test_int_promotes_to_float_but_not_reverse():
    assert from_dict(Opt, {"lr": 1}).lr == 1.0
    with pytest.raises(ScratchError, match="'steps' must be an integer"):
        from_dict(Opt, {"steps": 1.5})


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("train.steps=abc", "'train.steps' must be an integer"),
        ("train.schedule=linear", "'train.schedule' must be one of"),
        ("tags=3", "'tags' must be a list"),
        ("train=3", "'train' must be a table"),
        ("novalue", "expected key=value"),
    ],
)
def test_errors_name_the_key(override, match):
    with pytest.raises(ScratchError, match=match):
        load_config(Root, None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ScratchError, match="config file not found"):
        load_config(Root, tmp_path / "missing.toml")
    with pytest.raises(ScratchError, match="not valid TOML"):
        load_config(Root, write(tmp_path, "name = = 3"))


def test_override_parsing():
    assert parse_override("a.b=3e-4") == ("a.b", 3e-4)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=gpt4") == ("a", "gpt4")
    assert parse_override("a=x=y") == ("a", "x=y")


def test_toml_round_trip(tmp_path):
    cfg = Root(name='q"uote', tags=["a"], weights={"p": 0.5}, seed=3, train=Opt(lr=0.5, steps=2))
    again = load_config(Root, write(tmp_path, to_toml(cfg)))
    assert again == cfg
