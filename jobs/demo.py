"""The demo: generate data, train and register a UNet, segment a folder, show the result.

    python jobs/demo.py                 # writes everything under ./outputs/demo

It runs the real jobs as a user would (`jobs/train.py`, then `jobs/segment.py` with the
registry's `models:/unet@champion`) on a local Ray and the local MLflow store
(`sqlite:///mlflow.db` unless MLFLOW_TRACKING_URI is set), then draws a picture of
image | predicted mask | overlay for a few of the segmented images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # `python jobs/demo.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import exits
from jobs.common.cli import OldSpelling, add_old_flags, command_name, take_old_flags
from jobs.common.logs import setup_logging
from unet_core.classes import ClassMap
from unet_core.synthetic import make_synthetic_dataset
from unet_core.viz import colorize_mask, overlay, stack_panels

JOBS = Path(__file__).resolve().parent
OLD_SPELLINGS = (OldSpelling("--out", "--output DIR", lambda v, _: {"output": v}, key=None),)
"""Flags of earlier releases that still work, with a notice."""


def run_job(script: str, args: list[str]) -> dict:
    """Run a job script, stream its output, return the JSON object on its last stdout line."""
    return exits.run_script([sys.executable, str(JOBS / script), *args])


def picture(data: Path, masks: Path, class_map: ClassMap, path: Path, count: int = 3) -> None:
    """image | predicted mask | overlay, one row per image."""
    rows = []
    for image_path in sorted((data / "images").glob("*.png"))[:count]:
        image = np.asarray(Image.open(image_path).convert("RGB"))
        mask = np.asarray(Image.open(masks / image_path.name))
        gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
        colored = colorize_mask(mask, class_map.colors)
        shown = overlay(image, mask, class_map.colors, alpha=0.6)
        rows.append(Image.fromarray(np.concatenate([image, gap, colored, gap, shown], axis=1)))
    big = stack_panels(rows)
    big = big.resize((big.width * 2, big.height * 2), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    big.save(path)


def parse_args(argv: list[str] | None = None) -> dict:
    """The demo's flags (old spellings turned into new ones, with a notice)."""
    parser = argparse.ArgumentParser(
        prog=command_name("jobs/demo.py"), description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        default=argparse.SUPPRESS,  # absent stays absent: the old --out may set it
        help="folder for the unlabelled images, the masks and the picture (default: outputs/demo)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="recipe file (JSON or YAML) handed to the training job (its train: and model: "
        "sections) and to the segment job (its segment: section), e.g. configs/demo.yaml; "
        "default: the training job's built-in demo preset",
    )
    parser.add_argument("--epochs", type=int, default=0, help="training epochs (0: the preset)")
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="logging level of the jobs (DEBUG: also Ray's and MLflow's own messages)",
    )
    add_old_flags(parser, OLD_SPELLINGS)
    return take_old_flags(vars(parser.parse_args(argv)), OLD_SPELLINGS)


def demo(args: dict) -> tuple[dict, int]:
    """Generate, train, segment and draw; the demo's summary and its exit code."""
    setup_logging(args["log_level"])
    out = Path(args.get("output", "outputs/demo")).resolve()
    config = ["--config", str(Path(args["config"]).resolve())] if args["config"] else []
    started = time.time()
    log_level = [] if args["log_level"].upper() == "INFO" else ["--log-level", args["log_level"]]

    # Images the model never sees in training (another seed), segmented after training.
    unlabelled = out / "unlabelled"
    class_map = make_synthetic_dataset(unlabelled, num_images=12, size=96, seed=123)

    # No --data: train.py generates its demo set and applies its tiny CPU preset.
    train = run_job(
        "train.py",
        ["--run-name", f"demo-{time.strftime('%Y%m%d-%H%M%S')}", "--force-alias"]
        + config
        + log_level
        + (["--epochs", str(args["epochs"])] if args["epochs"] else []),
    )
    segment = run_job(
        "segment.py",
        ["--input", str(unlabelled / "images"), "--output", str(out / "segmented"), "--overwrite"]
        + config
        + log_level,
    )
    picture(unlabelled, out / "segmented" / "masks", class_map, out / "demo.png")

    tracking = train.get("tracking_uri") or "sqlite:///mlflow.db"
    seconds = round(time.time() - started, 1)
    print(f"""
Demo finished in {seconds:.0f} s.
  model        {train["model_uri"]}  (alias @champion set: {train["alias_set"]}, \
val mIoU {train["val_mean_iou"]:.3f})
  masks        {out / "segmented" / "masks"}  ({segment["ok"]} written, manifest {segment["manifest"]})
  picture      {out / "demo.png"}  (image | predicted mask | overlay)
  QC report    {segment.get("report") or "not written"}  (open it in a browser)
  MLflow UI    .venv/bin/mlflow ui --backend-store-uri {tracking}   ->  http://127.0.0.1:5000
""")
    summary = {
        "output": str(out),
        "model_uri": train["model_uri"],
        "alias_set": train["alias_set"],
        "val_mean_iou": train["val_mean_iou"],
        "ok": segment["ok"],
        "failed": segment["failed"],
        "masks": str(out / "segmented" / "masks"),
        "manifest": segment["manifest"],
        "picture": str(out / "demo.png"),
        "report": segment.get("report"),
        "tracking_uri": tracking,
        "seconds": seconds,
    }
    return summary, 0


def main(argv: list[str] | None = None) -> int:
    return exits.run_job("demo", lambda: parse_args(argv), demo)


if __name__ == "__main__":
    sys.exit(main())
