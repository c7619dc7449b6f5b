"""How a model is scored on labelled pairs: one computation for the alias gate
(`jobs.training.champion`) and the evaluate job (`jobs.evaluating.scoring`).

An image is predicted as the batch jobs predict it (`unet_core.predict` on a model made by
`prepare_for_inference`: BatchNorm folded, eval mode; images larger than the tile in
overlapping tiles; the test-time augmentation and precision of `ScoringSettings`), the
prediction is counted against the truth mask into a per-image (K, K) confusion matrix
(`image_confusion`: ignored truth pixels left out, a size mismatch an error naming both files),
and a set's figure is that of the sum of the per-image matrices.

The gate scores with `GATE_SETTINGS`: `jobs/evaluate.py`'s defaults on a CPU (tiles of 512 with
an overlap of 64, no TTA), but in fp32 (``--amp off``): bf16 autocast, evaluate's default on CPUs
with native bf16, would make the gate's decision depend on the CPU that scores it.
``jobs/evaluate.py --amp off`` on the same pairs (on CPU actors) reports the gate's figure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from jobs.common.pairs import size_mismatch
from unet_core.checkpoint import LoadedModel
from unet_core.config import PreprocessConfig
from unet_core.inference_device import TILE_SIZE_CPU
from unet_core.metrics import ConfusionMatrix


@dataclass(frozen=True)
class ScoringSettings:
    """How the images are predicted for scoring (the evaluate job's flags of the same names)."""

    tile_size: int = TILE_SIZE_CPU
    """Images larger than this on either side are predicted in overlapping tiles; 0 = never."""
    tile_overlap: int = 64
    """Overlap between neighbouring tiles, in pixels."""
    tta: str = "none"
    """Test-time augmentation mode (`unet_core.tta.TTA_MODES`)."""
    amp: bool | None = False
    """bf16 autocast: False = fp32, True = on, None = automatic (CUDA, CPUs with native bf16)."""

    def __post_init__(self) -> None:
        from unet_core.tta import TTA_MODES

        if self.tile_size < 0 or (self.tile_size and not 0 <= self.tile_overlap < self.tile_size):
            raise ValueError(
                f"scoring tiles: need tile_size >= 0 and 0 <= tile_overlap < tile_size, got "
                f"{self.tile_size} and {self.tile_overlap}"
            )
        if self.tta not in TTA_MODES:
            raise ValueError(f"scoring tta must be one of {TTA_MODES}, got {self.tta!r}")

    def evaluate_flags(self) -> str:
        """The `jobs/evaluate.py` flags that predict the same way (on CPU actors)."""
        amp = {None: "auto", True: "bf16", False: "off"}[self.amp]
        return (
            f"--tile-size {self.tile_size} --tile-overlap {self.tile_overlap} --tta {self.tta} "
            f"--amp {amp}"
        )


GATE_SETTINGS = ScoringSettings()
"""What the alias gate scores with: evaluate's CPU defaults in fp32 (see the module docstring)."""


def image_confusion(
    pred: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    *,
    mask_uri: str = "<mask>",
    image_uri: str = "<image>",
) -> np.ndarray:
    """The (K, K) counts (rows = truth) of one image's predicted classes against its truth mask;
    truth pixels that are ignored are left out. ValueError naming both files when the sizes
    differ."""
    error = size_mismatch(mask_uri, truth.shape, image_uri, pred.shape[:2])
    if error:
        raise ValueError(error)
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, truth)
    return cm.matrix


class PairScorer:
    """One model, made ready once, scoring (image, mask) pairs: ``confusion(image, mask)`` per
    image, ``score(pairs)`` summed over a set."""

    def __init__(self, loaded: LoadedModel, settings: ScoringSettings = GATE_SETTINGS) -> None:
        from unet_core.inference_device import prepare_for_inference

        self.model = prepare_for_inference(loaded.model, "cpu")  # folded BatchNorm, eval mode
        self.preprocess: PreprocessConfig = loaded.preprocess
        self.num_classes = loaded.model_config.num_classes
        self.settings = settings

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W) uint8 class indices of an HxWxC uint8 image."""
        from unet_core.predict import predict

        s = self.settings
        return predict(
            self.model,
            image,
            preprocess=self.preprocess,
            tta=s.tta,
            tile_size=s.tile_size,
            tile_overlap=s.tile_overlap,
            amp=s.amp,
        ).mask

    def confusion(
        self, image: np.ndarray, truth: np.ndarray, *, mask_uri: str = "<mask>"
    ) -> np.ndarray:
        """The (K, K) counts of this model's prediction of ``image`` against ``truth``."""
        return image_confusion(self.predict(image), truth, self.num_classes, mask_uri=mask_uri)

    def score(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> ConfusionMatrix:
        """The sum of the per-image confusion matrices over (image, mask) pairs."""
        total = ConfusionMatrix(self.num_classes)
        for image, truth in pairs:
            total.matrix += self.confusion(image, truth)
        return total
