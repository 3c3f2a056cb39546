"""Learn image-oriented classes from a confusion matrix between fine expression types.

Expression separates T, B and plasma cells; H&E mostly does not. Given how an image classifier
confuses the fine types (rows: true type, columns: predicted type, cross-validated counts from
:mod:`wsi_stnuc.taxonomy.crop_classifier`), merge types agglomeratively into classes the image *can*
tell apart:

1. types with fewer than ``min_support`` cells go to ``unknown`` (too few to judge);
2. repeatedly take the pair of classes with the highest symmetric confusion
   ``R_ij + R_ji`` (``R`` = row-normalised counts) and merge them (counts add up), until every
   class reaches ``min_f1`` (F1 from the merged counts) or ``n_classes`` remain (never fewer
   than ``min_classes``). Merging also stops when that pair is two classes the image does
   recognise (F1 at least ``unknown_f1``) and the targets are already met by the recognised
   classes alone: the rest abstain in step 4 anyway, and merging two recognisable classes to
   make room for a class that will abstain would erase a distinction the image can make;
3. a class whose own cells are torn between two classes which are themselves distinct (more
   of its cells read as those two than as itself, the second at least ``ambiguity_ratio``
   times the first, and the two confused with each other less than that) is one the image
   cannot place: it goes to ``unknown`` instead of diluting a good class. A member of a group
   of mutually confused types (T, B, plasma) is not torn: its destinations are confused with
   each other too;
4. classes whose F1 is still below ``unknown_f1`` go to ``unknown``.

Every step is recorded (the merge tree) in the taxonomy's ``notes`` so a pathologist can see
why, and accept or edit the YAML.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wsi_stnuc.classes import UNKNOWN, ClassTable, Taxonomy, default_color
from wsi_stnuc.errors import InputError
from wsi_stnuc.io_utils import atomic_path

log = logging.getLogger(__name__)

DEFAULT_MIN_F1 = 0.7
NAME_SEPARATOR = "+"


@dataclass
class LearnedTaxonomy:
    """A learned taxonomy and the evidence behind it.

    ``confusion_before`` is the input counts (fine types, rows true); ``confusion_after`` the
    counts between the final classes (types sent to ``unknown`` left out); ``merges`` the
    ordered merge tree (also stored in ``taxonomy.notes``).
    """

    taxonomy: Taxonomy
    confusion_before: pd.DataFrame
    confusion_after: pd.DataFrame
    f1_before: pd.Series
    f1_after: pd.Series
    merges: list[dict] = field(default_factory=list)
    unknown_types: list[str] = field(default_factory=list)


def f1_scores(counts: np.ndarray) -> np.ndarray:
    """Per-class F1 from a square count matrix (rows true, columns predicted); 0 where undefined."""
    counts = np.asarray(counts, dtype=np.float64)
    tp = np.diag(counts)
    denom = counts.sum(axis=0) + counts.sum(axis=1)  # = 2TP + FP + FN
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def symmetric_confusion(counts: np.ndarray) -> np.ndarray:
    """``R + R.T`` with ``R`` the row-normalised counts and a zero diagonal."""
    counts = np.asarray(counts, dtype=np.float64)
    r = row_rates(counts)
    s = r + r.T
    np.fill_diagonal(s, 0.0)
    return s


def merge_counts(counts: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """Counts between groups of the original classes: ``G.T @ C @ G`` for the 0/1 membership G."""
    g = np.zeros((counts.shape[0], len(groups)))
    for k, members in enumerate(groups):
        g[members, k] = 1.0
    return g.T @ counts @ g


def _check_confusion(confusion: pd.DataFrame) -> np.ndarray:
    if not isinstance(confusion, pd.DataFrame):
        raise InputError(None, "confusion must be a pandas DataFrame (types x types)")
    rows, cols = [str(v) for v in confusion.index], [str(v) for v in confusion.columns]
    if rows != cols:
        raise InputError(
            None, f"confusion rows and columns must list the same types: {rows} vs {cols}"
        )
    if len(set(rows)) != len(rows):
        raise InputError(None, f"confusion has duplicate type names: {rows}")
    if UNKNOWN in rows:
        raise InputError(None, f"'{UNKNOWN}' is the abstain class, not a fine type")
    values = confusion.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise InputError(None, "confusion must hold finite, non-negative counts")
    return values


def _group_name(members: list[int], names: list[str], support: np.ndarray) -> str:
    ordered = sorted(members, key=lambda i: (-support[i], names[i]))
    return NAME_SEPARATOR.join(names[i] for i in ordered)


def row_rates(counts: np.ndarray) -> np.ndarray:
    """Row-normalised counts: where the cells of each true class were predicted."""
    counts = np.asarray(counts, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)


def _torn(r: np.ndarray, s: np.ndarray, i: int, j: int, ratio: float) -> int | None:
    """``i``'s second destination if ``i``'s own cells are split between ``j`` and a class
    distinct from ``j``, more than they are recognised as ``i``; else None.

    Only ``i``'s row counts: a class that *absorbs* others' cells (a sink) is not torn.
    """
    others = r[i].copy()
    others[[i, j]] = -1.0
    if len(others) < 3:
        return None
    h = int(np.argmax(others))
    if others[h] <= 0 or others[h] < ratio * r[i, j] or r[i, j] + others[h] <= r[i, i]:
        return None
    # the two destinations are confused with each other: i sits inside a confused group
    if s[j, h] >= ratio * others[h]:
        return None
    return h


class _State:
    """Current groups (lists of original indices) and their merged counts."""

    def __init__(self, counts: np.ndarray, names: list[str], active: list[int]):
        self.counts = counts
        self.names = names
        self.support = counts.sum(axis=1)
        self.groups = [[i] for i in active]

    def matrix(self) -> np.ndarray:
        return merge_counts(self.counts, self.groups)

    def name(self, k: int) -> str:
        return _group_name(self.groups[k], self.names, self.support)

    def types(self, k: int) -> list[str]:
        return [self.names[i] for i in self.groups[k]]


def learn_taxonomy(
    confusion: pd.DataFrame,
    *,
    min_f1: float | None = None,
    n_classes: int | None = None,
    min_support: int = 10,
    unknown_f1: float = 0.3,
    ambiguity_ratio: float = 0.5,
    min_classes: int = 2,
) -> LearnedTaxonomy:
    """Merge confusable fine types into image classes; see the module docstring for the rule.

    ``confusion``: counts, rows = true fine type, columns = predicted fine type (same order).
    ``min_f1`` defaults to 0.7 when neither it nor ``n_classes`` is given; with both, merging
    stops at whichever is reached first. Merging never goes below ``min_classes`` (one class
    for everything would score F1 = 1 and say nothing).
    """
    counts = _check_confusion(confusion)
    names = [str(v) for v in confusion.index]
    if min_f1 is None and n_classes is None:
        min_f1 = DEFAULT_MIN_F1
    if n_classes is not None and n_classes < 1:
        raise InputError(None, f"n_classes must be at least 1, got {n_classes}")
    support = counts.sum(axis=1)
    f1_before = pd.Series(f1_scores(counts), index=names, name="f1")

    merges: list[dict] = []
    unknown: list[str] = []

    def record(entry: dict) -> None:
        entry["step"] = len(merges) + 1
        merges.append(entry)
        log.info("taxonomy step %d: %s", entry["step"], entry)

    active = [i for i in range(len(names)) if support[i] >= min_support]
    for i in sorted(set(range(len(names))) - set(active)):
        unknown.append(names[i])
        record(
            {
                "action": "unknown",
                "types": [names[i]],
                "reason": f"support {int(support[i])} < {min_support}",
            }
        )
    state = _State(counts, names, active)

    def drop(k: int, reason: str) -> None:
        unknown.extend(state.types(k))
        record({"action": "unknown", "types": state.types(k), "reason": reason})
        del state.groups[k]

    def targets_met(f1: np.ndarray, kept: np.ndarray) -> bool:
        return (n_classes is None or kept.sum() <= n_classes) and (
            min_f1 is None or bool(np.all(f1[kept] >= min_f1))
        )

    while len(state.groups) > min_classes:
        m = state.matrix()
        f1 = f1_scores(m)
        if targets_met(f1, np.ones(len(f1), bool)):
            break
        s, r = symmetric_confusion(m), row_rates(m)
        i, j = np.unravel_index(int(np.argmax(s)), s.shape)
        if s[i, j] <= 0:
            break  # nothing is confused with anything: merging cannot help
        recognised = f1 >= unknown_f1
        both = recognised[i] and recognised[j]
        if both and recognised.sum() >= min_classes and targets_met(f1, recognised):
            record({"action": "stop", "pair": [state.name(i), state.name(j)],
                    "reason": "both recognised and the recognised classes meet the "
                              "targets; the unrecognised abstain"})  # fmt: skip
            break
        # the weaker member is the one to test for ambiguity first
        order = (i, j) if f1[i] <= f1[j] else (j, i)
        torn = None
        for a, b in (order, order[::-1]):
            h = _torn(r, s, a, b, ambiguity_ratio)
            if h is not None:
                torn = (a, b, h)
                break
        if torn is not None:
            a, b, h = torn
            drop(
                a,
                f"torn: {r[a, b]:.2f} of its cells read as {state.name(b)}, "
                f"{r[a, h]:.2f} as {state.name(h)}, {r[a, a]:.2f} as itself",
            )
            continue
        names_ij = (state.name(i), state.name(j))
        state.groups[i] = state.groups[i] + state.groups[j]
        del state.groups[j]
        k = i if i < j else i - 1
        new_f1 = float(f1_scores(state.matrix())[k])
        record(
            {
                "action": "merge",
                "pair": list(names_ij),
                "into": state.name(k),
                "symmetric_confusion": round(float(s[i, j]), 4),
                "f1_pair": [round(float(f1[i]), 4), round(float(f1[j]), 4)],
                "f1_merged": round(new_f1, 4),
            }
        )

    # classes the image still cannot recognise abstain, worst first (F1s shift as they go)
    while state.groups:
        f1 = f1_scores(state.matrix())
        k = int(np.argmin(f1))
        if f1[k] >= unknown_f1:
            break
        drop(k, f"F1 {f1[k]:.3f} < unknown_f1 {unknown_f1}")
    if not state.groups:
        raise InputError(
            None, "no fine type is recognisable from the image: every type went to unknown"
        )

    class_names = [state.name(k) for k in range(len(state.groups))]
    m = state.matrix()
    f1_after = pd.Series(f1_scores(m), index=class_names, name="f1")
    table = ClassTable(
        tuple(class_names), tuple(default_color(n, i) for i, n in enumerate(class_names))
    )
    mapping = {t: class_names[k] for k in range(len(state.groups)) for t in state.types(k)}
    mapping.update({t: UNKNOWN for t in unknown})
    notes = {
        "method": "agglomerative merge of fine types by symmetric image confusion",
        "params": {
            "min_f1": min_f1,
            "n_classes": n_classes,
            "min_support": min_support,
            "unknown_f1": unknown_f1,
            "ambiguity_ratio": ambiguity_ratio,
            "min_classes": min_classes,
        },
        "support": {n: int(support[i]) for i, n in enumerate(names)},
        "f1_fine_types": {n: round(float(v), 4) for n, v in f1_before.items()},
        "f1_classes": {n: round(float(v), 4) for n, v in f1_after.items()},
        "below_min_f1": [n for n, v in f1_after.items() if min_f1 is not None and v < min_f1],
        "merge_tree": merges,
    }
    return LearnedTaxonomy(
        taxonomy=Taxonomy(table, mapping, notes),
        confusion_before=pd.DataFrame(counts, index=names, columns=names),
        confusion_after=pd.DataFrame(m, index=class_names, columns=class_names),
        f1_before=f1_before,
        f1_after=f1_after,
        merges=merges,
        unknown_types=unknown,
    )


def row_normalise(confusion: pd.DataFrame) -> pd.DataFrame:
    """Each row divided by its sum (rows of zeros stay zero)."""
    sums = confusion.sum(axis=1).replace(0, np.nan)
    return confusion.div(sums, axis=0).fillna(0.0)


def plot_learned_taxonomy(learned: LearnedTaxonomy, path: str | Path) -> Path:
    """PNG: row-normalised confusion before and after, and the merge list."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before, after = row_normalise(learned.confusion_before), row_normalise(learned.confusion_after)
    n_lines = max(len(learned.merges), 1)
    fig = plt.figure(figsize=(15, 7.5 + 0.2 * n_lines))
    grid = fig.add_gridspec(2, 2, height_ratios=[6.5, 0.6 + 0.2 * n_lines])
    axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])]
    for ax, frame, f1, title in (
        (axes[0], before, learned.f1_before, "fine types (cross-validated)"),
        (axes[1], after, learned.f1_after, "learned image classes"),
    ):
        ax.imshow(frame.to_numpy(), cmap="Blues", vmin=0, vmax=1)
        labels = [f"{n} (F1 {f1[n]:.2f})" for n in frame.index]
        ax.set_xticks(
            range(len(frame)), [_short(n) for n in frame.columns], rotation=60, ha="right"
        )
        ax.set_yticks(range(len(frame)), [_short(n) for n in labels])
        for (r, c), v in np.ndenumerate(frame.to_numpy()):
            if v >= 0.05:
                ax.text(
                    c,
                    r,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > 0.6 else "black",
                )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    lines = []
    for m in learned.merges:
        if m["action"] == "merge":
            lines.append(
                f"{m['step']}. merge {m['pair'][0]} | {m['pair'][1]}  "
                f"(conf {m['symmetric_confusion']:.2f}, F1 -> {m['f1_merged']:.2f})"
            )
        elif m["action"] == "stop":
            lines.append(f"{m['step']}. keep {m['pair'][0]} | {m['pair'][1]} apart, stop")
        else:
            lines.append(f"{m['step']}. unknown: {', '.join(m['types'])}  ({m['reason']})")
    axes[2].axis("off")
    axes[2].set_title("merge tree (in order)")
    axes[2].text(
        0,
        1,
        "\n".join(lines) or "(no merges)",
        va="top",
        ha="left",
        fontsize=8,
        family="monospace",
        wrap=True,
        transform=axes[2].transAxes,
    )
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _short(name: str, limit: int = 32) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def write_learned_taxonomy(
    learned: LearnedTaxonomy, yaml_path: str | Path, *, figure: str | Path | None = None
) -> dict[str, Path]:
    """Write the taxonomy YAML, the confusion tables (CSV, next to it) and optionally the PNG.

    Returns the written paths by kind (``yaml``, ``confusion_before``, ``confusion_after``,
    ``figure``).
    """
    yaml_path = Path(yaml_path)
    stem = yaml_path.with_suffix("")
    out = {"yaml": yaml_path}
    with atomic_path(yaml_path) as tmp:
        learned.taxonomy.to_yaml(tmp)
    for key, frame in (
        ("confusion_before", learned.confusion_before),
        ("confusion_after", learned.confusion_after),
    ):
        csv = stem.with_name(f"{stem.name}_{key}.csv")
        with atomic_path(csv) as tmp:
            frame.to_csv(tmp, index_label="true\\predicted")
        out[key] = csv
    if figure is not None:
        out["figure"] = plot_learned_taxonomy(learned, figure)
    return out
