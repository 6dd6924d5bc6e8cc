"""`probe analyze`: where in the decoder are the labels represented? (the paper's section III)

Per layer: k-means with k = the number of labels (sklearn, fixed seed, n_init=10) scored against
the labels by ARI and NMI, and the held-out accuracy of the train module's probe on the same
split `probe train` uses. At the layer with the highest ARI, the Jaccard similarity of every
cluster with every label. Clustering sees the same L2-normalised activations as the probes (k-means
is blind to the component all segments share, so only the normalisation matters).

Output (REPORT_DIR): report.json (everything), layers.csv (one row per layer), layers.png (the three
curves), jaccard.png (the matrix; clusters ordered to match labels where they can).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from musicsteer.engine.errors import MusicsteerError, shown
from musicsteer.engine.files import writable_folder

from . import plots
from .cache import Activations, load_activations
from .settings import SEED, TEST_FRACTION
from .train import METHODS, normalise, split, train_layer


def jaccard(clusters: np.ndarray, y: np.ndarray, k: int, classes: int) -> np.ndarray:
    """(k, classes): |cluster i AND label j| / |cluster i OR label j|."""
    out = np.zeros((k, classes))
    for i in range(k):
        for j in range(classes):
            a, b = clusters == i, y == j
            union = np.sum(a | b)
            out[i, j] = np.sum(a & b) / union if union else 0.0
    return out


def match_clusters(matrix: np.ndarray) -> list[int]:
    """Cluster order that puts each cluster beside the label it overlaps most (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-matrix)
    order = [int(r) for _, r in sorted(zip(cols, rows, strict=True))]
    return order + [r for r in range(matrix.shape[0]) if r not in order]


def layer_scores(acts: Activations, seed: int, test_fraction: float, method: str) -> dict[str, list]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    classes = len(acts.labels)
    train, test = split(acts.y, test_fraction, seed)
    scores: dict[str, list] = {"ari": [], "nmi": [], "accuracy": [], "clusters": []}
    for layer in range(acts.num_layers):
        x = normalise(acts.x[:, layer].astype(np.float64))
        found = KMeans(n_clusters=classes, n_init=10, random_state=seed).fit_predict(x)
        scores["ari"].append(float(adjusted_rand_score(acts.y, found)))
        scores["nmi"].append(float(normalized_mutual_info_score(acts.y, found)))
        scores["accuracy"].append(train_layer(acts.x[:, layer], acts.y, train, test, classes, method, seed).accuracy)
        scores["clusters"].append(found)
    return scores


def analyze(acts_dir: str, out: str, site: str = "residual", pool: str = "mean", seed: int = SEED.default,
            test_fraction: float = TEST_FRACTION.default, method: str = "mse") -> dict:
    if method not in METHODS:
        raise MusicsteerError(f"unknown method {shown(method)}; expected one of {', '.join(METHODS)}")
    SEED.check(seed)
    TEST_FRACTION.check(test_fraction)
    writable_folder(out, "--out", make=True)  # before the clustering: a report that cannot be written is said now
    acts = load_activations(acts_dir, site, pool)
    report_dir = Path(out).expanduser()
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MusicsteerError(f"cannot create {shown(str(report_dir))}: {e.strerror or e}") from None
    if len(acts.y) <= len(acts.labels):
        raise MusicsteerError(f"{len(acts.y)} segments are too few to cluster into {len(acts.labels)} labels")
    scores = layer_scores(acts, seed, test_fraction, method)
    classes = len(acts.labels)
    best = int(np.argmax(scores["ari"]))
    matrix = jaccard(scores["clusters"][best], acts.y, classes, classes)
    order = match_clusters(matrix)
    matrix = matrix[order]
    cluster_names = [f"cluster {i}" for i in order]
    manifest = acts.manifest
    report = {
        "model": manifest["model_name"], "model_fingerprint": manifest["settings"]["model"],
        "dataset": manifest["dataset"], "site": site, "pool": pool, "seed": seed, "test_fraction": test_fraction,
        "probe_method": method, "labels": acts.labels, "segments": len(acts.y),
        "counts": {label: int(np.sum(acts.y == c)) for c, label in enumerate(acts.labels)},
        "layers": [{"layer": i, "ari": scores["ari"][i], "nmi": scores["nmi"][i],
                    "probe_accuracy": scores["accuracy"][i]} for i in range(acts.num_layers)],
        "best_layer_ari": best, "best_layer_probe": int(np.argmax(scores["accuracy"])),
        "jaccard": {"layer": best, "clusters": cluster_names, "labels": acts.labels, "matrix": matrix.tolist()},
    }
    try:
        (report_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        with (report_dir / "layers.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["layer", "ari", "nmi", "probe_accuracy"])
            for row in report["layers"]:
                writer.writerow([row["layer"], f"{row['ari']:.6f}", f"{row['nmi']:.6f}",
                                 f"{row['probe_accuracy']:.6f}"])
        what = f"{manifest['model_name']} {site}/{pool}, {len(acts.y)} segments"
        plots.plot_layers(scores["ari"], scores["nmi"], scores["accuracy"], 1.0 / classes,
                          report_dir / "layers.png", what)
        plots.plot_jaccard(matrix, cluster_names, acts.labels, report_dir / "jaccard.png",
                           f"layer {best} (highest ARI {scores['ari'][best]:.2f})")
    except OSError as e:
        raise MusicsteerError(f"cannot write the report into {report_dir}: {e.strerror or e}") from None
    return report
