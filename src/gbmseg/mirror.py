"""Left-right mirroring for bilaterally symmetric anatomy, with the left and right labels swapped.

A head is (nearly) its own mirror image once ``eye_left`` and ``eye_right`` trade names; a heart is
not (the left atrium is not the mirrored right atrium). ``training.mirror`` (off unless a preset or
``--set`` turns it on) uses this twice: in training, half the crops are mirrored (a second,
mirror-image subject for every training case, which matters most with one or two of them), and at
prediction the network also sees the mirrored crop and the two probability maps are averaged
(test-time augmentation, as nnU-Net mirrors).

Whether to mirror, and along which grid axis, is decided from the training cases alone
(:func:`plan_mirror`), never from names alone:

* the structures must come in pairs named ``*left*``/``*right*`` (or ending ``_l``/``_r``);
* in every training crop, each pair's two centroids must lie apart along one grid axis (at least
  :data:`MIN_AXIS_SHARE` of the distance between them, as the eyes or the parotids do), the same
  axis for every pair and case;
* and the pair's midpoint must lie within :data:`MAX_MIDLINE_MM` of the global mask's centre along
  that axis (the midline), so that a mirror image is a plausible subject.

Otherwise the plan says why not and nothing is mirrored. The axis is a numpy axis of the
``(Z, Y, X)`` crop (which scanner axis is left-right depends on how the scans were stored).

Example:
    >>> lateral_pairs({"brainstem": 1, "eye_left": 2, "eye_right": 3})
    [(2, 3)]
    >>> swap_table(4, [(2, 3)]).tolist()
    [0, 1, 3, 2]
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

MIN_AXIS_SHARE = 0.9    # a pair's centroids differ along the mirror axis by at least this share of their distance
MAX_MIDLINE_MM = 15.0   # a pair's midpoint lies this close to the global mask's centre along that axis


def _other_side(name: str) -> str | None:
    """``eye_left`` -> ``eye_right``, ``parotid_r`` -> ``parotid_l`` (lower-case names); None without a side."""
    for a, b in (("left", "right"), ("right", "left")):
        if a in name:
            return name.replace(a, b)
    for a, b in (("_l", "_r"), ("_r", "_l")):
        if name.endswith(a):
            return name[: -len(a)] + b
    return None


def lateral_pairs(labels: Mapping[str, int]) -> list[tuple[int, int]]:
    """Label values of the structures that come in left/right pairs by name, each pair once as
    ``(lower value, higher value)``, sorted. Names are matched without regard to case: ``eye_left``/``eye_right``,
    ``Parotid_L``/``Parotid_R``."""
    by_name = {n.lower(): int(v) for n, v in labels.items() if int(v) != 0}
    pairs = set()
    for n, v in by_name.items():
        other = _other_side(n)
        if other is not None and other in by_name:
            pairs.add(tuple(sorted((v, by_name[other]))))
    return sorted(pairs)


def swap_table(n_classes: int, pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Lookup ``table[old label] = new label`` that swaps each pair (an involution: applied twice, nothing changes)."""
    table = np.arange(n_classes)
    for a, b in pairs:
        table[a], table[b] = b, a
    return table


def plan_mirror(labels: Mapping[str, int], cases: Sequence[Mapping[str, np.ndarray]],
                spacing_zyx: Sequence[float]) -> dict:
    """Whether and how to mirror, from training crops (each with ``label`` and ``mask``, ``(Z, Y, X)``
    or ``(1, Z, Y, X)``) on a grid of ``spacing_zyx`` mm.

    Returns ``{"axis": numpy axis of (Z, Y, X) or None, "pairs": [[value, value], ...] (from
    :func:`lateral_pairs`), "reason": str}``.
    """
    pairs = lateral_pairs(labels)

    def refuse(reason: str) -> dict:
        return {"axis": None, "pairs": [list(p) for p in pairs], "reason": reason}

    if not pairs:
        return refuse("no structures named as left/right pairs")
    spacing = np.asarray(spacing_zyx, dtype=float)
    axes = set()
    for i, case in enumerate(cases):
        label = np.asarray(case["label"])
        label = label.reshape(label.shape[-3:])
        mask = np.asarray(case["mask"]).reshape(label.shape)
        centre = np.argwhere(mask > 0).mean(0) * spacing if mask.any() else None
        for a, b in pairs:
            pa, pb = np.argwhere(label == a), np.argwhere(label == b)
            if len(pa) == 0 or len(pb) == 0:
                continue
            ca, cb = pa.mean(0) * spacing, pb.mean(0) * spacing
            d = ca - cb
            k = int(np.argmax(np.abs(d)))
            share = float(abs(d[k]) / max(np.linalg.norm(d), 1e-9))
            if share < MIN_AXIS_SHARE:
                return refuse(f"training case {i}: labels {a} and {b} do not lie apart along one axis "
                              f"(share {share:.2f} < {MIN_AXIS_SHARE}): not mirror-symmetric anatomy")
            if centre is not None and abs((ca[k] + cb[k]) / 2 - centre[k]) > MAX_MIDLINE_MM:
                return refuse(f"training case {i}: labels {a} and {b} are not placed about the global "
                              f"mask's midline (more than {MAX_MIDLINE_MM:g} mm off)")
            axes.add(k)
    if len(axes) != 1:
        why = "no training case holds both structures of a pair" if not axes else "pairs lie apart along different axes"
        return refuse(why)
    return {"axis": axes.pop(), "pairs": [list(p) for p in pairs], "reason": "left/right pairs about the midline"}


def mirror_case(case: Mapping[str, torch.Tensor], axis: int, table: np.ndarray) -> dict[str, torch.Tensor]:
    """Every ``(C, Z, Y, X)`` tensor of ``case`` reflected along grid ``axis`` (numpy axis of ``(Z, Y, X)``),
    ``label`` values swapped through ``table`` (:func:`swap_table`)."""
    dim = axis - 3  # the same axis counted from the end, whatever the leading channel dimension
    out = {k: torch.flip(v, [dim]) for k, v in case.items()}
    if "label" in out:
        out["label"] = torch.as_tensor(table, dtype=out["label"].dtype)[out["label"].long()]
    return out


def mirrored_probabilities(predict, x: torch.Tensor, axis: int, table: np.ndarray,
                           plain: torch.Tensor | None = None) -> torch.Tensor:
    """Test-time mirroring: the mean of ``predict(x)`` and the mirrored prediction of the mirrored input,
    its class channels swapped back. ``predict`` maps ``(B, C, Z, Y, X)`` to class probabilities
    ``(B, K, Z, Y, X)``; ``plain``, if given, is ``predict(x)`` already computed."""
    dim = axis - 3
    plain = predict(x) if plain is None else plain
    flipped = torch.flip(predict(torch.flip(x, [dim])), [dim])
    return (plain + flipped[:, torch.as_tensor(table, dtype=torch.long)]) / 2
