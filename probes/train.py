"""`probe train`: one linear probe per layer, each on THAT layer's activations; export directions.

Methods (all see L2-normalised activations, so loud segments do not dominate and the three are
comparable; a direction's scale is irrelevant to steering, which uses unit vectors):
  mse      the paper's probe: bias-free Linear(d, C) fitted by mean squared error onto ONE-HOT
           labels (one output per class, never a scalar class index). Solved in closed form as
           ridge least squares (RIDGE below), which is deterministic: no learning rate, no epochs,
           the same numbers on every machine. Direction of class c = column c of the weights.
  logistic multinomial logistic regression (sklearn, lbfgs); direction of class c = its coef row.
  diffmean the mean of class c minus the mean of all other segments; classified by projecting
           onto each direction about the midpoint of the two means.
The held-out split is stratified and seeded; accuracy is the argmax over classes on it; the best
layer is the first layer with the highest held-out accuracy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicsteer.engine.errors import MusicsteerError, shown
from musicsteer.engine.files import writable_file
from musicsteer.engine.vectors import SteeringVectors, check_label

from .cache import Activations, load_activations
from .settings import LAYER, METHODS, SEED, TEST_FRACTION, check_layer, layer_value

# Ridge strength, relative to the spread of the segments about their mean (not to X^T X itself):
# normalised residual-stream segments all point nearly one way (the tiny model: the shared mean is
# 100x the segments' RMS distance from it), so a penalty scaled to X^T X would flatten every
# direction that tells the labels apart, while the shared direction, which the bias-free probe uses
# as its bias, stays nearly free. Measured on the tiny model's 3-kind test set (tiny recipe 3, held-out
# accuracy, mean of 20 split seeds): RIDGE 1e-2 -> 0.94, 0.1 -> 0.96, 1 -> 0.98, 10 -> 0.80.
RIDGE = 1.0


@dataclass
class LayerProbe:
    directions: np.ndarray  # (C, d): one direction per class, not normalised
    accuracy: float  # held-out


@dataclass
class TrainResult:
    labels: list[str]
    directions: np.ndarray  # (C, layers, d)
    accuracy: list[float]
    best_layer: int
    method: str


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows to unit length (the paper's probe input); an all-zero row stays zero."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def one_hot(y: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((len(y), classes))
    out[np.arange(len(y)), y] = 1.0
    return out


def split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, test) row indices, the same for every layer and for analyze."""
    from sklearn.model_selection import train_test_split

    TEST_FRACTION.check(test_fraction)
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        raise MusicsteerError(f"every label needs at least 2 segments for a held-out split; "
                              f"one has {counts.min()}")
    n_test = max(len(classes), int(np.ceil(test_fraction * len(y))))
    if len(y) - n_test < len(classes):
        raise MusicsteerError(f"{len(y)} segments are too few for {len(classes)} labels and test fraction "
                              f"{test_fraction}")
    rows = np.arange(len(y))
    train, test = train_test_split(rows, test_size=n_test, stratify=y, random_state=seed)
    return np.sort(train), np.sort(test)


def spread(x: np.ndarray) -> float:
    """RMS per dimension of the rows about their mean (> 0 unless all rows are equal)."""
    return float(np.sqrt(np.mean((x - x.mean(axis=0)) ** 2))) or 1.0


def fit_mse(x: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    """Bias-free ridge least squares onto one-hot targets; (C, d) weights."""
    x = x.astype(np.float64)
    targets = one_hot(y, classes)
    n, d = x.shape
    lam = RIDGE * spread(x) ** 2 * n  # RIDGE x the mean eigenvalue of the centred X^T X
    if n >= d:  # primal: (X^T X + lam I) W = X^T Y
        w = np.linalg.solve(x.T @ x + lam * np.eye(d), x.T @ targets)
    else:  # dual, same solution: W = X^T (X X^T + lam I)^-1 Y, cheaper with fewer rows than dims
        w = x.T @ np.linalg.solve(x @ x.T + lam * np.eye(n), targets)
    return w.T


def fit_logistic(x: np.ndarray, y: np.ndarray, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    # Scaled by one scalar so sklearn's default penalty (C=1) means the same at every layer and
    # model size; a scalar scale and the (fitted) intercept leave the coef directions unchanged.
    centre, scale = x.mean(axis=0), spread(x)
    model = LogisticRegression(max_iter=2000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the direction is usable anyway
        model.fit((x - centre) / scale, y)
    coef = model.coef_ / scale
    bias = model.intercept_ - coef @ centre
    if classes == 2:  # sklearn keeps one row for two classes: class 1 against class 0
        coef, bias = np.vstack([-coef, coef]) / 2, np.array([-bias[0], bias[0]]) / 2
    return coef, bias


def fit_diffmean(x: np.ndarray, y: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    dirs, bias = [], []
    for c in range(classes):
        inside, outside = x[y == c].mean(axis=0), x[y != c].mean(axis=0)
        direction = inside - outside
        dirs.append(direction)
        bias.append(-float(direction @ (inside + outside)) / 2)  # zero score at the midpoint
    return np.stack(dirs), np.asarray(bias)


def train_layer(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, classes: int,
                method: str, seed: int = 0) -> LayerProbe:
    """Fit one probe on ONE layer's activations x (N, d) and score it on the held-out rows."""
    x = normalise(x)
    if method == "mse":
        w, b = fit_mse(x[train], y[train], classes), np.zeros(classes)
    elif method == "logistic":
        w, b = fit_logistic(x[train], y[train], classes, seed)
    elif method == "diffmean":
        w, b = fit_diffmean(x[train], y[train], classes)
    else:
        raise MusicsteerError(f"unknown method {shown(method)}; expected one of {', '.join(METHODS)}")
    predicted = np.argmax(x[test] @ w.T + b, axis=1)
    return LayerProbe(w, float(np.mean(predicted == y[test])))


def train_all(acts: Activations, method: str = "mse", seed: int = 0, test_fraction: float = 0.15) -> TrainResult:
    """A probe per layer, each trained on acts.x[:, layer] only; the best layer by held-out accuracy."""
    train, test = split(acts.y, test_fraction, seed)
    classes = len(acts.labels)
    probes = [train_layer(acts.x[:, layer], acts.y, train, test, classes, method, seed)
              for layer in range(acts.num_layers)]
    accuracy = [p.accuracy for p in probes]
    directions = np.stack([p.directions for p in probes], axis=1)  # (C, layers, d)
    return TrainResult(acts.labels, directions, accuracy, int(np.argmax(accuracy)), method)


def export(result: TrainResult, acts: Activations, out: str | Path, site: str, layer: int | None = None) -> Path:
    """Write the vectors file: label -> (layers, d) with row i = that label's direction at layer i."""
    best = result.best_layer if layer is None else layer
    check_layer(best, acts.num_layers)
    zero = [(label, i) for c, label in enumerate(result.labels)
            for i in range(acts.num_layers) if not np.any(result.directions[c, i])]
    if zero:
        raise MusicsteerError(f"the {result.method} probe found no direction for {zero[0][0]!r} at layer "
                              f"{zero[0][1]} (identical activations?)")
    vectors = SteeringVectors.create(
        {label: result.directions[c] for c, label in enumerate(result.labels)},
        model=acts.manifest["model_name"], site=site, method=result.method, best_layer=best,
        accuracy=result.accuracy, dataset=acts.manifest["dataset"])
    return vectors.save(out)


def train(acts_dir: str, out: str, method: str = "mse", layer: int | str = LAYER.default, site: str = "residual",
          pool: str = "mean", seed: int = SEED.default, test_fraction: float = TEST_FRACTION.default
          ) -> tuple[TrainResult, Path]:
    """Every value, the vectors file's path and the layer against the activations are checked before
    the first probe trains: a typo never costs the training."""
    if method not in METHODS:
        raise MusicsteerError(f"unknown method {shown(method)}; expected one of {', '.join(METHODS)}")
    layer = layer_value(layer)
    SEED.check(seed)
    TEST_FRACTION.check(test_fraction)
    writable_file(out, "vectors file")
    acts = load_activations(acts_dir, site, pool)
    for label in acts.labels:  # (a cache extracted before the rule): a vector every surface can select
        try:
            check_label(label, "a label")
        except MusicsteerError as e:
            raise type(e)(f"{acts_dir}: {e}; it would be a vector's name: extract again from renamed data") from None
    check_layer(layer, acts.num_layers)
    result = train_all(acts, method, seed, test_fraction)
    path = export(result, acts, out, site, None if layer == "best" else layer)
    return result, path
