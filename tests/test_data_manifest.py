"""A CSV manifest that lists one file under two spellings counts it once (issue 28, item 6's kind on the
probe side: data counted twice). Real files, the real discovery."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from musicsteer.probes import dataset


def test_one_file_under_several_spellings_is_counted_once(tmp_path) -> None:
    for name in ("a/x.wav", "b/y.wav"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, np.zeros(1600), 16000)
    (tmp_path / "m.csv").write_text("path,label\na/x.wav,a\n./a/x.wav,a\nb/../a/x.wav,b\na/x.wav,a\nb/y.wav,b\n")
    sources, skipped = dataset.discover(tmp_path / "m.csv")
    assert [s.file_id for s in sources] == ["a/x.wav", "b/y.wav"]
    assert skipped == [{"file": f, "reason": f"line {n}: listed twice (the file of line 2)"}
                       for n, f in ((3, "./a/x.wav"), (4, "b/../a/x.wav"), (5, "a/x.wav"))]
