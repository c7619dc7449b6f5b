"""How every job decodes image and mask files: the flags the training and inference configs
share (`DecodeFlags`, a base of both) and the one `unet_core.image_files.DecodeOptions` they
become, which travels to every process that decodes (Ray Data tasks and actors, the driver's
checks) as part of the decode call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unet_core.image_files import DecodeOptions


@dataclass
class DecodeFlags:
    """Decode settings of a job (a base class of its config: the same flags everywhere)."""

    exif_transpose: bool = True
    """Turn each image (and a mask file that carries the tag) by its EXIF orientation (JPEG, TIFF; PIL.ImageOps.exif_transpose), as image viewers show it, so that masks line up with the displayed image (a segment manifest records the orientation applied: exif_orientation, 1 = none). --no-exif-transpose keeps the stored pixel order (raw orientation)."""
    max_image_pixels: int | None = None
    """Largest image (width x height pixels) decoded, for trusted huge microscopy or satellite tiles; default: Pillow's decompression-bomb guard (it refuses images above twice PIL.Image.MAX_IMAGE_PIXELS, 179 M pixels). A larger image fails alone, naming the file: a failed manifest row in segment and evaluate, a bad pair in training."""

    def decode_problems(self) -> list[str]:
        """What is wrong with these flags (each with the fix); [] when they are fine."""
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            return [
                f"--max-image-pixels must be >= 1 (or none for Pillow's limit), got "
                f"{self.max_image_pixels}"
            ]
        return []

    @property
    def decode_options(self) -> DecodeOptions:
        """The flags as the options of every decode call (plain data: Ray ships it)."""
        from unet_core.image_files import DecodeOptions  # Pillow: not at config import time

        return DecodeOptions(
            exif_transpose=self.exif_transpose, max_image_pixels=self.max_image_pixels
        )
