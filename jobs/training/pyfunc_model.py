"""MLflow pyfunc wrapper of a trained UNet, logged as *code* (models-from-code, MLflow 3).

The training job logs this file with ``python_model=<path of this file>`` and the unet_core
checkpoint as the artifact ``unet`` (stored at ``artifacts/unet.pt`` in the model folder).
The ``unet_core`` package travels with it as a code path (``code/unet_core`` in the model
folder, which MLflow puts first on ``sys.path`` before it executes this file), so the model
loads wherever its pip requirements (torch, numpy, pillow, mlflow) are installed, without this
project. Loading rebuilds the UNet from the checkpoint's architecture and weights
(``torch.load(weights_only=True)``): nothing is unpickled. An ensemble's checkpoint
(`unet_core.ensemble`) loads the same way; its masks are those of the members' mean softmax.

    model = mlflow.pyfunc.load_model("models:/unet@champion")
    mask = model.predict(image)          # image: HxW or HxWxC -> HxW uint8 class indices
    frame = model.predict(pd.DataFrame({"image": [png_bytes, ...]}))   # -> column "mask"
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np

ARTIFACT_KEY = "unet"
"""`jobs.common.model_source.CHECKPOINT_ARTIFACT`, written out: this file runs where the project
is not installed, so it imports nothing of it (tests/unit/inference/test_model_uris.py checks
that the two agree)."""


class UNetPyfunc(mlflow.pyfunc.PythonModel):
    """Predict class-index masks from images (arrays: uint8, or for a model trained on 16-bit or
    float data their own values; or encoded bytes in a DataFrame)."""

    def load_context(self, context: Any) -> None:
        from unet_core.checkpoint import load_checkpoint
        from unet_core.predict import prepare_for_inference

        self.loaded = load_checkpoint(context.artifacts[ARTIFACT_KEY])
        self.model = prepare_for_inference(self.loaded.model)

    def _predict_one(self, image: Any) -> np.ndarray:
        from unet_core.data import decode_image
        from unet_core.image_files import DecodeOptions
        from unet_core.predict import predict

        if isinstance(image, (bytes, bytearray)):  # 8-bit or own values, as the model takes
            options = DecodeOptions(pixel_values=self.loaded.preprocess.pixel_values)
            image = decode_image(
                bytes(image), channels=self.loaded.preprocess.channels, options=options
            )
        return predict(self.model, np.asarray(image), preprocess=self.loaded.preprocess).mask

    # An ndarray hint: MLflow neither infers nor enforces a schema for it (a list[...] hint
    # would make it convert inputs), so DataFrames pass through unchanged too.
    def predict(self, context: Any, model_input: np.ndarray, params: dict | None = None) -> Any:
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            column = "image" if "image" in model_input.columns else model_input.columns[0]
            masks = [self._predict_one(v) for v in model_input[column]]
            return pd.DataFrame({"mask": masks})
        return self._predict_one(model_input)


mlflow.models.set_model(UNetPyfunc())
