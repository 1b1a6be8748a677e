"""The ``ai.onnx.ml`` ops that skl2onnx and onnxmltools write, as tensor code.

Tree ensembles (``TreeEnsembleClassifier`` / ``TreeEnsembleRegressor``) are evaluated by
traversal, all trees and rows at once: the nodes of every tree are laid out in flat arrays
(``feature``, ``threshold``, ``true`` / ``false`` child, a leaf points at itself) and a
``[batch, trees]`` index tensor starts at the roots; each of ``depth`` steps moves every index
one level down::

    v   = gather(x, 1, feature[idx])                 # the feature each current node tests
    go  = v <= threshold[idx]                        # (BRANCH_LT: <, BRANCH_GTE: >=, ...)
    go |= isnan(v) & missing_tracks_true[idx]        # where the model sends missing values left
    idx = where(go, true_child[idx], false_child[idx])

(every lookup is one 1-D ``index_select``, i.e. an ONNX ``Gather``, so the module re-exports to
graphs onnx2tf and OpenVINO take), then ``scores = leaf_values[idx].sum(1)`` (``leaf_values``: ``[nodes, classes]``, zero off the
leaves) plus ``base_values``, and the post transform. The label and the two-column score of a
single-score binary classifier follow onnxruntime's rules (``tree_ensemble_aggregator.h``,
``ml_common.h``): with all leaf weights >= 0 the label is positive when the score is > 0.5 and
the scores are ``[1 - s, s]``; with mixed weights positive when > 0, and ``LOGISTIC`` gives
``[sigmoid(-s), sigmoid(s)]``.

``LinearClassifier`` / ``LinearRegressor`` are ``x @ W.T + b``; ``Scaler`` is
``(x - offset) * scale``; ``Normalizer`` divides each row by its max / L1 / L2 norm;
``ArrayFeatureExtractor`` gathers on the last axis; ``Binarizer`` is ``x > threshold``. Each is
checked against onnxruntime in tests/test_sklearn.py on models trained there. ``ZipMap`` (a
sequence of maps) and ``SVMClassifier``/``SVMRegressor`` are not lowered: convert with
``zipmap=False`` (modelport does) and SVMs stay on onnxruntime.
"""

from __future__ import annotations

import numpy as np

from modelport.to_torch.codegen import Node, NotConvertible, lit
from modelport.to_torch.registry import register

ML = "ai.onnx.ml"

_COMPARE = {"BRANCH_LEQ": "<=", "BRANCH_LT": "<", "BRANCH_GTE": ">=", "BRANCH_GT": ">", "BRANCH_EQ": "==",
            "BRANCH_NEQ": "!="}


def _floats(n: Node, name: str) -> np.ndarray | None:
    """A float list attribute, or its ``*_as_tensor`` form (ai.onnx.ml 3), as an array."""
    v = n.attr(name)
    if v is None:
        v = n.attr(f"{name}_as_tensor")
    return None if v is None else np.asarray(v).reshape(-1)


def _buffer(n: Node, hint: str, arr: np.ndarray) -> str:
    return n.ms.tensor(hint, np.ascontiguousarray(arr), False)


def _float32_thresholds(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """float32 thresholds that compare float32 inputs exactly as the float64 ones do.

    For a float32 ``x``: ``x <= t`` iff ``x <= down(t)`` and ``x > t`` iff ``x > down(t)``
    (``down``: the largest float32 <= t); ``x < t`` and ``x >= t`` use ``up(t)``; ``x == t`` can
    hold only if ``t`` is a float32, else the threshold becomes NaN (never equal, always unequal).
    So the graph needs no float64 (which TFLite lacks) and decides every row as onnxruntime does.
    """
    t = np.asarray(values, np.float64)
    near = t.astype(np.float32)
    down = np.where(near.astype(np.float64) > t, np.nextafter(near, np.float32(-np.inf)), near)
    up = np.where(near.astype(np.float64) < t, np.nextafter(near, np.float32(np.inf)), near)
    exact = np.where(near.astype(np.float64) == t, near, np.float32(np.nan))
    pick = {"BRANCH_LEQ": down, "BRANCH_GT": down, "BRANCH_LT": up, "BRANCH_GTE": up, "BRANCH_EQ": exact,
            "BRANCH_NEQ": exact}
    return np.asarray([pick[m][k] if m in pick else near[k] for k, m in enumerate(modes)], np.float32)


class _Forest:
    """The flat node arrays of a tree ensemble, with the leaf weights per output column."""

    def __init__(self, n: Node, prefix: str, columns: int) -> None:
        trees = [int(t) for t in n.attr("nodes_treeids") or []]
        ids = [int(i) for i in n.attr("nodes_nodeids") or []]
        if not trees or len(ids) != len(trees):
            raise n.fail("tree ensemble without nodes_treeids / nodes_nodeids of one length")
        modes = list(n.attr("nodes_modes") or [])
        feats = [int(f) for f in n.attr("nodes_featureids") or []]
        values = _floats(n, "nodes_values")
        true_ids = [int(i) for i in n.attr("nodes_truenodeids") or []]
        false_ids = [int(i) for i in n.attr("nodes_falsenodeids") or []]
        missing = [int(m) for m in n.attr("nodes_missing_value_tracks_true") or []]
        count = len(trees)
        if values is None or any(len(a) != count for a in (modes, feats, values, true_ids, false_ids)) or \
                (missing and len(missing) != count):
            raise n.fail("tree ensemble node attributes of different lengths")
        bad = sorted({m for m in modes if m != "LEAF" and m not in _COMPARE})
        if bad:
            raise n.fail(f"tree node mode(s) {', '.join(bad)}")
        index = {(t, i): k for k, (t, i) in enumerate(zip(trees, ids))}
        if len(index) != count:
            raise n.fail("tree ensemble with duplicate (tree, node) ids")
        left = np.arange(count, dtype=np.int64)
        right = np.arange(count, dtype=np.int64)
        children: set[int] = set()
        for k, mode in enumerate(modes):
            if mode == "LEAF":
                continue
            try:
                left[k], right[k] = index[(trees[k], true_ids[k])], index[(trees[k], false_ids[k])]
            except KeyError:
                raise n.fail(f"tree {trees[k]} node {ids[k]} points at a node that does not exist") from None
            children.update((int(left[k]), int(right[k])))
        roots = [k for k in range(count) if k not in children]
        self.tree_ids = sorted(set(trees))
        if sorted(trees[k] for k in roots) != self.tree_ids:
            raise n.fail("tree ensemble whose trees do not each have one root")
        self.depth = self._depth(roots, left, right, modes)
        self.count, self.roots, self.left, self.right = count, np.asarray(roots, np.int64), left, right
        self.features = np.asarray([f if m != "LEAF" else 0 for f, m in zip(feats, modes)], np.int64)
        if values.dtype == np.float64 and n.dtype(0) == 1:  # float32 rows: thresholds made float32, exactly
            self.thresholds = _float32_thresholds(values, modes)
        else:
            self.thresholds = np.asarray(values, np.float64 if values.dtype == np.float64 else np.float32)
        inner = {m for m in modes if m != "LEAF"}
        self.modes = modes
        self.mode = inner.pop() if len(inner) == 1 else (None if inner else "BRANCH_LEQ")
        self.missing = np.asarray(missing, bool) if missing and any(missing) else None
        w_trees = [int(t) for t in n.attr(f"{prefix}_treeids") or []]
        w_nodes = [int(i) for i in n.attr(f"{prefix}_nodeids") or []]
        w_cols = [int(c) for c in n.attr(f"{prefix}_ids") or []]
        weights = _floats(n, f"{prefix}_weights")
        if weights is None or not (len(w_trees) == len(w_nodes) == len(w_cols) == len(weights)):
            raise n.fail(f"tree ensemble {prefix}_* attributes of different lengths")
        if w_cols and (min(w_cols) < 0 or max(w_cols) >= columns):
            raise n.fail(f"{prefix}_ids outside 0..{columns - 1}")
        leaf = np.zeros((count, columns), np.float64)
        for t, i, c, w in zip(w_trees, w_nodes, w_cols, weights):
            k = index.get((t, i))
            if k is None:
                raise n.fail(f"a weight for tree {t} node {i}, which does not exist")
            leaf[k, c] += w
        self.leaf = leaf.astype(np.float32)
        self.weight_columns = set(w_cols)
        self.weights = weights

    @staticmethod
    def _depth(roots: list[int], left: np.ndarray, right: np.ndarray, modes: list[str]) -> int:
        depth, level, seen = 0, list(roots), 0
        while True:
            inner = [k for k in level if modes[k] != "LEAF"]
            if not inner:
                return depth
            seen += len(inner)
            if seen > len(modes):  # a node reached twice: the "trees" have a cycle
                raise NotConvertible("tree ensemble whose nodes form a cycle")
            depth += 1
            level = [int(c) for k in inner for c in (left[k], right[k])]

    def emit_scores(self, n: Node) -> str:
        """Emit the traversal; returns the local holding the summed leaf values ``[batch, columns]``."""
        x, dt = n.x(0), "torch.float64" if self.thresholds.dtype == np.float64 else "torch.float32"
        feat = _buffer(n, "tree_feature", self.features)
        thr = _buffer(n, "tree_threshold", self.thresholds)
        left, right = _buffer(n, "tree_true", self.left), _buffer(n, "tree_false", self.right)
        roots, leaf = _buffer(n, "tree_roots", self.roots), _buffer(n, "tree_leaf_values", self.leaf)
        xv, flat, rows, idx = n.tmp("tree_x"), n.tmp("tree_x_flat"), n.tmp("tree_row_offset"), n.tmp("tree_node")
        v, go = n.tmp("tree_value"), n.tmp("tree_go")
        trees, columns = len(self.roots), self.leaf.shape[1]

        def at(table: str) -> str:  # one 1-D Gather per lookup: what onnx2tf and OpenVINO take best
            return f"torch.index_select({table}, 0, {idx})"

        n.emit(f"{xv} = {x}.to({dt})")
        n.emit(f"{flat} = {xv}.reshape(-1)")
        n.emit(f"{rows} = (torch.arange({xv}.shape[0], device={xv}.device) * {xv}.shape[1])"
               f".unsqueeze(1).expand(-1, {trees}).reshape(-1)")
        n.emit(f"{idx} = {roots}.unsqueeze(0).expand({xv}.shape[0], -1).reshape(-1)")
        n.emit(f"for _ in range({self.depth}):")
        n.emit(f"{v} = torch.index_select({flat}, 0, {rows} + {at(feat)})", 1)
        if self.mode is not None:
            n.emit(f"{go} = {v} {_COMPARE[self.mode]} {at(thr)}", 1)
        else:  # mixed modes: each node's own comparison
            codes = np.asarray([list(_COMPARE).index(m) if m in _COMPARE else 0 for m in self.modes], np.int64)
            mode, t = _buffer(n, "tree_mode", codes), n.tmp("tree_threshold")
            n.emit(f"{t} = {at(thr)}", 1)
            used = {_COMPARE[m] for m in self.modes if m in _COMPARE}
            choices = " | ".join(f"(({at(mode)} == {i}) & ({v} {op} {t}))" for i, op in enumerate(_COMPARE.values())
                                 if op in used)
            n.emit(f"{go} = {choices}", 1)
        if self.missing is not None:
            miss = _buffer(n, "tree_missing_true", self.missing)
            n.emit(f"{go} = {go} | (torch.isnan({v}) & {at(miss)})", 1)
        n.emit(f"{idx} = torch.where({go}, {at(left)}, {at(right)})", 1)
        scores = n.tmp("tree_scores")
        n.emit(f"{scores} = {at(leaf)}.reshape({xv}.shape[0], {trees}, {columns}).sum(1)")
        return scores


def _post_transform(n: Node, scores: str, transform: str) -> str:
    if transform == "NONE":
        return scores
    if transform == "LOGISTIC":
        return f"torch.sigmoid({scores})"
    if transform == "SOFTMAX":
        return f"torch.softmax({scores}, 1)"
    if transform == "SOFTMAX_ZERO":  # softmax over the non-zero scores; zeros stay zero
        e = n.tmp("softmax_zero")
        n.emit(f"{e} = torch.where({scores} != 0, torch.exp({scores} - {scores}.max(1, keepdim=True).values), "
               f"torch.zeros_like({scores}))")
        return f"{e} / {e}.sum(1, keepdim=True)"
    raise n.fail(f"post_transform {transform}")


def _int_labels(n: Node) -> list[int]:
    if n.attr("classlabels_strings"):
        raise n.fail("string class labels (a torch tensor holds numbers; convert with integer labels)")
    labels = n.attr("classlabels_int64s") if n.has_attr("classlabels_int64s") else n.attr("classlabels_ints")
    if not labels:
        raise n.fail("classifier without class labels")
    return [int(v) for v in labels]


@register("TreeEnsembleClassifier", since=1, domain=ML)
def treeensembleclassifier_ml_1(n: Node) -> None:
    labels = _int_labels(n)
    forest = _Forest(n, "class", max(len(labels), 1))
    transform = n.attr("post_transform", "NONE")
    base = _floats(n, "base_values")
    base = None if base is None or not len(base) else base
    scores = forest.emit_scores(n)
    names = _buffer(n, "class_labels", np.asarray(labels, np.int64))
    if len(labels) > 2 or len(forest.weight_columns) > 1:
        if len(labels) == 2:
            raise n.fail("a binary TreeEnsembleClassifier with a score per class")
        if base is not None:
            if len(base) != len(labels):
                raise n.fail(f"{len(base)} base_values for {len(labels)} classes")
            scores = f"({scores} + {_buffer(n, 'base_values', base.astype(np.float32))})"
        n.assign(f"{names}[{scores}.argmax(1)]", 0)
        n.assign(_post_transform(n, scores, transform), 1)
        return
    if len(labels) != 2 or forest.weight_columns - {0}:
        raise n.fail("a TreeEnsembleClassifier with one class, or one score for class 1")
    if base is not None and len(base) != 1:
        raise n.fail(f"a binary TreeEnsembleClassifier with {len(base)} base_values")
    if transform == "PROBIT":
        raise n.fail("post_transform PROBIT")
    s = n.tmp("binary_score")
    n.emit(f"{s} = {scores}[:, 0]" + (f" + {lit(float(base[0]))}" if base is not None else ""))
    positive = bool((forest.weights >= 0).all())  # onnxruntime's weights_are_all_positive_
    win = n.tmp("positive")
    n.emit(f"{win} = {s} > {'0.5' if positive else '0.0'}")
    n.assign(f"{names}[{win}.long()]", 0)
    if positive:
        n.assign(f"torch.stack([1 - {s}, {s}], 1)", 1)
    elif transform == "LOGISTIC":
        n.assign(f"torch.stack([torch.sigmoid(-{s}), torch.sigmoid({s})], 1)", 1)
    else:
        n.assign(f"torch.where({win}.unsqueeze(1), torch.stack([-{s}, {s}], 1), torch.stack([{s}, -{s}], 1))", 1)


@register("TreeEnsembleRegressor", since=1, domain=ML)
def treeensembleregressor_ml_1(n: Node) -> None:
    targets = int(n.attr("n_targets", 1) or 1)
    forest = _Forest(n, "target", targets)
    aggregate = n.attr("aggregate_function", "SUM")
    scores = forest.emit_scores(n)
    if aggregate == "AVERAGE":
        scores = f"({scores} / {len(forest.tree_ids)})"
    elif aggregate != "SUM":
        raise n.fail(f"aggregate_function {aggregate} (SUM and AVERAGE are lowered)")
    base = _floats(n, "base_values")
    if base is not None and len(base):
        if len(base) != targets:
            raise n.fail(f"{len(base)} base_values for {targets} targets")
        scores = f"({scores} + {_buffer(n, 'base_values', base.astype(np.float32))})"
    transform = n.attr("post_transform", "NONE")
    n.assign(_post_transform(n, scores, transform), 0)


def _linear(n: Node, targets: int) -> str:
    coef = np.asarray(n.attr("coefficients") or [], np.float32)
    if targets <= 0 or coef.size % targets:
        raise n.fail(f"{coef.size} coefficients for {targets} targets")
    w = _buffer(n, "linear_weight", coef.reshape(targets, -1))
    intercepts = np.asarray(n.attr("intercepts") or [0.0] * targets, np.float32)
    if intercepts.size != targets:
        raise n.fail(f"{intercepts.size} intercepts for {targets} targets")
    b = _buffer(n, "linear_bias", intercepts)
    s = n.tmp("linear_scores")
    n.emit(f"{s} = {n.x(0)}.float() @ {w}.T + {b}")
    return s


@register("LinearClassifier", since=1, domain=ML)
def linearclassifier_ml_1(n: Node) -> None:
    labels = _int_labels(n)
    targets = len(n.attr("intercepts") or [])
    scores = _linear(n, targets)
    transform = n.attr("post_transform", "NONE")
    if targets == 1:  # one score: the positive class wins where it is > 0 (onnxruntime's linearclassifier.cc)
        pos, neg = (labels[1], labels[0]) if len(labels) == 2 else (1, 0)
        n.assign(f"torch.where({scores}[:, 0] > 0, {pos}, {neg})", 0)
        if len(labels) != 2:
            n.assign(_post_transform(n, scores, transform), 1)
            return
        if transform == "PROBIT":
            raise n.fail("post_transform PROBIT")
        p = n.tmp("binary_score")
        n.emit(f"{p} = {_post_transform(n, scores, transform)}[:, 0]")
        n.assign(f"torch.stack([1 - {p}, {p}], 1)", 1)
        return
    names = _buffer(n, "class_labels", np.asarray(labels, np.int64))
    n.assign(f"{names}[{scores}.argmax(1)]", 0)
    n.assign(_post_transform(n, scores, transform), 1)


@register("LinearRegressor", since=1, domain=ML)
def linearregressor_ml_1(n: Node) -> None:
    scores = _linear(n, int(n.attr("targets", 1) or 1))
    n.assign(_post_transform(n, scores, n.attr("post_transform", "NONE")), 0)


@register("Scaler", since=1, domain=ML)
def scaler_ml_1(n: Node) -> None:
    offset = np.asarray(n.attr("offset") or [0.0], np.float32)
    scale = np.asarray(n.attr("scale") or [1.0], np.float32)
    o, s = _buffer(n, "scaler_offset", offset), _buffer(n, "scaler_scale", scale)
    n.assign(f"({n.x(0)}.float() - {o}) * {s}")


@register("Normalizer", since=1, domain=ML)
def normalizer_ml_1(n: Node) -> None:
    norm = n.attr("norm", "MAX")
    x = n.x(0)
    if norm == "MAX":
        d = f"{x}.max(1, keepdim=True).values"
    elif norm == "L1":
        d = f"{x}.abs().sum(1, keepdim=True)"
    elif norm == "L2":
        d = f"{x}.pow(2).sum(1, keepdim=True).sqrt()"
    else:
        raise n.fail(f"norm {norm}")
    n.assign(f"{x}.float() / {d}")


@register("ArrayFeatureExtractor", since=1, domain=ML)
def arrayfeatureextractor_ml_1(n: Node) -> None:
    x, idx = n.x(0), n.x(1)
    picked = f"{x}[..., {idx}.reshape(-1).long()]"
    n.assign(f"{picked}.unsqueeze(0)" if n.rank(0) == 1 else picked)


@register("Binarizer", since=1, domain=ML)
def binarizer_ml_1(n: Node) -> None:
    x = n.x(0)
    n.assign(f"({x} > {lit(float(n.attr('threshold', 0.0)))}).to({x}.dtype)")
