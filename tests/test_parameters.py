"""Bad parameters fail at once with one clear error, before any model is loaded or shard written."""

from __future__ import annotations

import pytest
from runs import tiny_run

from backends import registry
from core.errors import UserError
from flows.benchmark import benchmark

BASE = tiny_run(limit=4, seed=None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"datasets": ["imagenet-9k"]}, "unknown dataset 'imagenet-9k'"),
        ({"splits": ["validation-2"]}, "validation-2"),
        ({"encoders": ["open_clip:ViT-B-99/openai"]}, "unknown open_clip architecture 'ViT-B-99'"),
        ({"encoders": ["open_clip:ViT-B-32/not-a-tag"]}, "no pretrained tag 'not-a-tag'"),
        ({"encoders": ["clip:ViT-B-32"]}, "unknown encoder scheme 'clip'"),
        ({"describers": ["gpt:4"]}, "unknown describer scheme 'gpt'"),
        ({"describers": ["offline:nope"]}, "unknown offline describer 'nope'"),
        ({"root": "s4://bucket/x"}, "unknown or unavailable protocol 's4'"),
        ({"root": "s3://"}, "names no bucket"),
        ({"shortlist": 11}, "shortlist 11 is larger than the 10 classes of cifar10"),
        ({"describers": [], "class_weights": ["descriptions"]}, "need a describer's class descriptions"),
        ({"describers": [], "shortlist": 3}, "a shortlist needs a describer"),
        # the offline stand-in describer is never paired silently with a real encoder
        ({"encoders": ["open_clip:ViT-B-32/openai"]}, "a real encoder needs a describer: pass --describers"),
    ],
)
def test_bad_parameter_fails_before_any_model_loads(prefect_server, tmp_path, overrides, message):
    loaded = (registry._load_encoder.cache_info().currsize, registry._load_describer.cache_info().currsize)
    params = {**BASE, "root": str(tmp_path / "root"), **overrides}
    with pytest.raises((ValueError, FileNotFoundError, UserError)) as caught:
        benchmark(**params)
    assert message in str(caught.value)
    assert (
        registry._load_encoder.cache_info().currsize,
        registry._load_describer.cache_info().currsize,
    ) == loaded
    assert not list(tmp_path.rglob("*.parquet"))


def test_wrong_parameter_type_is_refused_by_validation(prefect_server, tmp_path):
    with pytest.raises(Exception, match="shard_size"):
        benchmark(**{**BASE, "root": str(tmp_path), "shard_size": "many"})


def test_command_line_is_made_from_the_flow_signature(capsys):
    """Every flow parameter is a flag whose help is the docstring's; a value out of the parameter's
    range is refused by the command line in one line with status 2, before any flow starts."""
    from flows.benchmark import main

    with pytest.raises(SystemExit) as shown:
        main(["--help"])
    assert shown.value.code == 0
    out = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too
    for name, schema in benchmark.parameters.model_dump()["properties"].items():
        assert f"--{name.replace('_', '-')}" in out
        assert "".join(schema["description"].split()) in out
    with pytest.raises(SystemExit) as refused:
        main(["--shard-size", "0"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("shard_size must be at least 1, got 0")
