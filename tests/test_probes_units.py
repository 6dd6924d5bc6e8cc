"""Probe pieces in process: per-layer training, one-hot targets, splits, data discovery, the cache.

The CLI pipeline end to end (extract -> analyze/train -> render) is in test_probes.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from musicsteer.engine.codec import encode_audio
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.synthetic import synthetic_clip
from musicsteer.engine.vectors import SteeringVectors
from musicsteer.probes import dataset, train
from musicsteer.probes.analyze import jaccard, match_clusters
from musicsteer.probes.cache import ActivationCache, Activations


def blobs(classes: int, layers: int, d: int, per_class: int, signal_layers: set[int], seed: int = 0) -> Activations:
    """Activations where only `signal_layers` tell the classes apart (class means differ there);
    every row shares a large common offset, as a residual stream does."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    x = rng.normal(size=(len(y), layers, d)) + 20.0
    for layer in signal_layers:
        means = rng.normal(size=(classes, d)) * 1.5
        x[:, layer] += means[y]
    manifest = {"model_name": "test", "dataset": "sha256:test"}
    return Activations(x.astype(np.float32), y, [f"c{i}" for i in range(classes)], manifest)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_tiny_encodec_gives_different_audio_different_codes(tiny) -> None:
    # DESIGN §4: an unseeded random EnCodec maps every frame to one code, which would make every
    # probe test meaningless. Assert the tiny model's codec is not that.
    mixed = np.concatenate([synthetic_clip(kind, 1.0, tiny.sample_rate, 3) for kind in ("chord", "drums", "noise")])
    codes = encode_audio(tiny, mixed[None])[0]
    distinct = [len(torch.unique(codes[k])) for k in range(codes.shape[0])]
    assert min(distinct) > 30, distinct


@pytest.mark.parametrize("method", train.METHODS)
def test_each_layer_probe_is_trained_on_that_layers_activations(method) -> None:
    acts = blobs(classes=3, layers=4, d=16, per_class=40, signal_layers={2})
    result = train.train_all(acts, method)
    assert result.accuracy[2] == 1.0
    assert max(result.accuracy[i] for i in (0, 1, 3)) < 0.75  # noise layers: near chance (1/3)
    assert result.best_layer == 2
    # Scrambling layer 0 across segments changes layer 0's probe and nothing else, bit for bit
    # (the authors' code applied the probe of layer 17 at layer 19).
    scrambled = Activations(acts.x.copy(), acts.y, acts.labels, acts.manifest)
    scrambled.x[:, 0] = scrambled.x[np.random.default_rng(1).permutation(len(acts.y)), 0]
    again = train.train_all(scrambled, method)
    assert not np.allclose(again.directions[:, 0], result.directions[:, 0])
    assert np.array_equal(again.directions[:, 1:], result.directions[:, 1:])
    assert again.accuracy[1:] == result.accuracy[1:]


def test_mse_probe_regresses_onto_one_hot_targets_one_direction_per_class() -> None:
    # The authors' 4-class MSE path regressed onto a scalar class index: one output, one direction.
    acts = blobs(classes=4, layers=2, d=24, per_class=30, signal_layers={0, 1})
    result = train.train_all(acts, "mse")
    assert result.directions.shape == (4, 2, 24)
    for layer in range(2):
        rows = result.directions[:, layer]
        for a in range(4):
            for b in range(a + 1, 4):
                assert abs(cosine(rows[a], rows[b])) < 0.9, (layer, a, b)
    assert min(result.accuracy) == 1.0
    # the targets are one-hot: each probe output scores its own class highest on that class's mean
    x = train.normalise(acts.x[:, 0].astype(np.float64))
    w = train.fit_mse(x, acts.y, 4)
    scores = np.stack([x[acts.y == c].mean(axis=0) for c in range(4)]) @ w.T
    assert np.array_equal(np.argmax(scores, axis=1), np.arange(4))
    assert np.allclose(np.diag(scores), 1.0, atol=0.35)


def test_train_output_is_deterministic_and_binary_logistic_has_two_directions() -> None:
    acts = blobs(classes=2, layers=2, d=8, per_class=20, signal_layers={1})
    for method in train.METHODS:
        a, b = train.train_all(acts, method, seed=3), train.train_all(acts, method, seed=3)
        assert np.array_equal(a.directions, b.directions) and a.accuracy == b.accuracy
        assert a.directions.shape == (2, 2, 8)
        assert cosine(a.directions[0, 1], a.directions[1, 1]) < 0  # two classes pull apart


def test_export_rows_are_each_layers_directions(tmp_path) -> None:
    acts = blobs(classes=3, layers=3, d=12, per_class=20, signal_layers={0, 1, 2})
    result = train.train_all(acts, "logistic")
    path = train.export(result, acts, tmp_path / "v.safetensors", "attention", layer=1)
    vectors = SteeringVectors.load(path)
    assert vectors.labels == acts.labels and vectors.best_layer == 1 and vectors.site == "attention"
    assert vectors.method == "logistic" and vectors.dataset == "sha256:test" and vectors.model == "test"
    assert vectors.accuracy == pytest.approx(result.accuracy)
    for c, label in enumerate(acts.labels):
        for layer in range(3):
            assert cosine(vectors.directions[label][layer].numpy(), result.directions[c, layer]) > 0.9999
    with pytest.raises(MusicsteerError, match="out of range"):
        train.export(result, acts, tmp_path / "w.safetensors", "residual", layer=3)


def test_split_is_stratified_and_refuses_too_few_segments() -> None:
    y = np.repeat(np.arange(3), [10, 20, 30])
    trn, test = train.split(y, 0.15, 0)
    assert len(set(trn) | set(test)) == 60 and not set(trn) & set(test)
    counts = np.bincount(y[test], minlength=3)
    assert counts.sum() == 9 and np.all(np.abs(counts - 0.15 * np.array([10, 20, 30])) <= 1)  # stratified
    assert np.array_equal(train.split(y, 0.15, 0)[1], test)
    with pytest.raises(MusicsteerError, match="at least 2 segments"):
        train.split(np.array([0, 0, 1]), 0.3, 0)
    with pytest.raises(MusicsteerError, match="test-fraction"):
        train.split(y, 1.5, 0)


def test_segments_drop_a_last_piece_shorter_than_half() -> None:
    assert dataset.segment_bounds(1000, 400) == [(0, 400), (400, 400), (800, 200)]
    assert dataset.segment_bounds(999, 400) == [(0, 400), (400, 400)]
    assert dataset.segment_bounds(100, 400) == []


def test_discovery_of_folders_and_csv(tmp_path) -> None:
    wave = np.zeros(1600, dtype=np.float32)
    for label in ("b", "a"):
        (tmp_path / "set" / label / "sub").mkdir(parents=True)
        sf.write(tmp_path / "set" / label / "sub" / "x.wav", wave, 16000)
    (tmp_path / "set" / "README.txt").write_text("not a label")
    sources, skipped = dataset.discover(tmp_path / "set")
    assert [(s.file_id, s.label) for s in sources] == [("a/sub/x.wav", "a"), ("b/sub/x.wav", "b")]
    assert skipped == []
    (tmp_path / "list.csv").write_text("label,path\nA,set/a/sub/x.wav\nB,set/gone.wav\n,set/b/sub/x.wav\n")
    sources, skipped = dataset.discover(tmp_path / "list.csv")
    assert [(s.file_id, s.label) for s in sources] == [("set/a/sub/x.wav", "A")]
    assert [s["file"] for s in skipped] == ["set/gone.wav", "set/b/sub/x.wav"]
    (tmp_path / "bad.csv").write_text("file,genre\nx.wav,a\n")
    with pytest.raises(MusicsteerError, match="path,label"):
        dataset.discover(tmp_path / "bad.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MusicsteerError, match="no audio files"):
        dataset.discover(tmp_path / "empty")


def test_cache_refuses_other_settings_and_other_data(tmp_path) -> None:
    settings = {"model": "tiny:1", "segment_seconds": 2.0, "prompt": "", "dtype": "float32"}
    manifest = {"format": "musicsteer.activations/1", "settings": settings, "dataset": "sha256:a"}
    cache = ActivationCache(tmp_path / "acts")
    assert cache.open_for(manifest) == manifest
    assert cache.open_for(dict(manifest)) == manifest  # same run again: resume
    for key, value in (("model", "tiny:2"), ("segment_seconds", 1.0), ("prompt", "rock")):
        with pytest.raises(MusicsteerError, match=f"made with {key} .*use another --out"):
            cache.open_for(dict(manifest, settings=dict(settings, **{key: value})))
    with pytest.raises(MusicsteerError, match="other data"):
        cache.open_for(dict(manifest, dataset="sha256:b"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(MusicsteerError, match="not empty"):
        ActivationCache(tmp_path / "other").open_for(manifest)


def test_jaccard_matrix_and_cluster_matching() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([2, 2, 0, 0, 1, 1])
    matrix = jaccard(clusters, y, 3, 3)
    assert matrix[2, 0] == 1.0 and matrix[0, 0] == 0.0
    order = match_clusters(matrix)
    assert order == [2, 0, 1] and np.array_equal(matrix[order], np.eye(3))


def test_extractor_pools_the_conditional_rows_and_padding_changes_nothing(tiny) -> None:
    from musicsteer.engine import decoder as decoder_fn
    from musicsteer.engine.kv_cache import KVCache
    from musicsteer.engine.steering import SteeringTensors
    from musicsteer.probes.extract import Extractor

    long, short = synthetic_clip("chord", 1.0, 32000, 1)[None], synthetic_clip("drums", 0.6, 32000, 2)[None]
    plain, prompted = Extractor(tiny, ""), Extractor(tiny, "rock drums")
    alone = prompted.run([prompted.encode(short)])
    batched = prompted.run([prompted.encode(long), prompted.encode(short)])
    for key in alone:  # the short segment, padded at the end inside a batch, pools to the same values
        np.testing.assert_allclose(batched[key][1], alone[key][0], rtol=1e-4, atol=1e-5)
    # by hand with the engine's own capture dict: the conditional row (0) of the CFG batch, mean
    # over positions 1.. and the last position
    dec = prompted.dec
    tokens = prompted.layout(encode_audio(tiny, short))[None]
    steps = tokens.shape[-1]
    cache = KVCache(dec.num_layers, 2, dec.num_heads, steps, dec.head_dim, tiny.dtype, tiny.device)
    dec.fill_cross_attention(cache, prompted.text_states, prompted.text_mask)
    capture: dict = {}
    decoder_fn.forward(dec, tokens.repeat(2, 1, 1), torch.arange(steps), cache,
                       SteeringTensors(dec.num_layers, dec.d_model, 1, tiny.device), steps, capture)
    for layer in range(dec.num_layers):
        h = capture[f"attention.{layer}"][0]
        np.testing.assert_allclose(alone["attention.mean"][0, layer], h[1:].mean(0).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(alone["attention.last"][0, layer], h[-1].numpy(), rtol=1e-4, atol=1e-5)
    # the text reaches the residual stream only through layer 0's cross-attention
    no_text = plain.run([plain.encode(short)])
    np.testing.assert_array_equal(no_text["residual.mean"][:, 0], alone["residual.mean"][:, 0])
    assert not np.allclose(no_text["residual.mean"][:, 1], alone["residual.mean"][:, 1])


def test_remove_partial_deletes_what_a_killed_atomic_write_left_and_nothing_else(tmp_path) -> None:
    """A SIGKILL between atomic_write's write and its rename leaves its hidden temporary; the cache and the
    eval clips clear them (files.remove_partial, which shares atomic_write's mark) and keep every whole file."""
    from musicsteer.engine.files import atomic_write, remove_partial

    (tmp_path / "shards").mkdir()
    atomic_write(tmp_path / "shards" / "shard-0000000.npz", lambda p: p.write_bytes(b"whole"))
    for left in (tmp_path / ".a.0123abcd.tmp.npy", tmp_path / "shards" / ".shard-0000004.89ab.tmp.npz",
                 tmp_path / ".c.0123.tmp.wav"):  # the names atomic_write gives its temporaries
        left.write_bytes(b"half")
    assert remove_partial(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["shard-0000000.npz"]
