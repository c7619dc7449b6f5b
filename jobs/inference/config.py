"""Configuration of the batch jobs `jobs/segment.py` and `jobs/evaluate.py`.

Typed dataclasses with a docstring per field; every field becomes a flag (`--batch-size`) whose
help is that docstring, so `--help` documents them all. `InferenceConfig` holds what both jobs
share (model, cluster, prediction); `SegmentConfig` and `EvaluateConfig` add their own fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from jobs.common.cli import (
    NONE_WORDS,
    OldSpelling,
    add_config_flag,
    add_field_flag,
    field_docs,
    parse_fields,
)
from jobs.common.decode_flags import DecodeFlags
from jobs.common.vocabulary import (
    DEVICES,
    device_problems,
    device_request,
    logs_to_mlflow,
    normal_workers,
    parse_workers,
)

DEFAULT_MODEL_URI = "models:/unet@champion"
MASK_FORMATS = ("indices", "values", "color")
MANIFEST_FORMATS = ("parquet", "jsonl")
AMP_MODES = ("auto", "bf16", "off")
TTA_MODES = ("none", "hflip", "flip", "dihedral")
"""--tta (`unet_core.tta.TTA_MODES`, which a unit test compares)."""
TILE_SIZE_CPU = 512
"""--tile-size on CPU actors (`unet_core.inference_device.TILE_SIZE_CPU`, which a unit test
compares: this module stays free of torch and Ray)."""


def _actors(_value: int, given: dict[str, Any]) -> dict[str, Any]:
    low, high = int(given.get("min_actors") or 0), int(given.get("max_actors") or 0)
    return {"num_workers": f"{low}-{high}" if high else low}


def _gpus(value: float, _given: dict[str, Any]) -> dict[str, Any]:
    return {"device": "cpu"} if value == 0 else {"device": "gpu", "gpus_per_worker": value}


SEGMENT_OLD_SPELLINGS = (
    OldSpelling("--min-actors", "--num-workers MIN-MAX", _actors, kind=int),
    OldSpelling("--max-actors", "--num-workers MIN-MAX", _actors, kind=int),
    OldSpelling(
        "--num-gpus-per-actor",
        "--device gpu --gpus-per-worker X (0: --device cpu)",
        _gpus,
        kind=float,
        new_key="device: gpu, gpus_per_worker: X (0: device: cpu)",
    ),
    OldSpelling(
        "--num-cpus-per-actor",
        "--cpus-per-worker X",
        lambda v, _: {"cpus_per_worker": v},
        kind=float,
    ),
)
"""Flags (and config keys) of earlier releases that segment and evaluate still take."""
EVALUATE_OLD_SPELLINGS = (
    *SEGMENT_OLD_SPELLINGS,
    OldSpelling("--report", "--scores-file PATH", lambda v, _: {"scores_file": v}),
)


@dataclass
class InferenceConfig(DecodeFlags):
    """Model, cluster, prediction and decode settings shared by the segment and evaluate jobs."""

    model: str = DEFAULT_MODEL_URI
    """MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<model_id> (a logged model), runs:/RUN/PATH) or a local or s3:// unet_core checkpoint (file, or a folder holding unet.pt). An alias is resolved to a fixed version once, on the driver."""
    tracking_uri: str | None = None
    """MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (made absolute)."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint for s3:// inputs and outputs (MinIO, a local server); default $AWS_ENDPOINT_URL."""
    batch_size: int = 0
    """Images (or tiles) per forward pass (equal-size images are stacked; others are predicted apart); 0 = auto by image size: as many as make 2^17 pixels on CPU (64 images of 16x16 ... 1 of 480x360) and 2^22 on GPU (16 of 512x512), at most 64 (CPU) or 256 (GPU); measured in jobs/common/resources.py."""
    rows_per_call: int = 0
    """Images per Ray Data batch handed to a decode task or a predictor actor call (at least --batch-size when given; an automatic forward batch is cut to fit it); 0 = auto: the forward batch of the first input's size, at least 8."""
    device: str = "auto"
    """Where the predictor actors run: cpu, gpu, or auto (GPU when this machine has CUDA on a local Ray, or the cluster has GPUs now, or its autoscaler can launch GPU nodes; else CPU)."""
    gpus_per_worker: float = 1.0
    """GPUs reserved per predictor actor when they run on GPU (a fraction lets actors share a GPU, e.g. 0.5: two per GPU)."""
    cpus_per_worker: float = 1.0
    """Logical CPUs reserved per predictor actor."""
    num_workers: int | str = 0
    """Predictor actors (each loads the model once): N, or MIN-MAX (Ray Data grows and shrinks the pool between them); 0 = auto, and MIN 0 = an automatic smallest pool. Auto smallest: 1 on an autoscaling cluster (the pool grows with it), else the whole pool. Auto largest: one actor per --gpus-per-worker of the GPUs the cluster has or can launch; on CPU one single-threaded actor per core of a local Ray (half the logical CPUs of a cluster); 16 when an autoscaler does not publish its maximum."""
    torch_threads: int = 0
    """torch intra-op threads per CPU actor; 0 = auto: a local Ray's cores divided by the pool size, 1 on a cluster."""
    fused: bool | None = None
    """The whole pipeline inside each predictor actor; default: on for CPU actors (each job says its own words)."""
    decode_cpus: float = 0.5
    """Logical CPUs reserved per CPU task (each job says its own words)."""
    cpu_tasks: int = 0
    """Most CPU tasks of a stage running at once; 0 = auto (each job says its own words)."""
    max_in_flight_mb: int = 0
    """Object-store memory (MiB) that this job's blocks in flight (decoded images, masks) may use; 0 = auto: 12 calls (--rows-per-call images of the first input's size), at least 3 blocks (up to 64 MiB or 1,024 images each), per actor, at least 32. Bounds memory however many images there are."""
    tile_size: int | None = None
    """Images larger than this on either side are predicted in overlapping tiles; 0 = never tile; default 512 on CPU actors, 1024 on GPU actors (fewer, larger tiles keep a GPU busy)."""
    tile_overlap: int = 64
    """Overlap in pixels between neighbouring tiles (blended with linear ramps)."""
    tta: str = "none"
    """Test-time augmentation, the mean softmax over views of each image: none; hflip (identity and the left-right mirror: 2x, for scenes with an up and a down, such as street views); flip (identity, left-right and up-down mirrors: 3x the compute); dihedral (the 8 rotations by 90 degrees and mirrors: 8x, for data without a preferred orientation, such as microscopy)."""
    compile: bool = False
    """torch.compile the model in each actor (inductor; the first batch of each image size pays the compilation, about a minute on a small CPU; falls back to eager with a warning where compiling fails). Measured in docs/benchmarks.md: worth it only for long runs of one image size."""
    amp: str = "auto"
    """Mixed precision: auto (bf16 on CUDA and on CPUs with native bf16), bf16, or off (fp32)."""
    max_failed_fraction: float = 0.0
    """Fraction (0 to 1) of the images that may fail (unreadable, undecodable, too large); above it the job exits 1 (0: any failure does)."""
    progress_seconds: float = 10.0
    """Seconds between progress lines on stderr."""
    ray_address: str | None = None
    """Ray cluster to connect to; default $RAY_ADDRESS, else a local Ray is started."""
    startup_timeout: float = 600.0
    """Seconds to wait for the smallest predictor pool (MIN of --num-workers) to start, including the nodes an autoscaler launches for it; then the job fails saying so instead of waiting forever."""
    shared_fs: bool = False
    """Local paths are on a filesystem every node mounts (each job says its own words)."""
    dry_run: bool = False
    """Resolve everything a run would and print it as one JSON object (each job says its own words)."""
    num_cpus: int | None = None
    """Logical CPUs of a local Ray started by the job; default max(4, 2 x cores), so decode tasks run beside the actors."""
    log_level: str = "INFO"
    """Logging level (stderr)."""

    def __post_init__(self) -> None:
        problems = self.decode_problems()
        if self.tta not in TTA_MODES:
            problems.append(f"--tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")
        if self.batch_size < 0:
            problems.append(f"--batch-size must be >= 0 (0 = auto), got {self.batch_size}")
        if self.rows_per_call < 0:
            problems.append(f"--rows-per-call must be >= 0 (0 = auto), got {self.rows_per_call}")
        try:
            self.num_workers = normal_workers(self.num_workers, auto=True)
        except ValueError as exc:
            problems.append(str(exc))
        problems += device_problems(self.device, self.gpus_per_worker)
        if self.cpus_per_worker < 0 or self.decode_cpus <= 0:
            problems.append("--cpus-per-worker must be >= 0 and --decode-cpus > 0")
        if self.max_in_flight_mb < 0:
            problems.append(
                f"--max-in-flight-mb must be >= 0 (0 = auto), got {self.max_in_flight_mb}"
            )
        if self.cpu_tasks < 0:
            problems.append(f"--cpu-tasks must be >= 0 (0 = auto), got {self.cpu_tasks}")
        if self.torch_threads < 0:
            problems.append(f"--torch-threads must be >= 0, got {self.torch_threads}")
        tile = TILE_SIZE_CPU if self.tile_size is None else self.tile_size  # the smaller default
        if tile < 0:
            problems.append(f"--tile-size must be >= 0 (0 = never tile), got {self.tile_size}")
        if tile and not 0 <= self.tile_overlap < tile:
            problems.append(
                f"--tile-overlap must be in [0, --tile-size), got {self.tile_overlap} "
                f"with --tile-size {tile}"
            )
        if self.amp not in AMP_MODES:
            problems.append(f"--amp must be one of {AMP_MODES}, got {self.amp!r}")
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            problems.append(
                f"--max-failed-fraction must be in [0, 1], got {self.max_failed_fraction}"
            )
        if self.startup_timeout <= 0:
            problems.append(f"--startup-timeout must be > 0, got {self.startup_timeout}")
        if self.num_cpus is not None and self.num_cpus < 1:
            problems.append(f"--num-cpus must be >= 1, got {self.num_cpus}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def worker_range(self) -> tuple[int, int]:
        """(MIN, MAX) predictor actors of --num-workers; 0 = automatic."""
        return parse_workers(self.num_workers, auto=True)

    @property
    def use_gpu(self) -> bool | None:
        """--device as a request: True (gpu), False (cpu), None (auto, decided on the driver)."""
        return device_request(self.device)

    def tile_for(self, *, use_gpu: bool) -> int:
        """--tile-size, or its default for the actors' device."""
        if self.tile_size is not None:
            return self.tile_size
        from unet_core.inference_device import default_tile_size  # torch: not at import time

        return default_tile_size("cuda" if use_gpu else "cpu")

    def call_rows(self, *, use_gpu: bool, pixels: int | None) -> int:
        """Rows per Ray Data batch of the decode and model stages (a chunk of the fused path),
        for inputs of about ``pixels`` pixels (None: unknown)."""
        from jobs.common.resources import forward_batch  # Ray: not at import time

        batch = self.batch_size or forward_batch(pixels or 2**20, use_gpu=use_gpu)
        if self.rows_per_call and not self.batch_size:  # calls as asked, batches that fit
            batch = min(batch, self.rows_per_call)
        return max(self.rows_per_call or max(8, batch), batch)

    @property
    def amp_flag(self) -> bool | None:
        """The ``amp`` argument of unet_core.predict: None = automatic."""
        return {"auto": None, "bf16": True, "off": False}[self.amp]


@dataclass
class SegmentConfig(InferenceConfig):
    """`jobs/segment.py`: one mask per input image under --output, plus a manifest."""

    input: str = ""
    """Folder or s3://bucket/prefix of images (recursive; png, jpg, jpeg, tif, tiff, bmp in any case). With --input-list: the base that relative entries are joined to."""
    output: str = ""
    """Folder or s3://bucket/prefix for masks/, overlays/, confidence/, manifest/ and the manifest."""
    input_list: str | None = None
    """Text file (one relative path or URI per line) or Parquet file (a 'path' column) naming the inputs, instead of listing --input."""
    mask_format: str = "indices"
    """indices: class indices 0..K-1; values: the class map's pixel values (like training masks, e.g. 0/255); color: a palette PNG in the class colours."""
    overlays: bool = False
    """Also write overlays/<path>.jpg (image blended with the class colours)."""
    confidence: bool = False
    """Also write confidence/<path>.png (8-bit, 255 = softmax probability 1)."""
    overwrite: bool = False
    """Predict and write every input again, whatever made its mask."""
    redo_other_versions: bool = False
    """Redo exactly the inputs whose mask another model (version) or other output settings made, as the manifest records: --mask-format, --tta, --no-exif-transpose, and --tile-size/--tile-overlap only for an image that either run tiles (one no larger than both tile sizes is done); without it a run that finds such masks refuses, naming the versions found."""
    temp_max_age: float = 3600.0
    """Seconds after which a temporary file or an unfinished S3 multipart upload under --output counts as abandoned, whichever job wrote it; a run removes abandoned ones when it starts (a write's temporary lives as long as the write: keep this above the longest write)."""
    manifest_format: str = "parquet"
    """Format of the consolidated manifest (the latest row of every input of the output, beside the manifest/ dataset): parquet (manifest.parquet) or jsonl (manifest.jsonl)."""
    write_batch_size: int = 0
    """Rows per encode/write task or fused actor call, and per manifest part file; 0 = auto: 4 x --rows-per-call, at least 32 (fewer for a short input, so that every actor gets several)."""
    report: bool | None = None
    """Write <output>/report.html at the end (thumbnails and charts under report/): counts by status, failures with their errors, class-fraction and mean-confidence histograms, the --report-worst lowest-confidence images, throughput and model version, over every input of the output (the manifest's rows); a static page that works offline. Default: on for local outputs, off for s3:// (--report uploads it)."""
    report_worst: int = 12
    """Lowest mean-confidence images the report shows as image | mask | overlay thumbnails (0: none)."""
    log_to_mlflow: bool | None = None
    """Record the run in MLflow: its settings as params, the model version (and checkpoint sha256), the counts and throughput as metrics, the manifest's URI, the --report page as an artifact, and the link to the model version; a run that fails ends as FAILED, and a logging failure only warns (the masks and manifest stand); default: on when a tracking store is named (--tracking-uri or $MLFLOW_TRACKING_URI) or --model is an MLflow URI (models:/, runs:/), else off."""
    experiment: str = "unet-segmentation"
    """MLflow experiment of the segment run (when it logs to MLflow)."""
    fused: bool | None = None
    """Read, decode, predict, encode and write inside each predictor actor (one single-threaded actor per core, no object-store hop, no separate decode/write tasks); default: on for CPU actors, off for GPU actors (whose decode and write run in CPU tasks beside them). --no-fused / --fused force either; both give the same masks and manifest rows."""
    decode_cpus: float = 0.5
    """Logical CPUs reserved per decode and per encode/write task."""
    cpu_tasks: int = 0
    """Most decode tasks (and, apart, encode/write tasks) running at once; 0 = auto: on a local Ray a quarter of its logical CPUs, at least 1 (each task process costs a Python + torch start-up that the model's cores pay for); on a cluster unbounded (as many as its nodes hold, more as nodes join)."""
    shared_fs: bool = False
    """Local paths (--input, --input-list, --output, a sqlite tracking URI...) are on a filesystem every node mounts at the same path (NFS, EFS, FSx): allow them on a multi-node cluster."""
    dry_run: bool = False
    """Resolve everything a run would (model version, inputs and skips, device, actor pool bounds, output) and print it as one JSON object; start no actors, write nothing. Exit 2 when it lists problems."""

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if not self.input:
            problems.append("--input is required (a folder or s3://bucket/prefix)")
        if not self.output:
            problems.append("--output is required (a folder or s3://bucket/prefix)")
        if self.mask_format not in MASK_FORMATS:
            problems.append(
                f"--mask-format must be one of {MASK_FORMATS}, got {self.mask_format!r}"
            )
        if self.manifest_format not in MANIFEST_FORMATS:
            problems.append(
                f"--manifest-format must be one of {MANIFEST_FORMATS}, got {self.manifest_format!r}"
            )
        if self.temp_max_age <= 0:
            problems.append(f"--temp-max-age must be > 0, got {self.temp_max_age}")
        if self.write_batch_size < 0:
            problems.append(
                f"--write-batch-size must be >= 0 (0 = auto), got {self.write_batch_size}"
            )
        if self.report_worst < 0:
            problems.append(f"--report-worst must be >= 0, got {self.report_worst}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def mlflow_logging(self) -> bool:
        """--log-to-mlflow, or its default (`logs_to_mlflow`)."""
        return logs_to_mlflow(self.log_to_mlflow, self.tracking_uri, self.model)


@dataclass
class EvaluateConfig(InferenceConfig):
    """`jobs/evaluate.py`: IoU, Dice and pixel accuracy of a model on a labelled root."""

    data: str = ""
    """Labelled root (folder or s3://bucket/prefix) with images/ and masks/ paired by relative path and stem."""
    class_map: str | None = None
    """Class map JSON (local or s3://) telling which mask values are which class; default <data>/classes.json, else the model's own class map."""
    rand_error_class: str | None = None
    """Class whose 4-connected regions are the segments of the adapted Rand error (the ISBI 2012 leaderboard metric; ISBI: cell): computed per image on the truth and predicted masks (ignored truth pixels left out of both) and averaged over images (mean of per-slice values) in the summary; default: not computed."""
    log_to_mlflow: bool | None = None
    """Record the figures in an MLflow evaluation run (metrics, the summary as evaluation.json, the --scores-file when given) linked to the model version by tags; default: on when a tracking store is named (--tracking-uri or $MLFLOW_TRACKING_URI) or --model is an MLflow URI (models:/, runs:/), else off."""
    experiment: str = "unet-evaluation"
    """MLflow experiment of the evaluation run (when it logs to MLflow)."""
    scores_file: str | None = None
    """Also write one row per image to this Parquet file (local or s3://, name ending in .parquet; streamed, appears whole at the end; rows in completion order): key, input, mask_input, status (ok | failed), error, height, width, pixels, mean_iou, mean_dice, pixel_accuracy, pixel_error, rand_error / rand_precision / rand_recall (with --rand-error-class; null where the image has no truth pixel of the class), iou / dice / support (structs with one field per class name; pyarrow.parquet.read_table(path).flatten().to_pandas() gives columns such as iou.cell), confusion (K x K counts, row-major, rows = truth), seconds. Figures are null for a failed image; iou and dice of a class absent from an image's truth and prediction are null."""

    fused: bool | None = None
    """Read, decode, predict and score each image inside each predictor actor (one single-threaded actor per core, no object-store hop, no separate decode/scoring tasks); default: on for CPU actors, off for GPU actors (whose decode and scoring run in CPU tasks beside them). --no-fused / --fused force either; both give the same figures."""
    decode_cpus: float = 0.5
    """Logical CPUs reserved per decode and per scoring task."""
    cpu_tasks: int = 0
    """Most decode tasks (and, apart, scoring tasks) running at once; 0 = auto: on a local Ray a quarter of its logical CPUs, at least 1 (each task process costs a Python + torch start-up that the model's cores pay for); on a cluster unbounded (as many as its nodes hold, more as nodes join)."""
    shared_fs: bool = False
    """Local paths (--data, --class-map, a sqlite tracking URI...) are on a filesystem every node mounts at the same path (NFS, EFS, FSx): allow them on a multi-node cluster."""
    dry_run: bool = False
    """Resolve everything a run would (model version, the image/mask pairs, device, actor pool bounds) and print it as one JSON object; start no actors, score and write nothing. Exit 2 when it lists problems."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ValueError(
                "--data is required (a folder or s3://bucket/prefix with images/, masks/)"
            )
        if self.scores_file and not self.scores_file.lower().endswith(".parquet"):
            raise ValueError(
                f"--scores-file {self.scores_file}: the scores file is a Parquet file (one row "
                "per image); give a name ending in .parquet, e.g. scores.parquet (the summary is "
                "the last line of stdout, and evaluation.json of the MLflow run)"
            )

    @property
    def mlflow_logging(self) -> bool:
        """--log-to-mlflow, or its default (`logs_to_mlflow`)."""
        return logs_to_mlflow(self.log_to_mlflow, self.tracking_uri, self.model)


# --- flags from fields ---------------------------------------------------------------------------


_REQUIRED = {"input", "output", "data"}


def build_parser(cls: type, *, prog: str, description: str) -> argparse.ArgumentParser:
    """One flag per dataclass field; help = the field's docstring and its default."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, argument_default=argparse.SUPPRESS
    )
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    add_config_flag(parser, section_of(cls), "tile_size: 256")
    own = parser.add_argument_group(f"{prog} options")
    shared = parser.add_argument_group("model, cluster and prediction")
    shared_names = {f.name for f in dataclasses.fields(InferenceConfig)}
    fields = sorted(dataclasses.fields(cls), key=lambda f: f.name in shared_names)  # own first
    for f in fields:
        group = shared if f.name in shared_names else own
        doc = docs.get(f.name, "")
        if f.name in _REQUIRED:
            text = f"{doc} (required)"
        elif f.default is None:
            text = doc if "default" in doc.lower() else f"{doc} (default: none)"
        else:
            text = f"{doc} (default: {f.default})"
        metavar = "URI" if f.name in ("model", "input", "output", "data") else f.name.upper()
        metavar = {"num_workers": "N|MIN-MAX", "device": "|".join(DEVICES)}.get(f.name, metavar)
        add_field_flag(
            group, f.name, hints[f.name], text, metavar=metavar, none_words=(*NONE_WORDS, "auto")
        )
    return parser


def section_of(cls: type) -> str:
    """The recipe-file section of a job's config class (`segment`, `evaluate`)."""
    return cls.__name__.removesuffix("Config").lower()


def parse_config(cls: type, argv: list[str] | None, *, prog: str, description: str) -> Any:
    """Parse flags (and --config) into `cls`: defaults < config file < command line; invalid
    values exit 2 with the reason."""
    parser = build_parser(cls, prog=prog, description=description)
    old = EVALUATE_OLD_SPELLINGS if cls is EvaluateConfig else SEGMENT_OLD_SPELLINGS
    return parse_fields(cls, parser, argv, section=section_of(cls), old=old)
