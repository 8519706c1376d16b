"""Report of a sweep: the paper's tables, figures and statistics as HTML, Markdown and CSV.

Reads ``SWEEP/sweep.json`` and every finished job (``runs/<id>/done.json`` present; unfinished
jobs are skipped and counted) and writes into ``SWEEP/report/`` (or ``out_dir``)::

    report.html     one self-contained page (CSS inline, figures as base64 PNG data URIs)
    report.md       the same content, figures referenced as figures/*.png
    dice.csv        mode, n_train, structure (+ "ALL"), mean, sd, n, n_missing   (Tables 1-2)
    com.csv         the same for the centre-of-mass distance in mm                (Tables 3-4)
    hd95.csv        the same for HD95 in mm
    time.csv        mode, n_train, train_time_s / best_iteration / time_to_best_s / predict_s_per_case
                    mean and sd, n_runs (predict_s_per_case of mode atlas: its whole time per test case)
    convergence.csv mode, n_train, target, n_runs, n_reached, iterations / seconds mean and sd: until
                    validation Dice first reached the target (0.5, 0.7; the paper's Tables 5-6)
    comparison.csv  n_train, structure, mode, dice_mode, dice_image, rel_change_pct, n_pairs, p_value
    comparison_vs_image_mask.csv   (when image+mask is in the sweep) every other mode against it:
                    n_train, structure, mode, base, dice_mode, dice_base, dice_diff, n_pairs, p_dice,
                    com_mode, com_base, com_diff, n_com_pairs, p_com
    cross_modality.csv  (sweeps with --also-test) tested_on, mode, n_train, structure, own_mean, own_sd,
                    own_n, other_mean, other_sd, other_n, ratio
    figures/        dice_vs_n.png, loss_curves.png, val_dice.png, overlay_<case>.png

Statistics: see :mod:`gbmseg.sweep_stats`, which computes every number; this module draws and
renders them. Any set of modes is shown: known modes in :data:`gbmseg.sweep_stats.MODE_ORDER`, then
others; a mode without a title or colour here gets its own name and a colour from :data:`FALLBACK_COLORS`.

Example:
    >>> make_report("sweeps/head")          # doctest: +SKIP
    PosixPath('sweeps/head/report/report.html')
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .dataset import Dataset
from .io import PathLike, atomic_path, read_image, read_json, same_geometry, to_array, write_text
from .stopping import MORE_ITERATIONS
from .sweep import SWEEP_KEYS
from .sweep_stats import (ALPHA, COLLAPSES, CONVERGENCE_TARGETS, HOLDS, MIN_PAIRS, REFERENCE, Run, compare,
                          compare_to, convergence_table, coords_statement, cross_statements, cross_table, fmt_mean_sd,
                          load_also_test, load_runs, order_modes, p_text, statement, summarize_metric, time_table)

MODE_TITLE = {"image": "image only", "mask": "mask only", "image+mask": "image+mask", "image+coords": "image+coords",
              "image+sdm": "image+SDM", "atlas": "multi-atlas", "atlas-lw": "multi-atlas (local weights)"}
MODE_COLOR = {"image": "tab:blue", "mask": "tab:orange", "image+mask": "tab:green", "image+coords": "tab:red",
              "image+sdm": "tab:purple", "atlas": "tab:gray", "atlas-lw": "tab:brown"}
FALLBACK_COLORS = ["tab:pink", "tab:olive", "tab:cyan", "black", "gold", "navy", "teal"]
_EXTRA_COLOR: dict[str, str] = {}
N_OVERLAYS = 3
DPI = 100


# -- figures -----------------------------------------------------------------------------------------
def mode_color(mode: str) -> str:
    """The mode's colour; an unknown mode gets the next unused one of :data:`FALLBACK_COLORS` (cycling)."""
    if mode in MODE_COLOR:
        return MODE_COLOR[mode]
    if mode not in _EXTRA_COLOR:
        _EXTRA_COLOR[mode] = FALLBACK_COLORS[len(_EXTRA_COLOR) % len(FALLBACK_COLORS)]
    return _EXTRA_COLOR[mode]


def _new_figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _grid(n: int, max_cols: int, w: float, h: float):
    ncol = min(max_cols, n)
    nrow = -(-n // ncol)
    fig = _new_figure(w * ncol, h * nrow + 0.5)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _png(fig: Figure, handles: list, title: str) -> bytes:
    """Legend on top, title above it, tight PNG bytes."""
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle(title, y=1.04)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _mode_lines(modes, **kw) -> list:
    return [Line2D([], [], color=mode_color(m), label=MODE_TITLE.get(m, m), **kw) for m in modes]


def fig_dice_vs_n(dice: pd.DataFrame, modes, sizes, structures) -> bytes:
    panels = [*structures, "ALL"]
    fig, axes = _grid(len(panels), 4, 3.6, 3.0)
    for ax, s in zip(axes, panels):
        for i, mode in enumerate(modes):
            d = dice[(dice["mode"] == mode) & (dice["structure"] == s) & (dice["n"] > 0)]
            shift = 2 ** (0.06 * (i - (len(modes) - 1) / 2))  # side by side error bars
            ax.errorbar(d["n_train"] * shift, d["mean"], yerr=d["sd"].fillna(0), marker="o", ms=4, capsize=3,
                        color=mode_color(mode))
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set(ylim=(0, 1.02), xlabel="training cases N", ylabel="Dice",
               title="mean of all structures" if s == "ALL" else s)
        ax.grid(alpha=0.3)
    return _png(fig, _mode_lines(modes, marker="o"),
                "Test Dice vs training-set size (mean ± sd over test cases × seeds)")


def _history_panels(runs: list[Run], sizes, ylabel: str, draw) -> Figure | None:
    """One panel per N (the largest six with a training history): ``draw(ax, history, colour)`` per run."""
    shown = [n for n in sizes if any(r.n_train == n and r.history is not None for r in runs)][-6:]
    if not shown:
        return None
    fig, axes = _grid(len(shown), 3, 4.2, 3.0)
    for ax, n in zip(axes, shown):
        for r in runs:
            if r.n_train == n and r.history is not None:
                draw(ax, r.history, mode_color(r.mode))
        ax.set(title=f"N = {n}", xlabel="iteration", ylabel=ylabel)
        ax.grid(alpha=0.3)
    return fig


def fig_loss_curves(runs: list[Run], modes, sizes) -> bytes | None:
    def draw(ax, h, c):
        ax.plot(h["iteration"], h["train_loss"], color=c, lw=1.2, alpha=0.8)
        ax.plot(h["iteration"], h["val_loss"], color=c, lw=1.2, ls="--", alpha=0.8)

    fig = _history_panels(runs, sizes, "loss", draw)
    if fig is None:
        return None
    handles = _mode_lines(modes) + [Line2D([], [], color="0.3", label="train"),
                                    Line2D([], [], color="0.3", ls="--", label="validation")]
    return _png(fig, handles, "Training and validation loss (one line per seed)")


def fig_val_dice(runs: list[Run], modes, sizes) -> bytes | None:
    """Validation Dice against iteration per N (one line per seed), the convergence targets dotted."""
    def draw(ax, h, c):
        ax.plot(h["iteration"], h["val_dice"], color=c, lw=1.2, alpha=0.8)

    fig = _history_panels(runs, sizes, "validation Dice", draw)
    if fig is None:
        return None
    for ax in fig.axes:
        if ax.get_visible():
            ax.set_ylim(0, 1.0)
            for target in CONVERGENCE_TARGETS:
                ax.axhline(target, color="0.5", lw=0.8, ls=":")
    return _png(fig, _mode_lines(modes), "Validation Dice during training (one line per seed)")


def _best_slice(lab: np.ndarray, axis: int, values) -> int:
    """Slice along ``axis`` through the structures' centres: it maximises the sum over structures of
    their area in the slice relative to their largest area (ties: nearest the labels' centre)."""
    others = tuple(a for a in range(3) if a != axis)
    areas = [(lab == v).sum(axis=others) for v in values]
    score = sum(a / a.max() for a in areas if a.max() > 0) + np.zeros(lab.shape[axis])
    fg = (lab > 0).sum(axis=others)
    centre = (fg * np.arange(lab.shape[axis])).sum() / max(fg.sum(), 1)
    candidates = np.flatnonzero(score >= score.max() - 1e-9)
    return int(candidates[np.argmin(np.abs(candidates - centre))])


def _crop(masks: list[np.ndarray], spacing: tuple[float, float], margin_mm: float = 25.0):
    """Row/column slices around everything labelled in ``masks`` (2D), with a margin."""
    union = np.any(masks, axis=0)
    if not union.any():
        return slice(None), slice(None)
    out = []
    for axis, sp in enumerate(spacing):
        hit = np.flatnonzero(union.any(axis=1 - axis))
        pad = int(max(margin_mm, 0.5 * (hit[-1] - hit[0]) * sp) / sp)
        out.append(slice(max(hit[0] - pad, 0), min(hit[-1] + pad + 1, union.shape[axis])))
    return tuple(out)


def fig_overlay(case: str, image: sitk.Image, label: sitk.Image, preds: dict, labels: dict, modality: str) -> bytes:
    """Rows axial and coronal; columns ground truth then one prediction per mode (``preds``: title -> image|None)."""
    def lps(im):
        return sitk.DICOMOrient(im, "LPS")

    img, lab = to_array(lps(image)).astype(np.float32), to_array(lps(label))
    arrays = {}
    for title, p in preds.items():
        if p is not None and same_geometry(p, label):
            p = sitk.Resample(p, label, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        arrays[title] = None if p is None else to_array(lps(p))
    lo, hi = (-200, 200) if modality == "CT" else np.percentile(img, [0.5, 99.5])
    sx, sy, sz = lps(label).GetSpacing()
    colors = {v: f"C{i % 10}" for i, v in enumerate(labels.values())}
    columns = [("ground truth", lab)] + list(arrays.items())
    fig = _new_figure(3.0 * len(columns), 6.6)
    axes = fig.subplots(2, len(columns), squeeze=False)
    views = [("axial", 0, sy / sx, "upper", _best_slice(lab, 0, labels.values())),
             ("coronal", 1, sz / sx, "lower", _best_slice(lab, 1, labels.values()))]
    for row, (view, axis, aspect, origin, k) in enumerate(views):
        cut = lambda a: np.take(a, k, axis=axis)  # noqa: E731
        box = _crop([cut(lab) > 0] + [cut(a) > 0 for a in arrays.values() if a is not None],
                    (sy if axis == 0 else sz, sx))
        ref = cut(lab)[box]
        for col, (title, arr) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(cut(img)[box], cmap="gray", vmin=lo, vmax=hi, aspect=aspect, origin=origin)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{view} (slice {k})")
            if arr is None:
                ax.text(0.5, 0.5, "no prediction", color="w", ha="center", va="center", transform=ax.transAxes,
                        bbox=dict(facecolor="k", alpha=0.6))
                continue
            sl = cut(arr)[box]
            rgba = np.zeros(sl.shape + (4,))
            for v, c in colors.items():
                if (sl == v).any():
                    rgba[sl == v] = (*to_rgb(c), 0.35)
                    ax.contour(sl == v, levels=[0.5], colors=[c], linewidths=1.2)
                if col > 0 and (ref == v).any():
                    ax.contour(ref == v, levels=[0.5], colors="w", linewidths=0.8, linestyles="--")
            ax.imshow(rgba, aspect=aspect, origin=origin)
    handles = [Patch(color=colors[v], label=name) for name, v in labels.items()]
    handles.append(Line2D([], [], color="0.4", ls="--", label="ground truth outline (white)"))
    return _png(fig, handles, f"Test case {case}")


def overlay_panels(sweep: dict, runs: list[Run], metrics: pd.DataFrame, modes, case: str) -> dict:
    """Panel title -> prediction path (``None``: the mode has no finished run) of one overlay figure:
    each mode's run at its largest N, first seed."""
    panels = {}
    for mode in modes:
        have = [r for r in runs if r.mode == mode and (r.dir / "predictions" / f"{case}.nii.gz").exists()]
        if not have:
            panels[f"{MODE_TITLE.get(mode, mode)}\n(no finished run)"] = None
            continue
        r = min(have, key=lambda r: (-r.n_train, r.seed))
        rows = metrics[(metrics["job"] == r.id) & (metrics["case"] == case)]
        title = f"{MODE_TITLE.get(mode, mode)}\nN={r.n_train}, seed {r.seed}, Dice {rows['dice'].mean():.2f}"
        panels[title] = r.dir / "predictions" / f"{case}.nii.gz"
    return panels


def overlay_cases(sweep: dict, metrics: pd.DataFrame, ds: Dataset) -> list[str]:
    """The first ``N_OVERLAYS`` test cases."""
    cases = sweep.get("split", {}).get("test") or sorted(metrics["case"].unique())
    return [c for c in cases if c in ds.cases][:N_OVERLAYS]


def overlays(sweep: dict, runs: list[Run], metrics: pd.DataFrame, modes) -> dict[str, bytes]:
    """``overlay_<case>.png`` for the first test cases (see :func:`overlay_panels`)."""
    ds = Dataset(sweep["dataset"])
    out = {}
    for case in overlay_cases(sweep, metrics, ds):
        preds = {title: None if path is None else read_image(path)
                 for title, path in overlay_panels(sweep, runs, metrics, modes, case).items()}
        out[f"overlay_{case}.png"] = fig_overlay(case, read_image(ds.image_path(case)), read_image(ds.label_path(case)),
                                                 preds, sweep["labels"], sweep.get("modality", "CT"))
    return out


# -- page ----------------------------------------------------------------------------------------------
def render_html(title: str, blocks: list[tuple], figures: dict[str, bytes]) -> str:
    css = ("body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}"
           "th,td{padding:3px 10px;border-bottom:1px solid #e3e3e3;text-align:right;white-space:nowrap}"
           "th{background:#f3f3f3}td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}"
           "tr.grp td{border-top:2px solid #999}.cap,figcaption{color:#555;font-size:13px}.cap{margin-top:-1em}"
           "img{max-width:100%}figure{margin:1em 0 2em}"
           "h2{border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:1.6em}")
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{css}</style></head><body><h1>{e(title)}</h1>"]
    for kind, *args in blocks:
        if kind in ("h2", "p"):
            parts.append(f"<{kind}>{e(args[0])}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in args[0]) + "</ul>")
        elif kind == "table":
            header, rows, caption = args
            body = "".join(f"<tr{' class=grp' if r[0] and i else ''}>" + "".join(f"<td>{e(str(c))}</td>" for c in r)
                           + "</tr>" for i, r in enumerate(rows))
            parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
                         + f"</tr></thead><tbody>{body}</tbody></table><p class=cap>{e(caption)}</p>")
        elif kind == "fig":
            data = base64.b64encode(figures[args[0]]).decode()
            parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{e(args[0])}'>"
                         f"<figcaption>{e(args[1])}</figcaption></figure>")
    return "".join(parts) + "</body></html>\n"


def render_md(title: str, blocks: list[tuple]) -> str:
    cell = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    lines = [f"# {title}", ""]
    for kind, *args in blocks:
        if kind == "h2":
            lines += [f"## {args[0]}", ""]
        elif kind == "p":
            lines += [args[0], ""]
        elif kind == "ul":
            lines += [f"- {i}" for i in args[0]] + [""]
        elif kind == "table":
            header, rows, caption = args
            lines += ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows] + ["", f"*{caption}*", ""]
        elif kind == "fig":
            lines += [f"![{args[0]}](figures/{args[0]})", "", f"*{args[1]}*", ""]
    return "\n".join(lines)


def _write_bytes(data: bytes, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _header(sweep: dict, sweep_dir: Path, runs: list[Run], metrics: pd.DataFrame, unfinished: list[str]) -> list[str]:
    planned = len(sweep["modes"]) * len(sweep["sizes"]) * len(sweep["seeds"])
    split = sweep.get("split", {})
    masks = sweep.get("masks") or {}
    items = [f"Dataset: {sweep.get('name', '?')} ({sweep.get('dataset', '?')}), modality {sweep.get('modality', '?')}, "
             f"structures: {', '.join(sweep['labels'])}",
             f"Preset: {sweep.get('preset', '?')}; modes {', '.join(sweep['modes'])}; training sizes N = "
             f"{', '.join(map(str, sweep['sizes']))}; seeds {', '.join(map(str, sweep['seeds']))}",
             f"Split: {len(split.get('pool', []))} training pool, {len(split.get('val', []))} validation, "
             f"{len(split.get('test', []))} test cases",
             f"Global masks: {masks.get('method', '?')} {json.dumps(masks.get('params', {}))}"]
    mq = sweep_dir / "mask_quality.csv"
    if mq.exists():
        q = pd.read_csv(mq)
        items.append(f"Mask quality vs union of labels ({len(q)} cases): Dice {fmt_mean_sd(q['dice'].mean(), q['dice'].std(), 3)}, "
                     f"volume error {fmt_mean_sd(q['volume_error_pct'].mean(), q['volume_error_pct'].std(), 1)} %, "
                     f"COM distance {fmt_mean_sd(q['com_mm'].mean(), q['com_mm'].std(), 1)} mm "
                     "(meaningful where the labels make up the whole organ, e.g. the heart; a head mask "
                     "is much larger than its labelled structures)")
    started = len(runs) + len(unfinished)
    listed = ", ".join(unfinished[:10]) + (", ..." if len(unfinished) > 10 else "")
    items.append(f"Jobs: {len(runs)} of {planned} planned finished; {len(unfinished)} started but unfinished "
                 f"(skipped{': ' + listed if unfinished else ''}); {max(planned - started, 0)} not started")
    if len(metrics):
        empty = int((metrics["status"] == "empty_pred").sum())
        items.append(f"Test results: {len(metrics)} (case × structure × run), {empty} empty predictions (Dice 0)")
    devices = sorted({str(r.result["device"]) for r in runs if r.result.get("device")})
    stops = pd.Series([r.result.get("stop_reason") for r in runs]).dropna().value_counts()
    items.append(f"Device: {', '.join(devices) or 'unknown'}; stop reasons: "
                 + (", ".join(f"{k} ×{v}" for k, v in stops.items()) or "unknown"))
    not_learned = [r.id for r in runs if r.result.get("learned") is False]
    if not_learned:
        items.append(f"Runs that did not learn (validation Dice never rose above the floor; their test results are "
                     f"in the tables as they are): {', '.join(not_learned)}")
    extended = [r for r in runs if r.result.get("extended_iterations")]
    if extended:
        items.append("Runs whose budget was extended, a structure not having been learned when it was decided "
                     "(training.extend_iterations, training.extend_from): " + "; ".join(
                         f"{r.id} (+{r.result['extended_iterations']} for {', '.join(r.result.get('extended_for') or [])}"
                         + (f" at iteration {r.result['extended_at']}" if r.result.get("extended_at") else "")
                         + f"; {r.result.get('iterations')} iterations run)" for r in extended))
    partly = [r for r in runs if r.result.get("learned") is not False and r.result.get("structures_not_learned")]
    if partly:
        at_budget = any(r.result.get("stop_reason") == "max_iterations" for r in partly)
        items.append("Runs in which a structure was not learned (its validation Dice at the kept checkpoint is at most the floor): "
                     + "; ".join(f"{r.id} ({', '.join(r.result['structures_not_learned'])})" for r in partly)
                     + (f" ({MORE_ITERATIONS})" if at_budget else ""))
    unusual = Counter(n["case"] for r in runs for n in (r.done or {}).get("predict_warnings") or [])
    if unusual:
        items.append("Test cases whose global mask was unusual at prediction, e.g. far larger or smaller than the "
                     "training masks (the warnings are in each job's done.json): "
                     + ", ".join(f"{case} ({n} of {len(runs)} runs)" for case, n in sorted(unusual.items())))
    cov = read_json(sweep_dir / "coverage.json").get("warnings", []) if (sweep_dir / "coverage.json").exists() else []
    if cov:
        items.append("Label coverage of the model grid (training pool and validation cases): " + "; ".join(cov))
    items.append(f"Sweep created {sweep.get('created', '?')}; report written "
                 f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    return items


def _vs_reference_blocks(vs: pd.DataFrame, modes, sizes, structures) -> list[tuple]:
    """Section: every mode against image+mask, Dice and COM distance differences with Wilcoxon p."""
    others = [m for m in modes if m != REFERENCE]
    if not others:
        return []

    def diff(value, p, n_pairs, digits):
        return "" if n_pairs == 0 else f"{value:+.{digits}f} ({p_text(p)}){' *' if p < ALPHA else ''}"

    def cells(n, s, mode):
        r = vs[(vs["n_train"] == n) & (vs["structure"] == s) & (vs["mode"] == mode)].iloc[0]
        return [diff(r["dice_diff"], r["p_dice"], r["n_pairs"], 3), diff(r["com_diff"], r["p_com"], r["n_com_pairs"], 1)]

    rows = [[n if i == 0 else "", "mean (all)" if s == "ALL" else s, *[c for m in others for c in cells(n, s, m)]]
            for n in sizes for i, s in enumerate([*structures, "ALL"])]
    header = ["N", "structure", *[f"{MODE_TITLE.get(m, m)} − image+mask: {what}" for m in others
                                  for what in ("Dice", "COM (mm)")]]
    blocks = [("h2", "Every mode vs image+mask"),
              ("table", header, rows,
               f"Mean difference mode − image+mask over pairs of the same test case, seed (and structure for "
               f"'mean (all)'): Dice (higher is better) and centre-of-mass distance in mm (lower is better; pairs "
               f"with a distance on both sides); two-sided Wilcoxon signed-rank p; * p < {ALPHA:g}; no p with "
               f"fewer than {MIN_PAIRS} pairs; no multiple-comparison correction.")]
    sentence = coords_statement(vs) if "image+coords" in modes else None
    if sentence:
        blocks.append(("p", sentence))
    return blocks


def _convergence_blocks(conv: pd.DataFrame) -> list[tuple]:
    """The convergence table: rows N x mode (modes that train), a column per validation-Dice target."""
    conv = conv[conv["n_runs"] > 0]
    if not len(conv):
        return []
    targets = sorted(conv["target"].unique())

    def cell(r) -> str:
        if not r.n_reached:
            return f"not reached [0/{r.n_runs}]"
        seconds = "" if pd.isna(r.seconds_mean) else f", {fmt_mean_sd(r.seconds_mean, r.seconds_sd, 0)} s"
        return f"{fmt_mean_sd(r.iterations_mean, r.iterations_sd, 0)} it{seconds} [{r.n_reached}/{r.n_runs}]"

    rows, first = [], None
    for (n, mode), sub in conv.groupby(["n_train", "mode"], sort=False):
        by_target = {r.target: r for r in sub.itertuples()}
        rows.append([n if n != first else "", MODE_TITLE.get(mode, mode), *[cell(by_target[t]) for t in targets]])
        first = n
    return [("h2", "Convergence"),
            ("table", ["N", "mode", *[f"to validation Dice {t:g}" for t in targets]], rows,
             "Iterations and training seconds until the validation Dice first reached the target: mean (sd) over "
             "the runs that reached it, [reached/runs]; resolution: the validation interval. The paper's Tables 5-6 "
             "measure the same effect as training time to convergence.")]


def _agreement_line(sweep: dict, sweep_dir: Path, rec: dict) -> str | None:
    """The other dataset's masks vs the sweep dataset's masks of the same subjects, from mask_agreement_<NAME>.csv."""
    here = Path(sweep.get("dataset", "?")).name
    path = sweep_dir / f"mask_agreement_{rec['name']}.csv"
    if not path.exists():
        return None
    q = pd.read_csv(path).dropna(subset=["dice"])
    if q.empty:
        return f"Global masks of {rec['name']}: no case id in common with {here}, not compared."
    own = (sweep.get("masks") or {}).get("method", "?")
    theirs = (rec.get("masks") or {}).get("method", "?")
    grid = "same grid" if q["same_grid"].all() else "resampled onto the training dataset's grid"
    return (f"Global masks, {rec['name']} ({theirs}) vs {here} ({own}), same case ids ({len(q)}): "
            f"Dice {fmt_mean_sd(q['dice'].mean(), q['dice'].std(), 3)}, range {q['dice'].min():.3f}–"
            f"{q['dice'].max():.3f} ({grid}); a mask-only model sees only this difference between the modalities.")


def _cross_items(sweep: dict, sweep_dir: Path, rec: dict) -> list[str]:
    """What was tested (cases, masks) and how alike the two datasets' masks are."""
    cases = rec.get("cases", [])
    if not cases:
        return []
    items = [f"{len(cases)} case{'s' if len(cases) != 1 else ''} of {rec.get('dataset', rec['name'])}: "
             f"{', '.join(cases[:8])}{' ...' if len(cases) > 8 else ''}; global masks "
             f"{(rec.get('masks') or {}).get('method', '?')}"]
    line = _agreement_line(sweep, sweep_dir, rec)
    return items + ([line] if line else [])


def _cross_rows(t: pd.DataFrame, modes, sizes, shown) -> list[list]:
    """Table rows N, mode, structure, own Dice, other Dice, ratio (rows without any result left out)."""
    rows = []
    for n in sizes:
        for mode in modes:
            for s in shown:
                r = t[(t["mode"] == mode) & (t["n_train"] == n) & (t["structure"] == s)]
                if r.empty or not (r.iloc[0]["own_n"] or r.iloc[0]["other_n"]):
                    continue
                r = r.iloc[0]
                rows.append([n, MODE_TITLE.get(mode, mode), "mean (all)" if s == "ALL" else s,
                             fmt_mean_sd(r["own_mean"], r["own_sd"], 3), fmt_mean_sd(r["other_mean"], r["other_sd"], 3),
                             "" if pd.isna(r["ratio"]) else f"{r['ratio']:.2f}"])
    return rows


def _cross_blocks(table: pd.DataFrame, sweep: dict, sweep_dir: Path, modes, sizes, structures) -> list[tuple]:
    """Section per --also-test dataset: Dice on the own test cases, on the other dataset's, and the ratio."""
    blocks = []
    own = f"{Path(sweep.get('dataset', '?')).name} ({sweep.get('modality', '?')})"  # folder names: both
    records = {r["name"]: r for r in sweep.get("also_test") or []}
    shown = [*structures, "ALL"] if len(structures) <= 5 else ["ALL"]  # per structure while the table stays short
    for name in sorted(set(table["tested_on"]) | set(records)):
        rec = records.get(name, {"name": name})
        other = f"{name} ({rec.get('modality', '?')})"
        t = table[table["tested_on"] == name]
        blocks.append(("h2", f"Trained on {own}, tested on {other}"))
        items = _cross_items(sweep, sweep_dir, rec)
        if items:
            blocks.append(("ul", items))
        if t.empty or not (t["other_n"] > 0).any():
            blocks.append(("p", f"No finished job has results on {name} yet."))
            continue
        blocks.append(("table", ["N", "mode", "structure", f"Dice on {own}", f"Dice on {other}", "ratio"],
                       _cross_rows(t, modes, sizes, shown),
                       f"Dice mean (sd) over test cases × seeds of the jobs that have both results; ratio = mean on "
                       f"{name} / mean on the own test cases. Written to cross_modality.csv."))
        blocks.append(("ul", cross_statements(t, own, other, MODE_TITLE)
                       + [f"holds: ratio ≥ {HOLDS:.0%}; collapses: ratio < {COLLAPSES:.0%}; drops: in between."]))
    return blocks


def make_report(sweep_dir: PathLike, out_dir: PathLike | None = None) -> Path:
    """Write report.html, report.md, the CSVs and figures of a (possibly partial) sweep; return the HTML path."""
    sweep_dir = Path(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    sweep = read_json(sweep_dir / "sweep.json", SWEEP_KEYS, "sweep record")
    runs, metrics, unfinished = load_runs(sweep_dir)
    structures = list(sweep["labels"])
    modes = order_modes(set(sweep["modes"]) | {r.mode for r in runs} | set(metrics["mode"].dropna()))
    sizes = sorted(set(sweep["sizes"]) | {r.n_train for r in runs})
    tables = {name: summarize_metric(metrics, col, modes, sizes, structures)
              for name, col in (("dice", "dice"), ("com", "com_mm"), ("hd95", "hd95_mm"))}
    tables["time"] = time_table(runs, modes, sizes)
    tables["convergence"] = convergence_table(runs, modes, sizes)
    others = [m for m in modes if m != "image"]
    if others:  # a sweep of image only has nothing to compare
        tables["comparison"] = comp = compare(metrics, sizes, structures, others)
    if REFERENCE in modes:
        tables["comparison_vs_image_mask"] = compare_to(metrics, sizes, structures, REFERENCE,
                                                        [m for m in modes if m != REFERENCE])
    also = load_also_test(runs)
    if len(also) or sweep.get("also_test"):
        tables["cross_modality"] = cross_table(metrics, also, modes, sizes, structures)
    for name, df in tables.items():
        write_text(df.to_csv(index=False), out / f"{name}.csv")

    def cell(table, mode, n, s, digits, missing=False):
        r = tables[table].set_index(["mode", "n_train", "structure"]).loc[(mode, n, s)]
        text = fmt_mean_sd(r["mean"], r["sd"], digits)
        return text + (f" [{int(r['n_missing'])} missing]" if missing and text and r["n_missing"] else "")

    def grouped(rows_for):  # rows N x structure, N printed on each group's first row
        return [[n if i == 0 else "", "mean (all)" if s == "ALL" else s, *rows_for(n, s)]
                for n in sizes for i, s in enumerate([*structures, "ALL"])]

    titles = [MODE_TITLE.get(m, m) for m in modes]
    blocks = [("ul", _header(sweep, sweep_dir, runs, metrics, unfinished)), ("h2", "Dice per structure"),
              ("table", ["N", "structure", *titles], grouped(lambda n, s: [cell("dice", m, n, s, 2) for m in modes]),
               "Dice, mean (sd) over test cases × seeds; empty predictions count as 0.")]
    blocks += [("h2", "Centre-of-mass distance and HD95 (mm)"),
               ("table", ["N", "structure", *[f"COM {t}" for t in titles], *[f"HD95 {t}" for t in titles]],
                grouped(lambda n, s: [cell(t, m, n, s, 1, True) for t in ("com", "hd95") for m in modes]),
                "mean (sd) in mm; [k missing]: results without a distance (empty prediction), left out of the mean.")]
    t = tables["time"]
    blocks += [("h2", "Training time"), ("table", ["N", "mode", "training time (s)", "best iteration",
                                                   "time to best (s)", "s per test case", "runs"],
                [[r.n_train if r.mode == modes[0] else "", MODE_TITLE.get(r.mode, r.mode),
                  fmt_mean_sd(r.train_time_s_mean, r.train_time_s_sd, 0), fmt_mean_sd(r.best_iteration_mean, r.best_iteration_sd, 0),
                  fmt_mean_sd(r.time_to_best_s_mean, r.time_to_best_s_sd, 0),
                  fmt_mean_sd(r.predict_s_per_case_mean, r.predict_s_per_case_sd, 1), r.n_runs]
                 for r in t.itertuples()],
                "mean (sd) over seeds, from each run's train/result.json and done.json; s per test case: prediction, "
                "or for multi-atlas its whole work per case (registrations, cache misses included, and fusion; "
                "it has no training).")]
    blocks += _convergence_blocks(tables["convergence"])

    def change(n, s, mode):
        r = comp[(comp["n_train"] == n) & (comp["structure"] == s) & (comp["mode"] == mode)].iloc[0]
        if r["n_pairs"] == 0:
            return ""
        if pd.isna(r["rel_change_pct"]):
            return f"n/a ({p_text(r['p_value'])})"
        star = " *" if r["p_value"] < ALPHA else ""
        return f"{r['rel_change_pct']:+.1f}% ({p_text(r['p_value'])}){star}"

    if others:
        blocks += [("h2", "Mask-based inputs vs image only"),
                   ("table", ["N", "structure", *[f"{MODE_TITLE.get(m, m)} vs image only" for m in others]],
                    grouped(lambda n, s: [change(n, s, m) for m in others]),
                    f"Relative change of mean Dice, 100·(mode − image)/image, over pairs of the same test case and seed "
                    f"(and structure for 'mean (all)'); two-sided Wilcoxon signed-rank p; * p < {ALPHA:g}; no p with fewer "
                    f"than {MIN_PAIRS} pairs; p = 1 when all differences are zero; no multiple-comparison correction."),
                   ("ul", [f"N={n}: " + "; ".join(statement(r) for _, r in comp[(comp["n_train"] == n)
                                                                                    & (comp["structure"] == "ALL")].iterrows())
                           for n in sizes])]
    if "comparison_vs_image_mask" in tables:
        blocks += _vs_reference_blocks(tables["comparison_vs_image_mask"], modes, sizes, structures)
    if "cross_modality" in tables:
        blocks += _cross_blocks(tables["cross_modality"], sweep, sweep_dir, modes, sizes, structures)

    figures = {"dice_vs_n.png": fig_dice_vs_n(tables["dice"], modes, sizes, structures)}
    loss = fig_loss_curves(runs, modes, sizes)
    if loss is not None:
        figures["loss_curves.png"] = loss
    val_dice = fig_val_dice(runs, modes, sizes)
    if val_dice is not None:
        figures["val_dice.png"] = val_dice
    blocks += [("h2", "Figures"), ("fig", "dice_vs_n.png", "Test Dice vs number of training cases N (log2 axis); "
                                   "error bars: sd over test cases × seeds.")]
    if loss is not None:
        blocks.append(("fig", "loss_curves.png", "Training (solid) and validation (dashed) loss per mode and N."))
    if val_dice is not None:
        blocks.append(("fig", "val_dice.png", "Validation Dice per mode and N; dotted: the convergence table's targets."))
    try:
        shown = overlays(sweep, runs, metrics, modes)
    except Exception as exc:  # a moved dataset must not cost the whole report
        shown = {}
        blocks.append(("p", f"Overlays skipped: {type(exc).__name__}: {exc}"))
    figures.update(shown)
    blocks += [("fig", name, f"{name[8:-4]}: ground truth and predictions on axial and coronal slices through the "
                             "structures (coloured: labels; white dashed: ground truth).") for name in shown]
    for name, data in figures.items():
        _write_bytes(data, out / "figures" / name)
    title = f"gbmseg sweep report: {sweep.get('name', sweep_dir.name)}"
    write_text(render_md(title, blocks), out / "report.md")
    return write_text(render_html(title, blocks, figures), out / "report.html")
