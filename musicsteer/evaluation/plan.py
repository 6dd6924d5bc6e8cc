"""Which clips an evaluation needs, how each is made, and the batches they are made in.

A clip's identity (a JSON dict) is every setting that decides its codes; its name is its path under
OUT/clips without suffix (clips.ClipStore):

  source/{genre}-{i:02d}                          a source clip (shared by the pairs with that source)
  {source}-to-{target}/{i:02d}-prompted           the prompted baseline (the blend text)
  {source}-to-{target}/{i:02d}-unsteered          the steered arm's text and seed, no vectors at all
  {source}-to-{target}/{i:02d}-steered-a{α}       steered toward the target at strength α (α = 0 too)
  {source}-to-{target}/{i:02d}-hold-a{α}          --hold-seconds long, steered at the main α
  {source}-to-{a}-and-{b}/{i:02d}-fused-a{α}      --fusion: steered toward the mix {a: 1, b: 1}

Clips are planned in blocks of one kind and α (sources; prompted; unsteered; one per α; hold; one per
fusion α), each block across every transition and clip index in the same order, and batches never span
two blocks. So the α = 0 block and the unsteered block are cut into batches of the same shapes, row
for row: a batch's rounding, which can move a seeded top-k draw (docs/design.md §5), is the same in
both, and their codes must be equal (effect.alpha0_check).
"""

from __future__ import annotations

from dataclasses import dataclass

from musicsteer.engine.control import Controls, controls_of
from musicsteer.engine.vectors import SteeringVectors

from .protocol import Protocol, fusion_name, slug


@dataclass(frozen=True)
class ClipJob:
    """One clip to make: its name, its identity, and how to generate it."""

    name: str  # path under OUT/clips without suffix, e.g. "rock-to-jazz/00-prompted"
    kind: str  # "source" | "prompted" | "unsteered" | "steered" | "hold" | "fused"
    pair: str  # "rock:jazz" ("rock:jazz+electronic" for a fusion; "" for source clips)
    index: int
    alpha: float | None
    identity: dict  # compared as JSON with the stored one
    controls: Controls
    steered: bool  # generated with the vectors file (α = 0 too): False for source, prompted, unsteered
    source_name: str = ""  # the source clip this continues ("" for source clips)
    block: str = "source"  # clips of one block are batched together, never with another block's
    seconds: float = 0.0  # new audio after the source (the source clip's own length for a source clip)


def _sampling_controls(protocol: Protocol, prompt: str, seed: int, **steer) -> Controls:
    """A clip's controls: its prompt and seed, the protocol's sampler (every "sampler" row, by row name)
    and `steer` (alpha, mix, layer, site: row names too)."""
    return controls_of({"prompt": prompt, "seed": seed, **vars(protocol.sampling), **steer})


def plan(protocol: Protocol, model_id: dict, vectors: SteeringVectors) -> list[ClipJob]:
    """Every clip the protocol needs (its pairs resolved), block by block, source clips first
    (continuations read their codes)."""
    layer = vectors.best_layer if protocol.layer is None else protocol.layer
    site = protocol.site or vectors.site
    sampling = dict(vars(protocol.sampling))
    blocks: dict[str, list[ClipJob]] = {"source": []}
    sources: dict[tuple[str, int], ClipJob] = {}
    for source, _target in protocol.pairs:
        for i in range(protocol.n):
            if (source, i) in sources:
                continue
            prompt, seed = protocol.source_text(source), protocol.source_seed(i)
            identity = {"kind": "source", **model_id, "prompt": prompt, "seed": seed,
                        "seconds": protocol.source_seconds, **sampling}
            job = ClipJob(f"source/{slug(source)}-{i:02d}", "source", "", i, None, identity,
                          _sampling_controls(protocol, prompt, seed), False, seconds=protocol.source_seconds)
            sources[(source, i)] = job
            blocks["source"].append(job)

    def continuation(kind: str, block: str, folder: str, pair: str, source: str, i: int, prompt: str,
                     alpha: float | None = None, mix: dict[str, float] | None = None,
                     seconds: float = protocol.seconds) -> None:
        """Plan one continuation of source clip i into `block`: steered (toward `mix` at `alpha`) when mix is given."""
        start, seed = sources[(source, i)], protocol.continuation_seed(i)
        identity = {"kind": kind, **model_id, "source": start.identity, "seed": seed, "seconds": seconds,
                    **sampling, "prompt": prompt}
        steer = {}
        suffix = kind
        if mix is not None:
            targets = list(mix)
            # a one-vector steer keeps the identity it has always had ("target"); a fusion names its mix
            identity.update({"vectors_sha256": vectors.sha256, **({"target": targets[0]} if len(mix) == 1 else
                                                                    {"mix": mix}),
                             "alpha": alpha, "layer": layer, "site": site, "rule": protocol.steer_rule})
            steer = {"alpha": alpha, "mix": dict(mix), "layer": (layer,), "site": site}
            suffix = f"{kind}-a{alpha:g}"
        blocks.setdefault(block, []).append(
            ClipJob(f"{folder}/{i:02d}-{suffix}", kind, pair, i, alpha, identity,
                    _sampling_controls(protocol, prompt, seed, **steer), mix is not None, start.name, block, seconds))

    for source, target in protocol.pairs:
        folder, pair = f"{slug(source)}-to-{slug(target)}", f"{source}:{target}"
        steered_text = protocol.steered_text(source)
        for i in range(protocol.n):
            continuation("prompted", "prompted", folder, pair, source, i, protocol.blend_text(source, target))
            continuation("unsteered", "unsteered", folder, pair, source, i, steered_text)
            for alpha in protocol.sweep:
                continuation("steered", f"steered-a{alpha:g}", folder, pair, source, i, steered_text, alpha,
                             {target: 1.0})
            if protocol.hold_seconds:
                continuation("hold", "hold", folder, pair, source, i, steered_text, protocol.alpha, {target: 1.0},
                             protocol.hold_seconds)
    for source, a, b in protocol.fusions:
        folder = f"{slug(source)}-to-{slug(a)}-and-{slug(b)}"
        for i in range(protocol.n):
            continuation("fused", f"fused-a{protocol.alpha:g}", folder, fusion_name(source, a, b), source, i,
                         protocol.steered_text(source), protocol.alpha, {a: 1.0, b: 1.0})
    return [job for block in blocks.values() for job in block]


def batches(jobs: list[ClipJob], size: int) -> list[list[ClipJob]]:
    """The plan's jobs cut into batches of at most `size` of one block, in plan order: the same plan
    and size give the same batches whatever is already on disk, so a resumed run remakes a clip in
    the company it was first made in."""
    groups: list[list[ClipJob]] = []
    for job in jobs:
        if groups and len(groups[-1]) < size and groups[-1][0].block == job.block:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups
