"""The probe commands' own values, as rows like the parameter table's (engine/params.py), bounded at
the door: the CLI flags (commands/probe.py) and the library calls (extract, analyze, train) check the
same row. Nothing heavy is imported here: the CLI builds its options from these in milliseconds.
"""

from __future__ import annotations

from typing import Any

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.params import LIVE, PARAMS, Param

POOLS = ("mean", "last")  # time pooling of the activations (extract keeps both)
METHODS = ("mse", "logistic", "diffmean")  # probe kinds (train.py)

# A segment holds at least a few frames (0.1 s = 5 at MusicGen's 50 Hz; a shorter one has nothing to
# pool, and a collection would be cut into millions of them) and at most MusicGen's trained window.
SEGMENT_SECONDS = Param("--segment-seconds", "number", "segment length, at most MusicGen's window", "s", 0.1,
                        PARAMS["window_seconds"].default, default=10.0, cli="--segment-seconds")
BATCH = Param("--batch", "whole", "segments per forward pass", low=1, high=1024, default=4, cli="--batch")
# Decoding processes beside the model's: 0 decodes in the main process. More than the cores only adds contention.
WORKERS = Param("--workers", "whole", "processes decoding and resampling audio (0 = in the main process)",
                low=0, high=64, default=0, cli="--workers")
TEST_FRACTION = Param("--test-fraction", "number", "held-out share", low=0.01, high=0.99, default=0.15,
                      cli="--test-fraction")
# train --layer: the layer whose direction the vectors file marks best; the steering layer row's range.
LAYER = Param("--layer", "whole", "best (highest held-out accuracy) or a layer number", low=0,
              high=PARAMS["layer"].high, default="best", words=("best",), cli="--layer")
PROMPT = LIVE["prompt"].named("--prompt")  # extract's text condition: the table's prompt row
SEED = PARAMS["seed"].named("--seed")


def layer_value(layer: Any) -> int | str:
    """"best" or a layer number, from the CLI's text or a library caller's int, checked by LAYER."""
    return LAYER.parse(layer) if isinstance(layer, str) else LAYER.check(layer)[0]


def check_layer(layer: int | str, num_layers: int) -> None:
    """A layer number must name one of the activations' layers (checked before any probe trains)."""
    if layer != "best" and not 0 <= layer < num_layers:
        raise MusicsteerError(f"--layer {layer} out of range; the activations have layers 0-{num_layers - 1}")

