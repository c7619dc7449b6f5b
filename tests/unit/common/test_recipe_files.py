"""Recipe files (configs/*.yaml): one file, a section per job. Each loads in every job, a
job reads only its own sections, flags override the file, and unknown keys name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.exporting.config import ExportConfig, parse_export_config
from jobs.inference.config import EvaluateConfig, SegmentConfig, parse_config
from jobs.training.config import DEMO_PRESET, TrainJobConfig, parse_args
from tests.support import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "configs").glob("*.yaml"))


def segment(*argv: str) -> SegmentConfig:
    return parse_config(
        SegmentConfig, ["--input", "in", "--output", "out", *argv], prog="seg", description=""
    )


def evaluate(*argv: str) -> EvaluateConfig:
    return parse_config(EvaluateConfig, ["--data", "d", *argv], prog="eval", description="")


def test_there_are_recipes():
    assert {"demo.yaml"} <= {p.name for p in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_in_every_job(recipe):
    trained = parse_args(["--config", str(recipe), "--data", "some/data"])
    assert isinstance(trained, TrainJobConfig) and trained.data == "some/data"
    assert isinstance(segment("--config", str(recipe)), SegmentConfig)
    assert isinstance(evaluate("--config", str(recipe)), EvaluateConfig)
    exported = parse_export_config(
        ["--config", str(recipe), "--model", "unet.pt", "--format", "onnx", "--output", "u.onnx"],
        prog="export",
        description="",
    )
    assert isinstance(exported, ExportConfig)


def test_demo_recipe_is_the_built_in_demo_preset():
    from_file = parse_args(["--config", str(REPO_ROOT / "configs" / "demo.yaml")])
    assert from_file == parse_args([])
    flat = {**vars(from_file.train), **vars(from_file.model)}
    assert {k: flat[k] for k in DEMO_PRESET} == DEMO_PRESET


def export(*argv: str) -> ExportConfig:
    return parse_export_config(
        ["--model", "unet.pt", "--format", "onnx", "--output", "u.onnx", *argv],
        prog="export",
        description="",
    )


def trained_field(cfg: TrainJobConfig, key: str):
    """A `train:` / `model:` key's value in the parsed training config: the model's field, the
    training loop's, or the job's (the file's two sections fill one flat set of fields)."""
    holders = [h for h in (cfg.model, cfg.train, cfg) if key in vars(h)]
    assert holders, f"no field {key!r} in the training job's config"
    return getattr(holders[0], key)


def same(parsed, value) -> bool:
    if isinstance(value, list):
        return list(parsed) == value
    if isinstance(value, float):
        return parsed == pytest.approx(value, rel=1e-12)
    return parsed == value


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_value_of_a_recipe_reaches_its_jobs_config(recipe):
    """Each key of each section ends up as that field's value in the job that reads the
    section: a key parsed but dropped, or read into another field, fails here."""
    sections = yaml.safe_load(recipe.read_text())
    assert set(sections) <= {"train", "model", "evaluate", "segment", "export"}, recipe
    path = str(recipe)
    parsed = {
        "train": lambda: parse_args(["--config", path, "--data", "some/data"]),
        "model": lambda: parse_args(["--config", path, "--data", "some/data"]),
        "evaluate": lambda: evaluate("--config", path),
        "segment": lambda: segment("--config", path),
        "export": lambda: export("--config", path),
    }
    checked = 0
    for section, values in sections.items():
        cfg = parsed[section]()
        for key, value in values.items():
            got = trained_field(cfg, key) if section in ("train", "model") else getattr(cfg, key)
            assert same(got, value), (
                f"{recipe.name} {section}.{key}: {value!r} in the file, {got!r}"
            )
            checked += 1
    assert checked == sum(len(v) for v in sections.values()) > 0


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_each_job_reads_its_own_section_and_flags_override(tmp_path):
    path = write(
        tmp_path,
        "train:\n  epochs: 3\nmodel:\n  depth: 2\n"
        "evaluate:\n  tile_size: 256\nsegment:\n  tile_size: 128\n  tta: flip\n",
    )
    trained = parse_args(["--config", path, "--data", "d"])
    assert (trained.train.epochs, trained.model.depth) == (3, 2)
    assert (segment("--config", path).tile_size, segment("--config", path).tta) == (128, "flip")
    assert segment("--config", path, "--tile-size", "512", "--tta", "none").tile_size == 512
    assert evaluate("--config", path).tile_size == 256
    assert evaluate("--config", path, "--tile-size", "0").tile_size == 0


@pytest.mark.parametrize(
    ("text", "message", "jobs"),
    [
        ("segment:\n  tile_sise: 128\n", "unknown keys ['tile_sise']", (segment,)),
        ("evaluate:\n  tile_size: big\n", "'tile_size' must be int", (evaluate,)),
        ("segment: 3\n", "section 'segment' must be a mapping", (segment, evaluate)),
        ("tile_sise: 1\n", "unknown keys ['tile_sise']", (segment, evaluate)),
    ],
)
def test_bad_recipe_exits_2_naming_the_file_and_key(tmp_path, capsys, text, message, jobs):
    path = write(tmp_path, text)
    for job in jobs:
        with pytest.raises(SystemExit) as exit_info:
            job("--config", path)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and path in err, err
    if jobs == (segment,):  # the other job skips the section it does not read
        assert isinstance(evaluate("--config", path), EvaluateConfig)


def test_training_rejects_unknown_keys_in_its_sections(tmp_path, capsys):
    path = write(tmp_path, "train:\n  epochz: 3\nsegment:\n  tile_size: 128\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", path, "--data", "d"])
    assert "unknown keys ['epochz']" in capsys.readouterr().err
