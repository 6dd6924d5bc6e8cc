"""A CUDA graph whose replay fails (engine/graph.py): the same fallback as a failed capture, one warning, the
session goes on; a sticky CUDA error after it is one line. The graph-vs-eager tests are tests/test_graph.py."""

from __future__ import annotations

import pytest
import torch
from conftest import one_line_error
from test_graph import PROMPT, run_captured

from musicsteer.engine.control import Controls
from musicsteer.engine.graph import GraphDecoder, GraphGenerator


class FailingReplay:
    """Stands in for a captured graph whose replay fails (mocked: a real one needs the CUDA runtime). Until
    `fails_at` it replays as the graph would (the static step); then, as CUDA's replay does, it advances the
    random stream before the launch fails."""

    def __init__(self, owner: GraphDecoder, fails_at: int, error: Exception) -> None:
        self.owner, self.fails_at, self.error, self.replays = owner, fails_at, error, 0

    def replay(self) -> None:
        self.replays += 1
        if self.replays == self.fails_at:
            torch.rand(1000, generator=self.owner.rng)  # the Philox offset moved before the launch failed
            raise self.error
        self.owner._run()


@pytest.mark.parametrize(("fails_at", "error"), [
    (1, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB\nmore text")),
    (5, RuntimeError("CUDA error: unspecified launch failure\nCUDA kernel errors might be asynchronously reported"))])
def test_a_replay_that_fails_falls_back_like_a_failed_capture(tiny, monkeypatch, fails_at: int,
                                                              error: Exception) -> None:
    """A replay that fails (an out-of-memory at the first, a launch failure later) costs one warning and the
    graph, never the session: this step reruns uncaptured from the restored random stream, the codes are eager's."""
    graphs = []
    monkeypatch.setattr(GraphDecoder, "_capture",
                        lambda self: graphs.append(FailingReplay(self, fails_at, error)) or graphs[-1])
    got, want, gen, notices = run_captured(tiny, Controls(prompt=PROMPT, seed=4, temperature=0.9))
    assert torch.equal(got, want)
    assert [n.level for n in notices] == ["warning"] and "\n" not in notices[0].text
    assert notices[0].text.startswith(f"CUDA graph replay failed ({type(error).__name__}: CUDA ")
    assert gen.graph.capture is False and gen.graph._graph is None and gen.graph.fallback == notices[0].text
    assert graphs[0].replays == fails_at and gen.graph.builds == 1 and gen.graph.steps == 60


def test_a_sticky_cuda_error_after_a_failed_replay_is_one_line(tiny, monkeypatch) -> None:
    """An illegal memory access poisons the CUDA context: the uncaptured rerun fails too. That is one
    MusicsteerError line (the command prints it and exits), not a traceback. Mocked: the replay and the
    device's sticky failure of every later launch."""
    sticky = RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be ...")
    monkeypatch.setattr(GraphDecoder, "_capture", lambda self: FailingReplay(self, 3, sticky))
    gen = GraphGenerator(tiny, Controls(prompt=PROMPT, seed=4), capture=False)
    gen.graph.capture = True
    gen.start()
    gen.step()
    gen.step()
    monkeypatch.setattr(GraphDecoder, "_run", lambda self: (_ for _ in ()).throw(sticky))
    text = one_line_error(gen.step)
    assert "illegal memory access" in text and "start the session again" in text
    assert gen.graph.fallback.startswith("CUDA graph replay failed (RuntimeError: CUDA error: an illegal memory")
