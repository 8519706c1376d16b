"""Global masks by registration to a template head (mask method ``register``).

As in the paper, each scan is registered to a template and thresholded; the template's own body
mask, carried into the scan, keeps only the anatomy the template says is there:

1. the template (a user file, the built-in head phantom, or the dataset's first case) and its
   body mask (the ``threshold``/``otsu`` method on the template) are made once per process;
2. :func:`register` aligns the scan to the template: rigid (Euler) then affine, Mattes mutual
   information (so a CT registers to an MR template and vice versa), 3 resolution levels, on
   copies resampled to ``spacing`` mm (4 mm by default) for speed, fixed sampling seed;
3. :func:`register_mask` thresholds the scan as ``threshold`` (CT, ``hu``) or ``otsu`` (MR) do,
   keeps voxels within ``margin_mm`` of the warped template mask (voxels outside the template's
   field of view are kept: the template knows nothing there), then opening, largest component,
   holes filled.

:func:`register_deformable` refines such a transform with a B-spline stage (multi-atlas
segmentation, :mod:`gbmseg.atlas`, registers each atlas to the target with both).

The transform maps *template* points to *scan* points (the SimpleITK convention for a transform
found with the scan as moving image), so ``sitk.Resample(scan, template, transform)`` puts the
scan in the template's standard frame. ``make_dataset_masks(ds, "register")`` writes it beside
each mask, where :meth:`Dataset.transform_path` says.

Example:
    >>> mask = make_mask(read_image("ct.nii.gz"), "register", {"template": "phantom"})  # doctest: +SKIP
    >>> tfm = sitk.ReadTransform("WORK/masksTr/head_001_to_template.tfm")               # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .dataset import Dataset
from .errors import GbmsegError
from .io import PathLike, read_image, to_array
from .morphology import DEFAULTS as MASK_DEFAULTS
from .morphology import as_mask, clean, image_mask, otsu_threshold
from .phantoms import make_phantom

STAGES = ("rigid", "affine")
PHANTOM_TEMPLATES = {"phantom": "head", "phantom:head": "head", "phantom:heart": "heart"}
# The built-in template: a phantom whose random pose is almost upright (rotations < 2 degrees),
# at 2.5 mm on a 240 mm field of view (the whole head and some neck).
PHANTOM_SEED, PHANTOM_SPACING, PHANTOM_SIZE = 99, 2.5, 96
SEED = 20240607  # metric sampling seed: registration is deterministic
WORK_SPACING = 4.0  # mm, the resolution registration runs at
MARGIN_MM = 20.0  # how far the scan's mask may reach beyond the warped template mask
BSPLINE_GRID_MM = 60.0  # control-point spacing of the deformable stage
BSPLINE_ITERATIONS = 20  # L-BFGS-B iterations per level of the deformable stage
BSPLINE_SAMPLING = 0.05  # fraction of the voxels the deformable stage samples
MAX_SCALE = 2.0  # an affine stage that scales by more than this (or less than 1/this) is dropped
# the recorded parameters of mask method ``register`` (``threshold``'s, plus the template and margin)
DEFAULTS = {"template": "phantom", **MASK_DEFAULTS["threshold"], "margin_mm": MARGIN_MM}


# -- registration -----------------------------------------------------------------------------
def register(moving: sitk.Image, fixed: sitk.Image, stages=STAGES, spacing: float = WORK_SPACING,
             seed: int = SEED) -> sitk.Transform:
    """Register ``moving`` onto ``fixed``: rigid, then affine; any modality pair.

    Both images are smoothed and resampled to ``spacing`` mm (never upsampled), intensities
    clipped to their 0.5-99.5 percentiles. The rigid stage starts from the foreground centroids
    (Otsu foreground, so CT and MR alike); both stages use Mattes mutual information (32 bins,
    25 % of the voxels sampled with ``seed``), shrink factors 4, 2, 1 with smoothing 2, 1, 0
    voxels, regular-step gradient descent; parameter scales in the spirit of ITK's physical-shift
    estimator (computed from the image extent). Runs single-threaded, so results are identical
    run to run.

    Args:
        moving: the image to align (e.g. a scan).
        fixed: the reference (e.g. the template).
        stages: ``("rigid",)``, ``("affine",)`` or ``("rigid", "affine")``.
        spacing: working resolution in mm.
        seed: metric sampling seed.

    Returns:
        A ``sitk.CompositeTransform`` (one component per stage, rigid first) mapping points of
        ``fixed`` to points of ``moving``: ``sitk.Resample(moving, fixed, transform)`` is
        ``moving`` seen in ``fixed``'s frame.
    """
    stages = tuple(stages)
    if not stages or any(s not in STAGES for s in stages) or list(stages) != sorted(stages, key=STAGES.index) \
            or len(set(stages)) != len(stages):
        raise GbmsegError(f"registration stages {stages!r}: choose ('rigid',), ('affine',) or ('rigid', 'affine')")
    with _one_thread():
        return _register(moving, fixed, stages, spacing, seed)


def _register(moving, fixed, stages, spacing, seed) -> sitk.CompositeTransform:
    f, m = _working_copy(fixed, spacing), _working_copy(moving, spacing)
    fc, mc = _centroid(f), _centroid(m)
    radius = _radius(f, fc)
    done: list[sitk.Transform] = []
    if "rigid" in stages:
        rigid = sitk.Euler3DTransform()
        rigid.SetCenter(fc)
        rigid.SetTranslation((mc - fc).tolist())
        done.append(_run(f, m, rigid, None, seed, iterations=200, step=4.0, radius=radius))
    if "affine" in stages:
        affine = sitk.AffineTransform(3)
        affine.SetCenter(fc)
        if not done:  # affine alone: start from the centroid shift
            affine.SetTranslation((mc - fc).tolist())
        initial = sitk.CompositeTransform(done) if done else None
        result = _run(f, m, affine, initial, seed, iterations=150, step=1.0, radius=radius)
        scales = np.linalg.svd(np.reshape(result.GetMatrix(), (3, 3)), compute_uv=False)
        if scales.max() > MAX_SCALE or scales.min() < 1 / MAX_SCALE:
            warnings.warn(f"affine registration diverged (scales {np.round(scales, 2).tolist()}); "
                          "keeping the rigid stage only", stacklevel=2)
        else:
            done.append(result)
    return sitk.CompositeTransform(done)


def _run(fixed, moving, transform, moving_initial, seed, iterations: int, step: float,
         radius: float) -> sitk.Transform:
    """Optimise ``transform`` (in place, and returned) at 3 levels; ``moving_initial`` is applied after it."""
    reg = _mattes(0.25, seed)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=step, minStep=1e-3, numberOfIterations=iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    # parameter scales as from physical shifts: a unit change of a rotation / matrix entry moves points
    # about ``radius`` mm, of a translation 1 mm (cheaper than ITK's estimator, which samples the image)
    n_lin = transform.GetNumberOfParameters() - 3
    reg.SetOptimizerScales([radius**2] * n_lin + [1.0] * 3)
    _execute(reg, fixed, moving, transform, moving_initial, [4, 2, 1], "registration")
    return transform


def _mattes(fraction: float, seed: int) -> sitk.ImageRegistrationMethod:
    """A registration method with Mattes mutual information (32 bins) on a random ``fraction`` of the
    voxels (sampled with ``seed``) and linear interpolation."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(fraction, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


def _execute(reg: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
             moving_initial: sitk.Transform | None, shrink: list[int], what: str) -> None:
    """Optimise ``transform`` in place over the levels ``shrink`` (smoothing half of each, in voxels);
    ``moving_initial`` is applied after it. A failure is one line."""
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([s // 2 for s in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    if moving_initial is not None:
        reg.SetMovingInitialTransform(moving_initial)
    reg.SetInitialTransform(transform, inPlace=True)
    try:
        reg.Execute(fixed, moving)
    except RuntimeError as exc:  # e.g. too few samples inside the moving image
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "failed"
        raise GbmsegError(f"{what} failed ({last})") from None


def register_deformable(moving: sitk.Image, fixed: sitk.Image, initial: sitk.Transform | None = None,
                        grid_mm: float = BSPLINE_GRID_MM, iterations: int = BSPLINE_ITERATIONS,
                        spacing: float = WORK_SPACING, seed: int = SEED) -> sitk.CompositeTransform:
    """Refine ``initial`` (e.g. :func:`register`'s rigid + affine) by a cubic B-spline stage.

    The B-spline's control points lie about ``grid_mm`` apart over ``fixed``'s extent. Mattes
    mutual information (32 bins, 5 % of the voxels sampled with ``seed``), L-BFGS-B for at most
    ``iterations`` per level, on copies at ``spacing`` mm (shrink factors 2, 1; smoothing 1, 0
    voxels); single-threaded, so results are identical run to run.

    Args:
        moving: the image to align (e.g. an atlas image).
        fixed: the reference (e.g. the target scan).
        initial: a transform of ``fixed`` points to ``moving`` points to start from (``None``: identity).
        grid_mm: control-point spacing in mm.
        iterations: optimiser iterations per level.
        spacing: working resolution in mm.
        seed: metric sampling seed.

    Returns:
        A ``sitk.CompositeTransform``: ``initial``'s components, then the B-spline (applied first),
        mapping ``fixed`` points to ``moving`` points like :func:`register`.

    Example:
        >>> affine = register(atlas, target)                             # doctest: +SKIP
        >>> tfm = register_deformable(atlas, target, affine)            # doctest: +SKIP
        >>> warped = sitk.Resample(atlas_label, target, tfm, sitk.sitkNearestNeighbor)  # doctest: +SKIP
    """
    with _one_thread():
        f, m = _working_copy(fixed, spacing), _working_copy(moving, spacing)
        extent = (np.array(f.GetSize()) - 1) * np.array(f.GetSpacing())
        mesh = np.maximum(np.round(extent / grid_mm), 1).astype(int)
        bspline = sitk.BSplineTransformInitializer(f, mesh.tolist(), 3)
        reg = _mattes(BSPLINE_SAMPLING, seed)
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=iterations,
                                 maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * iterations,
                                 costFunctionConvergenceFactor=1e7)
        _execute(reg, f, m, bspline, initial, [2, 1], "deformable registration")
    out = sitk.CompositeTransform(3)
    if initial is not None:
        out.AddTransform(initial)
    out.AddTransform(bspline)
    out.FlattenTransform()  # no composite within a composite: a .tfm file holds one level
    return out


@contextmanager
def _one_thread():
    """ITK's multi-threaded metric sums in a varying order, and its random sampler draws per thread:
    with more than one thread, results differ run to run (by ~1e-3 mm). One thread: bit-for-bit."""
    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)


def _working_copy(image: sitk.Image, spacing: float) -> sitk.Image:
    """Float32 copy at >= ``spacing`` mm (Gaussian pre-smoothing), intensities clipped to 0.5-99.5 %."""
    img = sitk.Cast(image, sitk.sitkFloat32)
    old = np.array(img.GetSpacing())
    new = np.maximum(old, spacing)
    if np.any(new > old * 1.01):
        sigma = np.maximum(0.5 * np.sqrt(new**2 - old**2), 0.01 * old)
        img = sitk.SmoothingRecursiveGaussian(img, sigma.tolist())
        size = np.maximum(np.round(np.array(img.GetSize()) * old / new), 1).astype(int)
        direction = np.reshape(img.GetDirection(), (3, 3))
        origin = np.array(img.GetOrigin()) + direction @ ((new - old) / 2)  # same extent
        img = sitk.Resample(img, size.tolist(), sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                            new.tolist(), img.GetDirection(), 0.0, sitk.sitkFloat32)
    lo, hi = np.percentile(to_array(img), [0.5, 99.5])
    return sitk.Clamp(img, sitk.sitkFloat32, float(lo), float(max(hi, lo + 1e-3)))


def _radius(image: sitk.Image, centre: np.ndarray) -> float:
    """RMS distance (mm) of the image's corners from ``centre``, halved: a typical lever arm."""
    size = np.array(image.GetSize()) - 1
    corners = [image.TransformContinuousIndexToPhysicalPoint((size * c).tolist())
               for c in np.stack(np.meshgrid(*[[0, 1]] * 3), -1).reshape(-1, 3)]
    return float(np.sqrt(((np.array(corners) - centre) ** 2).sum(1).mean()) / 2)


def _centroid(image: sitk.Image) -> np.ndarray:
    """World coordinates of the centroid of the Otsu foreground (the image centre if none)."""
    arr = to_array(image)
    idx = np.argwhere(arr > otsu_threshold(arr))
    centre = idx.mean(0) if len(idx) else (np.array(arr.shape) - 1) / 2
    return np.array(image.TransformContinuousIndexToPhysicalPoint(centre[::-1].tolist()))


# -- templates --------------------------------------------------------------------------------
def template_image(source: str | Path | None, dataset: Dataset | None, modality: str) -> sitk.Image:
    """The registration template.

    Args:
        source: an image file; ``"phantom"`` (or ``"phantom:head"``, ``"phantom:heart"``): the
            built-in phantom of ``modality`` (seed 99, almost upright, 2.5 mm, 96^3 voxels); a case
            id of ``dataset``; or ``None``: the first case of ``dataset``.
        dataset: needed for ``None`` and case ids.
        modality: ``"CT"`` or ``"MR"`` (used by phantom templates).
    """
    key = str(source) if source is not None else None
    if key in PHANTOM_TEMPLATES:
        return make_phantom(PHANTOM_TEMPLATES[key], PHANTOM_SEED, "CT" if modality == "CT" else "MR",
                            PHANTOM_SPACING, PHANTOM_SIZE)[0]
    return read_image(template_path(source, dataset))


def template_path(source: str | Path | None, dataset: Dataset | None) -> Path:
    """The absolute image path a file/case/``None`` template source stands for."""
    if source is None or (dataset is not None and str(source) in dataset.cases):
        if dataset is None:
            raise GbmsegError("template None means the dataset's first case, but no dataset was given")
        return Path(dataset.image_path(str(source) if source is not None else dataset.cases[0])).resolve()
    path = Path(source)
    if not path.exists():
        raise GbmsegError(f"{path}: registration template not found (give an image file, 'phantom', "
                          "a case id, or null for the dataset's first case)")
    return path.resolve()


def template_mask(template: sitk.Image) -> sitk.Image:
    """The template's body mask: the ``threshold`` method for CT-like intensities, else ``otsu``."""
    return image_mask(template, "threshold" if guess_modality(template) == "CT" else "otsu")[0]


_TEMPLATES: dict[tuple, tuple[sitk.Image, sitk.Image]] = {}


def load_template(source: str | Path | None, modality: str, dataset: Dataset | None = None
                  ) -> tuple[sitk.Image, sitk.Image]:
    """``(template, template mask)``, made once per process (cached by source, modality, file time)."""
    stamp = None
    if str(source) not in PHANTOM_TEMPLATES:
        path = template_path(source, dataset)
        source, stamp = str(path), path.stat().st_mtime_ns
    key = (str(source), modality, stamp)
    if key not in _TEMPLATES:
        image = template_image(source, dataset, modality)
        _TEMPLATES.clear()  # one template at a time is enough
        _TEMPLATES[key] = (image, template_mask(image))
    return _TEMPLATES[key]


def guess_modality(image: sitk.Image) -> str:
    """``"CT"`` when the image holds Hounsfield-like air (1st percentile below -500), else ``"MR"``."""
    return "CT" if np.percentile(to_array(image), 1) < -500 else "MR"


# -- masks ------------------------------------------------------------------------------------
def register_mask(image: sitk.Image, template: sitk.Image, template_mask: sitk.Image,
                  params: dict | None = None) -> tuple[sitk.Image, sitk.Transform]:
    """Global mask of ``image`` via the template, and the image -> template registration.

    Params (all optional): ``modality`` (``CT``/``MR``; guessed from the intensities if absent),
    ``hu`` (CT threshold, default -300), ``opening_vox`` (1), ``margin_mm`` (20, how far the mask
    may reach beyond the warped template mask), ``stages``, ``spacing`` (see :func:`register`).

    Returns:
        ``(mask, transform)``: uint8 0/1 mask with the image's geometry; the transform maps
        template points to image points.
    """
    p = {**{k: v for k, v in DEFAULTS.items() if k != "template"}, "stages": STAGES, "spacing": WORK_SPACING,
         **(params or {})}
    modality = p.get("modality") or guess_modality(image)
    transform = register(image, template, stages=p["stages"], spacing=float(p["spacing"]))
    arr = to_array(image).astype(np.float32)
    fg = arr > (float(p["hu"]) if modality == "CT" else otsu_threshold(arr))
    # the template's body, carried into the image grid; 2 = outside the template's field of view
    body = sitk.Resample(sitk.Cast(template_mask > 0, sitk.sitkUInt8), image, transform.GetInverse(),
                         sitk.sitkNearestNeighbor, 2, sitk.sitkUInt8)
    body = to_array(body)
    if not (body == 1).any():
        raise GbmsegError("registration put the template's body outside the image; check the template")
    spacing_zyx = image.GetSpacing()[::-1]
    near = ndimage.distance_transform_edt(body != 1, sampling=spacing_zyx) <= float(p["margin_mm"])
    fg &= near | (body == 2)
    fg = clean(fg, p["opening_vox"], f"mask method 'register' found no foreground inside the warped template ({p})")
    return as_mask(fg, image), transform


def mask_from_params(image: sitk.Image, params: dict, label: sitk.Image | None = None
                     ) -> tuple[sitk.Image, sitk.Transform]:
    """:func:`register_mask` with the template named in ``params["template"]`` (``"phantom"`` or a path)."""
    modality = params.get("modality") or guess_modality(image)
    template, tmask = load_template(params.get("template", "phantom"), modality)
    return register_mask(image, template, tmask, {**params, "modality": modality})


def transform_from_params(image: sitk.Image, params: dict) -> sitk.Transform:
    """Only the registration of ``image`` to the template named in ``params`` (template -> image points);
    used when a global mask is given but the crop is taken in the template's standard frame."""
    modality = params.get("modality") or guess_modality(image)
    template, _ = load_template(params.get("template", "phantom"), modality)
    return register(image, template, stages=params.get("stages", STAGES),
                    spacing=float(params.get("spacing", WORK_SPACING)))


# -- datasets ---------------------------------------------------------------------------------
def resolve_params(params: dict, dataset: Dataset) -> dict:
    """Dataset-level params as recorded in ``masks.json``: the dataset's modality, and the template
    as ``"phantom..."`` or an absolute image path (a ``None``/case-id template becomes that case's
    image path), so prediction can reload it without the dataset."""
    p = {**params, "modality": params.get("modality") or dataset.modality}
    if str(p.get("template")) not in PHANTOM_TEMPLATES:
        p["template"] = str(template_path(p.get("template"), dataset))
    return p
