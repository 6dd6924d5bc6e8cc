"""The probe data pipeline: the header plan, --workers, a file that fails mid-extraction, `hf:` datasets.

Real files, real processes (SIGKILL of the extraction and of one decoding worker), a real `datasets`
dataset saved to disk by the test. The collection: chord / drums / noise clips of 2 s at three sample
rates, cut into 1 s segments, plus one float WAV whose header reads but whose samples are NaN (it
passes the plan and fails only when decoded), placed first so it is met before the first shard.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import cli_error, one_line_error

from musicsteer.engine.audio_io import audio_length, decode_audio, read_audio
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.synthetic import synthetic_clip
from musicsteer.probes.cache import KEYS, ActivationCache, load_activations
from musicsteer.probes.extract import Extractor, extract

KINDS = ("chord", "drums", "noise")
RATES = (32000, 44100, 22050)
CLIPS = 4  # per kind
FLAGS = ["--model", "tiny", "--device", "cpu", "--segment-seconds", "1"]
TOTAL = len(KINDS) * CLIPS * 2 + 2  # + the NaN file's two planned segments


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline") / "clips"
    for kind in KINDS:
        (folder / kind).mkdir(parents=True)
        for i in range(CLIPS):
            rate = RATES[i % len(RATES)]
            sf.write(folder / kind / f"{i:02d}.wav", synthetic_clip(kind, 2.0, rate, i), rate)
    bad = synthetic_clip("chord", 2.0, 32000, 9)
    bad[100] = np.nan  # the header is fine; read_audio refuses the data
    sf.write(folder / "chord" / "00-bad.wav", bad, 32000, subtype="FLOAT")
    return folder


@pytest.fixture(scope="module")
def serial(clips, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline-acts") / "serial"
    extract(str(clips), "tiny", str(out), 1.0, device="cpu")
    return out


def same_cache(a: Path, b: Path) -> None:
    for key in KEYS:
        assert np.array_equal(np.load(a / f"{key}.npy"), np.load(b / f"{key}.npy")), key
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    for field in ("segments", "skipped", "missing", "labels", "dataset", "complete"):
        assert ma[field] == mb[field], field


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 32000, 11025, 96000])
def test_header_length_is_exactly_what_read_audio_returns(rate, tmp_path) -> None:
    rng = np.random.default_rng(rate)
    for frames in (1, 2, 7, 999, 1001, 44101, 96001):
        for channels, fmt in ((1, "WAV"), (2, "FLAC"), (3, "WAV")):
            path = tmp_path / f"{frames}-{channels}.{fmt.lower()}"
            sf.write(path, rng.uniform(-0.5, 0.5, (frames, channels)).astype(np.float32), rate, format=fmt)
            for sample_rate in (32000, 24000):
                expected = read_audio(path, sample_rate, 1 + channels % 2).shape[1]
                assert audio_length(path, sample_rate) == expected, (rate, frames, channels, sample_rate)
                assert audio_length(path.read_bytes(), sample_rate) == expected
    data = io.BytesIO()
    sf.write(data, np.zeros((5, 2), np.float32), rate, format="WAV")
    assert decode_audio(data.getvalue(), 32000, 2).shape == (2, audio_length(data.getvalue(), 32000))


def test_a_file_that_fails_to_decode_is_skipped_and_its_rows_marked_missing(clips, serial, capsys) -> None:
    manifest = json.loads((serial / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["segments"]) == TOTAL
    assert [s["file"] for s in manifest["skipped"]] == ["chord/00-bad.wav"]
    assert "NaN" in manifest["skipped"][0]["reason"]
    bad_rows = [i for i, seg in enumerate(manifest["segments"]) if seg[0] == "chord/00-bad.wav"]
    assert manifest["missing"] == bad_rows == [0, 1]
    acts = load_activations(serial)
    assert acts.x.shape == (TOTAL - 2, 2, 64) and np.isfinite(acts.x).all()
    assert np.unique(acts.x[:, 0], axis=0).shape[0] == TOTAL - 2  # every kept row is a real segment's
    assert acts.labels == list(KINDS) and np.bincount(acts.y).tolist() == [CLIPS * 2] * 3
    capsys.readouterr()
    extract(str(clips), "tiny", str(serial), 1.0, device="cpu")
    assert "already complete" in capsys.readouterr().out


def test_two_workers_write_the_same_cache_as_serial(clips, serial, tmp_path, capsys, monkeypatch) -> None:
    """The model on the CPU, the workers also run EnCodec's encode of each segment: this process encodes
    nothing (the forked workers count their calls in their own memory), and the cache is the serial one."""
    here = []
    encode = Extractor.encode
    monkeypatch.setattr(Extractor, "encode", lambda self, audio: here.append(audio.shape) or encode(self, audio))
    out = tmp_path / "workers"
    extract(str(clips), "tiny", str(out), 1.0, device="cpu", workers=2)
    assert here == []
    same_cache(serial, out)
    err = capsys.readouterr().err
    assert "1 file(s) did not decode" in err and "chord/00-bad.wav" in err


def test_ray_writes_the_same_cache_as_serial(clips, serial, ray_address, capsys) -> None:
    """--ray: the planned batches run by a local Ray cluster's two actors (one per CPU: no GPU here), the
    audio sent as bytes, the shards written by this process: the serial run's cache, bit for bit, the
    file that fails to decode included."""
    out = serial.parent / "ray"
    extract(str(clips), "tiny", str(out), 1.0, device="cpu", ray=ray_address)
    same_cache(serial, out)
    captured = capsys.readouterr()
    assert "starting 2 Ray actor(s), each 1 CPU(s)" in captured.out
    assert "1 file(s) did not decode" in captured.err and "chord/00-bad.wav" in captured.err


def test_killed_ray_extraction_resumes_to_the_serial_cache(clips, serial, ray_address, tmp_path, capsys) -> None:
    """SIGKILL of a --ray driver mid-run: its actors go with it (the rerun gets the cluster's CPUs), the
    shards it wrote stay, and the rerun, on Ray, finishes the serial run's cache."""
    out, log = tmp_path / "acts", tmp_path / "killed.log"
    command = [sys.executable, "-m", "musicsteer", "probe", "extract", "--data", str(clips), "--out", str(out),
               *FLAGS, "--ray", ray_address]
    proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for_shard(proc, out, log)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    cache = ActivationCache(out)
    done = len(cache.done())
    assert not cache.read_manifest()["complete"] and 0 < done < TOTAL - 2
    extract(str(clips), "tiny", str(out), 1.0, device="cpu", ray=ray_address)  # the rerun, from this process
    assert f"{done} segments were already done" in capsys.readouterr().out
    same_cache(serial, out)


def test_ray_refusals_are_one_line_before_any_work(clips, tmp_path) -> None:
    """A dead or malformed address, and a bad --device, are one line before any work; nothing is written."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed
    out = str(tmp_path / "x")
    assert f"no Ray head answers at {dead}" in one_line_error(extract, str(clips), "tiny", out, 1.0, ray=dead)
    assert "is not an address" in one_line_error(extract, str(clips), "tiny", out, 1.0, ray="no-port")
    assert "unknown device 'gpu'" in one_line_error(extract, str(clips), "tiny", out, 1.0, device="gpu", ray="")
    assert not (tmp_path / "x").exists()


class RecordingRay:
    """A stand-in for the `ray` module that records what `cluster.pool` asks of it: the subject here is
    the pool's control flow on Ctrl-C, not Ray (which the --ray tests above run for real)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def cluster_resources(self) -> dict:
        return {"CPU": 2}

    def remote(self, **options):  # ray.remote(**options)(Worker).remote(factory) -> an actor handle
        return lambda cls: type("ActorClass", (), {"remote": staticmethod(lambda factory: object())})

    def kill(self, actor) -> None:
        self.calls.append("kill")

    def shutdown(self) -> None:
        self.calls.append("shutdown")


def test_ctrl_c_inside_a_ray_pool_kills_its_actors_and_stops_ray(monkeypatch, capsys) -> None:
    """cli.entry ends an interrupted run with os._exit, which skips Ray's atexit shutdown: Ctrl-C while the
    pool is open must kill the actors and stop Ray, once. A normal end or an error kills the actors only."""
    from musicsteer import cluster

    for raised, expected in ((None, ["kill", "kill"]), (MusicsteerError("x"), ["kill", "kill"]),
                             (KeyboardInterrupt(), ["kill", "kill", "shutdown"])):
        ray = RecordingRay()
        monkeypatch.setattr(cluster, "connect", lambda address, ray=ray: ray)
        try:
            with cluster.pool(lambda: None) as actors:
                assert len(actors.actors) == 2  # one per CPU
                if raised is not None:
                    raise raised
        except (MusicsteerError, KeyboardInterrupt) as e:
            assert e is raised
        assert ray.calls == expected, raised


def test_a_second_run_into_the_same_cache_is_refused_while_the_first_writes(clips, serial, tmp_path) -> None:
    """Two extractions into one folder at once interleaved shards and finalised rows of zeros: the folder
    is locked while one writes (an flock: freed even when its holder is SIGKILLed), the other is one line."""
    from musicsteer.engine.files import only_writer

    out = tmp_path / "acts"
    extract(str(clips), "tiny", str(out), 1.0, device="cpu")
    (out / "manifest.json").write_text((out / "manifest.json").read_text().replace('"complete": true',
                                                                                 '"complete": false'))
    with only_writer(out, "the activations folder"):  # another writer holds it
        assert "another musicsteer command is writing" in one_line_error(extract, str(clips), "tiny", str(out), 1.0,
                                                                          device="cpu")
    cache = ActivationCache(out)
    with pytest.raises(MusicsteerError, match="lacks 24 of its 26 segments' shards"):
        cache.finalise(cache.read_manifest())  # never a "complete" cache with rows of zeros


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def start(clips: Path, out: Path, workers: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "musicsteer", "probe", "extract", "--data", str(clips), "--out",
                             str(out), *FLAGS, "--workers", workers], stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_shard(proc: subprocess.Popen, out: Path, log: Path) -> None:
    deadline = time.monotonic() + 240
    while not list((out / "shards").glob("shard-*.npz")):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "no shard written"
        time.sleep(0.005)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_killed_extraction_resumes_to_the_serial_cache(workers, clips, serial, tmp_path, capsys) -> None:
    out, log = tmp_path / "acts", tmp_path / "killed.log"
    proc = start(clips, out, workers, log)
    try:
        wait_for_shard(proc, out, log)
        helpers = children(proc.pid)
        assert len(helpers) == int(workers), helpers
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    deadline = time.monotonic() + 30  # orphaned workers notice their parent is gone and exit
    while any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
              for pid in helpers):
        assert time.monotonic() < deadline, "decoding workers outlived the killed extraction"
        time.sleep(0.1)
    cache = ActivationCache(out)
    manifest = cache.read_manifest()
    assert not manifest["complete"] and manifest["missing"] == [0, 1]  # the bad file was met before the kill
    done = len(cache.done())
    assert 0 < done < TOTAL - 2
    capsys.readouterr()
    extract(str(clips), "tiny", str(out), 1.0, device="cpu", workers=int(workers))  # the rerun, in this process
    assert f"{done} segments were already done" in capsys.readouterr().out
    same_cache(serial, out)


def test_a_killed_worker_is_one_line_and_the_run_resumes(clips, serial, tmp_path) -> None:
    out, log = tmp_path / "acts", tmp_path / "worker.log"
    proc = start(clips, out, "2", log)
    try:
        wait_for_shard(proc, out, log)
        os.kill(children(proc.pid)[0], signal.SIGKILL)
        assert proc.wait(timeout=120) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line for line in log.read_text().splitlines() if "musicsteer: error" in line]
    assert len(lines) == 1 and "a decoding worker failed" in lines[0] and "run the same command again" in lines[0]
    if ActivationCache(out).read_manifest()["complete"]:
        pytest.fail("the run finished before its worker was killed")
    extract(str(clips), "tiny", str(out), 1.0, device="cpu", workers=2)  # the rerun, in this process
    same_cache(serial, out)


def test_a_worker_death_reported_during_a_shard_write_is_the_same_one_line(clips, tiny, tmp_path, monkeypatch) -> None:
    """torch reports a dead worker from its SIGCHLD handler wherever the main thread is; while run_batches is
    suspended at a yield that is the shard write, outside run_batches' `with`. Here the report is raised
    from the write (where the signal lands is the one thing simulated): it must be the same one line."""
    from musicsteer.probes import dataset
    from musicsteer.probes.extract import Shard, fill

    def results(batches, plan):
        yield Shard([s.index for s in batches[0]], {})

    def write_shard(self, index, arrays):
        raise RuntimeError("DataLoader worker (pid 12345) is killed by signal: Killed. ")

    monkeypatch.setattr(ActivationCache, "write_shard", write_shard)
    sources, skipped = dataset.discover(clips)
    message = one_line_error(fill, tiny.facts, str(clips), str(tmp_path / "acts"), sources, skipped, 1.0, "", 4,
                             results)
    assert message.startswith("a decoding worker failed (DataLoader worker (pid 12345) is killed") and \
        "run the same command again to resume" in message


def save_dataset(clips: Path, folder: Path, label_feature: str) -> None:
    """The clips, in the folder's discovery order, as a DatasetDict saved to disk: audio as encoded bytes
    (Audio(decode=False): no torchcodec needed to build it), labels as ClassLabel or plain strings."""
    from datasets import Audio, ClassLabel, Dataset, DatasetDict

    files = [p for kind in KINDS for p in sorted((clips / kind).iterdir())]
    rows = {"audio": [{"bytes": p.read_bytes(), "path": p.name} for p in files],
            "genre": [p.parent.name for p in files], "row_note": ["x"] * len(files)}
    ds = Dataset.from_dict(rows).cast_column("audio", Audio(decode=False))
    if label_feature == "classlabel":
        ds = ds.cast_column("genre", ClassLabel(names=list(KINDS)))
    DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(str(folder))


@pytest.mark.parametrize(("label_feature", "workers"), [("classlabel", 0), ("string", 2)])
def test_a_saved_datasets_dataset_gives_the_folders_activations(label_feature, workers, clips, serial, tmp_path,
                                                                capsys) -> None:
    folder = tmp_path / "ds"
    save_dataset(clips, folder, label_feature)
    out = tmp_path / "acts"
    column = [] if label_feature == "classlabel" else ["--label-column", "genre"]
    from musicsteer.cli import main

    assert main(["probe", "extract", "--data", f"hf:{folder}:train", "--out", str(out), *FLAGS,
                 "--workers", str(workers), *column]) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["segments"][0][0] == "train/0/00-bad.wav" and manifest["missing"] == [0, 1]
    for key in KEYS:  # the same audio in the same order: the same rows as the folder's
        assert np.array_equal(np.load(out / f"{key}.npy"), np.load(serial / f"{key}.npy")), key
    capsys.readouterr()
    assert main(["probe", "extract", "--data", f"hf:{folder}:train", "--out", str(out), *FLAGS, *column]) == 0
    assert "already complete" in capsys.readouterr().out


def test_dataset_input_errors_are_one_line(clips, tmp_path, capsys) -> None:
    folder = tmp_path / "ds"
    save_dataset(clips, folder, "string")
    out = str(tmp_path / "acts")
    for data, extra, expected in [
        (f"hf:{folder}", [], "has the splits train, test; name one"),
        (f"hf:{folder}:valid", [], "has no split 'valid'"),
        (f"hf:{folder}:train", [], "cannot tell the label column"),
        (f"hf:{folder}:train", ["--label-column", "mood"], "--label-column 'mood' is not a column"),
        (f"hf:{tmp_path}/none", [], "cannot load dataset"),
        (str(clips), ["--label-column", "genre"], "needs --data hf:PATH"),
    ]:
        assert expected in cli_error(["probe", "extract", "--data", data, "--out", out, *FLAGS, *extra], capsys)


def test_without_the_datasets_library_hf_input_is_one_line(tmp_path) -> None:
    # The one thing mocked: `datasets` absent (it is installed here), as an ImportError from its import.
    hook = ("import sys; sys.modules['datasets'] = None; from musicsteer.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", hook, "probe", "extract", "--data", f"hf:{tmp_path}", "--out",
                             str(tmp_path / "acts"), "--model", "tiny"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "musicsteer: error: --data hf:... needs the `datasets` library: pip install 'musicsteer[datasets]'"]
