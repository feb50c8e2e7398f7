"""A clip's waveform as GET /clips/{id}/peaks answers it: audiowaveform's
JSON format, version 2 (https://github.com/bbc/audiowaveform, "JSON format
output"), which wavesurfer.js and peaks.js read as they are.

Peaks are stored at BASE_SAMPLES_PER_PIXEL (jobs/media.py) and served at
any whole multiple of it: `samples_per_pixel` names one, or
`pixels_per_second` asks for the nearest one to that many points a second.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator, with_config
from typing_extensions import TypedDict

BASE_SAMPLES_PER_PIXEL = 256
MAX_MULTIPLE = 4096  # 1,048,576 samples per pixel: about 24 s a point at 44.1 kHz
MAX_SAMPLES_PER_PIXEL = BASE_SAMPLES_PER_PIXEL * MAX_MULTIPLE
MAX_PIXELS_PER_SECOND = 200
# Pixels one answer holds at most (about 1.5 MB of JSON; 25 min of 44.1 kHz
# audio at the finest zoom): a long clip's finest zoom would otherwise be
# tens of MB, built on the server for each request. Without a zoom the
# finest within it is served; a finer zoom asked for is a 400.
MAX_LENGTH = 2**18

PEAKS_EXAMPLE = {
    "version": 2,
    "channels": 1,
    "sample_rate": 44100,
    "samples_per_pixel": 256,
    "bits": 8,
    "length": 4,
    "data": [-23, 24, -61, 60, -72, 73, -40, 41],
}


@with_config(ConfigDict(json_schema_extra={"examples": [PEAKS_EXAMPLE]}))
class Peaks(TypedDict):
    """Waveform peaks: for each pixel, the lowest and the highest sample of
    `samples_per_pixel` samples (all channels merged), in `bits`-bit values."""

    version: Literal[2]
    channels: Annotated[Literal[1], Field(description="Channels are merged into one")]
    sample_rate: Annotated[int, Field(gt=0, description="Samples per second of the decoded audio")]
    samples_per_pixel: Annotated[
        int,
        Field(
            ge=BASE_SAMPLES_PER_PIXEL,
            le=MAX_SAMPLES_PER_PIXEL,
            multiple_of=BASE_SAMPLES_PER_PIXEL,
        ),
    ]
    bits: Literal[8]
    length: Annotated[
        int,
        Field(
            ge=0,
            le=MAX_LENGTH,
            description="Pixels: ceil(duration × sample_rate / samples_per_pixel)",
        ),
    ]
    data: Annotated[
        list[Annotated[int, Field(ge=-128, le=127)]],
        Field(description="min, max of pixel 0, min, max of pixel 1, … (2 × length values)"),
    ]


class PeaksQuery(BaseModel, extra="forbid"):
    """GET /clips/{id}/peaks parameters: one zoom, or neither (the finest)."""

    samples_per_pixel: int | None = Field(
        None,
        ge=BASE_SAMPLES_PER_PIXEL,
        le=MAX_SAMPLES_PER_PIXEL,
        multiple_of=BASE_SAMPLES_PER_PIXEL,
        description=f"Samples per point, a multiple of {BASE_SAMPLES_PER_PIXEL}"
        f" (default {BASE_SAMPLES_PER_PIXEL})",
    )
    pixels_per_second: int | None = Field(
        None,
        ge=1,
        le=MAX_PIXELS_PER_SECOND,
        description="Points per second of audio, instead of samples_per_pixel: the nearest"
        f" multiple of {BASE_SAMPLES_PER_PIXEL} samples per point is served",
    )

    @model_validator(mode="after")
    def _one_zoom(self) -> "PeaksQuery":
        if self.samples_per_pixel is not None and self.pixels_per_second is not None:
            raise ValueError("give samples_per_pixel or pixels_per_second, not both")
        return self

    def zoomed(self) -> bool:
        return self.samples_per_pixel is not None or self.pixels_per_second is not None

    def multiple(self, sample_rate: int) -> int:
        """How many stored pixels make one served pixel, at `sample_rate`."""
        if self.samples_per_pixel is not None:
            return self.samples_per_pixel // BASE_SAMPLES_PER_PIXEL
        if self.pixels_per_second is not None:
            wanted = sample_rate / self.pixels_per_second / BASE_SAMPLES_PER_PIXEL
            return max(1, min(MAX_MULTIPLE, round(wanted)))
        return 1
