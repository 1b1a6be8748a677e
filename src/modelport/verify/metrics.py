"""Task metrics: judge a conversion on what the model is for, not only elementwise.

``--eval data.npz`` holds the model's inputs plus ``labels``; the metric is top-1 accuracy of the
first output by default, or ``--metric file.py:fn`` for one of your own: ``fn(outputs, labels) ->
float``, where ``outputs`` is the model's outputs by name (numpy arrays) and larger is better.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modelport.errors import BadInputError

__all__ = ["Metric", "TaskMetric", "load_metric", "load_eval", "score", "top1", "evaluate_pair"]

Metric = Callable[[dict[str, np.ndarray], np.ndarray], float]


def top1(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy of the first output's (batch, classes) scores."""
    scores = np.asarray(next(iter(outputs.values())))
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise BadInputError(f"top-1 needs (batch, classes) scores for {labels.shape[0]} labels; the first output has "
                            f"shape {scores.shape} (give --metric file.py:fn for another task)")
    return float(np.mean(scores.argmax(axis=-1) == labels))


def load_metric(spec: str | None) -> tuple[str, Metric]:
    """(name, function) for ``None`` (top-1) or ``path/file.py:fn``."""
    if spec is None:
        return "top-1", top1
    path, _, name = spec.rpartition(":")
    if not path or not name or not path.endswith(".py"):
        raise BadInputError(f"bad --metric {spec!r}: expected path/file.py:function")
    file = Path(path)
    if not file.is_file():
        raise BadInputError("no such metric file", path=file)
    try:
        module_spec = importlib.util.spec_from_file_location(f"modelport_metric_{uuid.uuid4().hex}", file)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001  (the user's file: any error is theirs to see, in one line)
        raise BadInputError(f"cannot load the metric file: {type(exc).__name__}: {exc}"[:300], path=file) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise BadInputError(f"the metric file has no function {name!r}", path=file)
    return name, fn


@dataclasses.dataclass(frozen=True)
class TaskMetric:
    """The metric of the reference (before) and of the model under test (after) on the same labelled data."""

    metric: str
    samples: int
    before: float
    after: float
    max_drop: float | None = None

    @property
    def drop(self) -> float:
        return self.before - self.after

    @property
    def within_budget(self) -> bool | None:
        return None if self.max_drop is None else self.drop <= self.max_drop


def load_eval(eval_data) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """(inputs, labels, where they came from) of ``eval_data`` (.npz path or dict: inputs + ``labels``)."""
    from modelport.inputs import load_npz

    source = str(eval_data) if not isinstance(eval_data, dict) else "eval arrays"
    data = load_npz(eval_data) if not isinstance(eval_data, dict) else dict(eval_data)
    if "labels" not in data:
        raise BadInputError("eval data needs a 'labels' array beside the inputs", path=source)
    return {k: v for k, v in data.items() if k != "labels"}, np.asarray(data["labels"]), source


def score(name: str, fn: Metric, outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """``fn(outputs, labels)`` as a float; a metric that raises is a bad input, named in one line."""
    try:
        return float(fn(outputs, labels))
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001  (a user metric that fails is a bad input, named)
        raise BadInputError(f"the metric {name!r} failed: {type(exc).__name__}: {exc}"[:300]) from None


def evaluate_pair(ra, rb, eval_data, metric: str | None = None, max_drop: float | None = None,
                  rename: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None) -> TaskMetric:
    """The task metric of runner A and runner B on ``eval_data`` (.npz path or dict: A's inputs + labels)."""
    from modelport.inputs import check_feeds

    feeds, labels, source = load_eval(eval_data)
    feeds = check_feeds(feeds, ra.signature.inputs, source)
    name, fn = load_metric(metric)
    before = score(name, fn, ra.run(feeds), labels)
    after = score(name, fn, rb.run(rename(feeds) if rename else feeds), labels)
    return TaskMetric(name, int(labels.shape[0]), before, after, max_drop)
