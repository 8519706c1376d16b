"""Procedural head and heart phantoms: the built-in data of gbmseg.

Each phantom is a CT (Hounsfield units, int16) or T1-like MR (float32) volume with a
uint8 label map of identical geometry, carrying the label ids of the real datasets:

* ``head``: background 0, brainstem 1, eye_left 2, eye_right 3 (scalp, skull, brain,
  ventricles, cerebellum, brainstem and cord, orbits with fat and eyes, face and neck);
* ``heart``: background 0, myocardium 1, left_atrium 2, left_ventricle 3, right_atrium 4,
  right_ventricle 5, ascending_aorta 6, pulmonary_artery 7 (thorax with fat, muscle,
  ribs, sternum, spine, lungs, descending aorta, and the heart).

The anatomy is drawn in a canonical frame (millimetres, LPS: +x patient left, +y posterior,
+z superior) and sampled on a grid warped by a random pose (rotation, scale, translation)
plus a smooth random displacement, so tissue and label maps always move together.
Everything is a function of ``(kind, seed, modality, spacing, size)``; the anatomy does not
depend on the modality, so CT and MR phantoms of one seed share their label map.

Example:
    >>> image, label = make_phantom("head", seed=3, spacing=4.0, size=48)
    >>> image.GetSize(), label.GetPixelIDTypeAsString()
    ((48, 48, 48), '8-bit unsigned integer')
    >>> write_phantom_dataset("/tmp/Dataset901_Head", n=4)      # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import GbmsegError
from .io import PathLike, write_image, write_text
from .parallel import parallel_map

LABELS: dict[str, dict[str, int]] = {
    "head": {"background": 0, "brainstem": 1, "eye_left": 2, "eye_right": 3},
    "heart": {
        "background": 0, "myocardium": 1, "left_atrium": 2, "left_ventricle": 3,
        "right_atrium": 4, "right_ventricle": 5, "ascending_aorta": 6, "pulmonary_artery": 7,
    },
}
MODALITIES = ("CT", "MR")
REFERENCE_FOV_MM = 192.0  # anatomy is shrunk when the field of view is smaller than this
MIN_SIZE = 16

# Tissue classes and their intensities: (mean, between-subject sd). BONE is cortical bone,
# SPONGY cancellous bone with marrow (vertebral bodies, the skull's diploe, orbit walls).
AIR, FAT, SOFT, BONE, SPONGY, CSF, GM, WM, STEM, VITREOUS, BLOOD, MYO, LUNG = range(13)
CT_HU = {AIR: (-1000, 0), FAT: (-95, 10), SOFT: (45, 5), BONE: (1100, 150), SPONGY: (750, 60),
         CSF: (8, 3), GM: (40, 3), WM: (30, 3), STEM: (33, 3), VITREOUS: (12, 3),
         BLOOD: (300, 25), MYO: (100, 10), LUNG: (-820, 30)}
MR_T1 = {AIR: (0, 0), FAT: (950, 40), SOFT: (380, 30), BONE: (60, 15), SPONGY: (500, 40),
         CSF: (120, 20), GM: (450, 25), WM: (650, 25), STEM: (600, 25), VITREOUS: (100, 20),
         BLOOD: (750, 50), MYO: (330, 25), LUNG: (40, 10)}

HEAD_RADII = np.array([68.0, 82.0, 76.0])  # outer scalp ellipsoid, mm (x, y, z)
HEAD_EXTENT = HEAD_RADII + (0, 4, 0)  # the face sticks out a little in front


def make_phantom(
    kind: str, seed: int, modality: str = "CT", spacing: float = 2.0, size: int = 96
) -> tuple[sitk.Image, sitk.Image]:
    """Generate one phantom case.

    Args:
        kind: ``"head"`` or ``"heart"``.
        seed: non-negative integer; the case is a deterministic function of all arguments.
        modality: ``"CT"`` (int16 Hounsfield units) or ``"MR"`` (float32, T1-like, bias field).
        spacing: isotropic voxel spacing in mm.
        size: voxels per axis; the volume is centred at world 0 with identity direction.

    Returns:
        ``(image, label)`` with identical geometry; the label is uint8 with the ids of
        :data:`LABELS` ``[kind]``.

    Example:
        >>> ct, lab = make_phantom("heart", seed=0, spacing=4.0, size=48)
        >>> int(sitk.GetArrayFromImage(lab).max())
        7
    """
    modality = _check(kind, modality, spacing, size, seed)
    fov = spacing * size
    kind_id = list(LABELS).index(kind)
    rng = np.random.default_rng([seed, kind_id])  # anatomy: shared by CT and MR
    c = ((np.arange(size) - (size - 1) / 2) * spacing).astype(np.float32)
    w = (c[None, None, :], c[None, :, None], c[:, None, None])  # world x, y, z on [z, y, x]
    p = _canonical_grid(rng, w, kind, fov)
    tissue, label = (_head if kind == "head" else _heart)(p, rng)
    rng_img = np.random.default_rng([seed, kind_id, MODALITIES.index(modality)])
    array = _render(tissue, modality, rng_img, w)
    image, lab = sitk.GetImageFromArray(array), sitk.GetImageFromArray(label)
    for im in (image, lab):
        im.SetSpacing((float(spacing),) * 3)
        im.SetOrigin((float(c[0]),) * 3)
    return image, lab


def write_phantom_dataset(
    out_dir: PathLike, kind: str = "head", n: int = 20, modality: str = "CT", seed: int = 0,
    spacing: float = 2.0, size: int = 96, workers: int = 1,
) -> Path:
    """Write ``n`` phantoms as an nnU-Net v2 raw dataset and return ``out_dir``.

    Layout: ``dataset.json``, ``imagesTr/<kind>_<iii>_0000.nii.gz`` and
    ``labelsTr/<kind>_<iii>.nii.gz`` with ``iii = 001 .. n``. Case ``i`` is
    ``make_phantom(kind, seed * 1000 + i, ...)``, so cases are independent and the dataset
    is deterministic. ``workers > 1`` generates cases in a process pool.

    Example:
        >>> root = write_phantom_dataset("/tmp/Dataset902_Heart", kind="heart", n=2,
        ...                              spacing=4.0, size=48)          # doctest: +SKIP
        >>> sorted(p.name for p in (root / "labelsTr").iterdir())       # doctest: +SKIP
        ['heart_001.nii.gz', 'heart_002.nii.gz']
    """
    modality = _check(kind, modality, spacing, size, seed)
    if not _is_int(n) or n < 1:
        raise GbmsegError(f"n={n!r}: the number of phantom cases must be an integer >= 1")
    if not _is_int(workers) or workers < 1:
        raise GbmsegError(f"workers={workers!r}: must be an integer >= 1")
    out = Path(out_dir)
    jobs = [(out, kind, i, seed * 1000 + i, modality, spacing, size) for i in range(1, n + 1)]
    parallel_map(_write_case, jobs, workers, desc="phantoms", progress=False)
    meta = {
        "name": f"Phantom{kind.capitalize()}{modality}",
        "description": f"gbmseg procedural {kind} phantoms ({modality}, seed {seed}, "
                       f"{spacing} mm, {size}^3 voxels)",
        "channel_names": {"0": modality},
        "labels": LABELS[kind],
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    write_text(json.dumps(meta, indent=2) + "\n", out / "dataset.json")
    return out


def _write_case(job: tuple) -> None:
    out, kind, i, case_seed, modality, spacing, size = job
    image, label = make_phantom(kind, case_seed, modality, spacing, size)
    write_image(image, out / "imagesTr" / f"{kind}_{i:03d}_0000.nii.gz")
    write_image(label, out / "labelsTr" / f"{kind}_{i:03d}.nii.gz")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check(kind, modality, spacing, size, seed) -> str:
    """Validate the common arguments; return the normalised modality name."""
    if kind not in LABELS:
        raise GbmsegError(f"phantom kind {kind!r} unknown; choose one of {', '.join(LABELS)}")
    mod = str(modality).upper()
    if mod not in MODALITIES:
        raise GbmsegError(f"modality {modality!r} unknown; choose one of {', '.join(MODALITIES)}")
    if not _is_int(size) or size < MIN_SIZE:
        raise GbmsegError(f"size={size!r}: phantoms need an integer size >= {MIN_SIZE} voxels")
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float, np.floating)) \
            or not math.isfinite(spacing) or spacing <= 0:
        raise GbmsegError(f"spacing={spacing!r}: must be a positive number of millimetres")
    if not _is_int(seed) or seed < 0:
        raise GbmsegError(f"seed={seed!r}: must be a non-negative integer")
    return mod


# --------------------------------------------------------------------------- geometry
def _rotation(angles: np.ndarray) -> np.ndarray:
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(rng, w, amplitude: float, wavelength: tuple[float, float], terms: int = 3):
    """Sum of random plane waves: a smooth, low-frequency scalar field on the grid ``w``."""
    field = np.zeros(np.broadcast_shapes(*(a.shape for a in w)), np.float32)
    for _ in range(terms):
        k = rng.normal(size=3)
        k *= 2 * np.pi / (np.linalg.norm(k) * rng.uniform(*wavelength))
        phase = k[0] * w[0] + k[1] * w[1] + (k[2] * w[2] + rng.uniform(0, 2 * np.pi))
        field += np.float32(amplitude * rng.uniform(0.5, 1.0)) * np.sin(phase)
    return field


def _canonical_grid(rng, w, kind: str, fov: float):
    """Canonical (anatomy-frame) coordinates of every voxel: inverse random pose + warp."""
    zoom = min(1.0, fov / REFERENCE_FOV_MM)
    m = _rotation(np.radians(rng.uniform(-12, 12, 3)))
    m = m @ np.diag(rng.uniform(0.9, 1.1) * rng.uniform(0.95, 1.05, 3)) * zoom
    if kind == "head":  # shrink if needed so the cranium stays inside, with air around it
        limit = 0.46 * fov
        m *= min(1.0, (limit / np.sqrt(((m * HEAD_EXTENT) ** 2).sum(1))).min())
        room = np.maximum(limit - np.sqrt(((m * HEAD_EXTENT) ** 2).sum(1)), 0)
    else:
        room = np.full(3, np.inf)
    t = rng.uniform(-1, 1, 3) * np.minimum(room, 0.1 * fov)
    inv = np.linalg.inv(m).astype(np.float32)
    d = [w[i] - np.float32(t[i]) for i in range(3)]
    warp = [_smooth_field(rng, w, 1.5 * zoom, (80 * zoom, 200 * zoom)) for _ in range(3)]
    return tuple(inv[k, 0] * d[0] + inv[k, 1] * d[1] + inv[k, 2] * d[2] + warp[k] for k in range(3))


def _ellipsoid(p, centre, radii, axes=None, grow: float = 0.0):
    """Mask of an ellipsoid; ``axes`` rows are its principal directions; inf radius = cylinder."""
    d = [p[i] - np.float32(centre[i]) for i in range(3)]
    if axes is not None:
        d = [axes[k, 0] * d[0] + axes[k, 1] * d[1] + axes[k, 2] * d[2] for k in range(3)]
    return sum((d[i] * np.float32(1 / (radii[i] + grow))) ** 2 for i in range(3)) < 1


def _tube(p, points, radii):
    """Mask of a polyline tube whose radius varies linearly between the points."""
    points = np.asarray(points, float)
    inside = np.zeros(p[0].shape, bool)
    for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        v = b - a
        d = [p[i] - np.float32(a[i]) for i in range(3)]
        t = np.clip(sum(d[i] * np.float32(v[i] / (v @ v)) for i in range(3)), 0, 1)
        dist2 = sum((d[i] - t * np.float32(v[i])) ** 2 for i in range(3))
        inside |= dist2 < (ra + t * np.float32(rb - ra)) ** 2
    return inside


def _frame(axis) -> np.ndarray:
    """Orthonormal rows: ``axis`` first, then two directions perpendicular to it."""
    u = np.asarray(axis, float) / np.linalg.norm(axis)
    v = np.cross(u, [0.0, 0.0, 1.0])
    v /= np.linalg.norm(v)
    return np.stack([u, v, np.cross(v, u)])


# --------------------------------------------------------------------------- anatomy
def _head(p, rng):
    x, y, z = p
    tissue = np.zeros(x.shape, np.uint8)
    label = np.zeros(x.shape, np.uint8)

    def jit(c, sd=2.0):
        return np.asarray(c, float) + rng.normal(0, sd, 3)

    def var(r, rel=0.05):
        return np.asarray(r, float) * rng.uniform(1 - rel, 1 + rel, len(r))

    r = HEAD_RADII
    floor = -38 + rng.normal(0, 2) - 0.25 * y  # skull base: anterior fossa high, posterior low
    neck = _ellipsoid(p, (0, 15, 0), (50, 48, np.inf)) & (z < -35)
    tissue[_ellipsoid(p, (0, 0, 0), r) | neck] = SOFT  # skin
    tissue[_ellipsoid(p, (0, 0, 0), r, grow=-2) | _ellipsoid(p, (0, 15, 0), (46, 44, np.inf))
           & (z < -35)] = FAT
    tissue[neck & _ellipsoid(p, (0, 15, 0), (42, 40, np.inf))] = SOFT  # neck muscles
    tissue[_ellipsoid(p, jit((0, -35, -52)), var((48, 38, 40)))] = SOFT  # face and jaw
    tissue[_ellipsoid(p, (0, -45, -38), (58, 34, 32))] = SOFT  # brow and cheeks
    skull = _ellipsoid(p, (0, 0, 0), r, grow=-5)
    tissue[skull] = BONE
    tissue[_ellipsoid(p, (0, 0, 0), r, grow=-7) & ~_ellipsoid(p, (0, 0, 0), r, grow=-9)] = SPONGY
    tissue[_ellipsoid(p, (0, 0, 0), r, grow=-3) & (z < floor - 8)] = SOFT  # below the skull base
    cavity = _ellipsoid(p, (0, 0, 0), r, grow=-11) & (z > floor)
    tissue[cavity] = CSF
    brain = _ellipsoid(p, (0, 0, 0), r, grow=-13) & (z > floor + 2)
    tissue[brain] = GM
    tissue[brain & _ellipsoid(p, jit((0, 3, 10)), var((44, 56, 40)))] = WM
    tissue[cavity & _ellipsoid(p, jit((0, 46, -36)), var((46, 24, 18)))] = GM  # cerebellum
    for side in (-1, 1):  # lateral ventricles
        tissue[_ellipsoid(p, jit((side * 9, 4, 16), 1), var((6, 26, 9), 0.15))] = CSF
    # spinal canal, vertebrae, cord, pharynx
    canal = [(0, 16, -40), (0, 22, -70), (0, 26, -300)]
    tissue[_tube(p, canal[1:], (16, 16))] = SPONGY
    tissue[_ellipsoid(p, (0, -2, 0), (16, 12, np.inf)) & (z < -70)] = SPONGY
    tissue[_tube(p, canal, (11, 9, 9))] = CSF
    tissue[_tube(p, canal, (6, 6, 6))] = STEM
    tissue[_tube(p, [(0, -26, -50), (0, -18, -300)], (7, 7))] = AIR  # pharynx
    for side in (-1, 1):  # maxillary sinuses and nasal cavity
        tissue[_ellipsoid(p, jit((side * 20, -44, -58), 1.5), var((11, 14, 13), 0.1))] = AIR
    tissue[_ellipsoid(p, (0, -50, -52), (5, 18, 15))] = AIR
    # brainstem: from the brain centre down towards the foramen magnum, a bit posterior
    top, bottom = jit((0, 6, -2)), jit((0, 18, -56))
    radii = np.array([13.0, 11.0, 8.0]) * rng.uniform(0.9, 1.1)  # pons wide, medulla narrow
    stem = _tube(p, [top, (top + bottom) / 2, bottom], radii)
    tissue[stem], label[stem] = STEM, LABELS["head"]["brainstem"]
    for side, name in ((1, "eye_left"), (-1, "eye_right")):  # patient left is +x
        eye = jit((side * 31, -55, -32), 1.5)
        tissue[_ellipsoid(p, eye + (0, 8, 0), (19, 24, 17))] = SPONGY  # orbit walls
        tissue[_ellipsoid(p, eye + (0, 8, 0), (16, 21, 14))] = FAT  # orbital fat
        tissue[_tube(p, [eye, (side * 10, -12, -28)], (2.5, 2.5))] = SOFT  # optic nerve
        tissue[_ellipsoid(p, eye, (18, 18, 18)) & (y < eye[1] + 4)] = SOFT  # eyelids
        globe = _ellipsoid(p, eye, var((12, 12, 12), 0.06))
        tissue[globe], label[globe] = VITREOUS, LABELS["head"][name]
        tissue[_ellipsoid(p, eye + (0, -9, 0), (4, 2, 4))] = SOFT  # lens
    return tissue, label


def _heart(p, rng):
    x, y, z = p
    tissue = np.zeros(x.shape, np.uint8)
    label = np.zeros(x.shape, np.uint8)
    ids = LABELS["heart"]

    def jit(c, sd=2.5):
        return np.asarray(c, float) + rng.normal(0, sd, 3)

    def var(r, rel=0.07):
        return np.asarray(r, float) * rng.uniform(1 - rel, 1 + rel, len(r))

    body_c, body_r = (0, 25, 0), var((140, 98, np.inf), 0.05)
    tissue[_ellipsoid(p, body_c, body_r)] = FAT
    tissue[_ellipsoid(p, body_c, body_r, grow=-10)] = SOFT  # chest wall muscles
    ribs = (np.sin(z * np.float32(2 * np.pi / 26) + rng.uniform(0, 2 * np.pi)) > 0.3) & (y > -50)
    tissue[_ellipsoid(p, body_c, body_r, grow=-14) & ribs] = BONE
    cavity = _ellipsoid(p, body_c, body_r, grow=-22)
    tissue[cavity] = FAT  # mediastinal fat
    mediastinum = np.abs(x - 4) < 7  # keeps the heart attached to the chest wall and spine
    for side in (-1, 1):
        lung = _ellipsoid(p, jit((side * 62, 28, 0), 4), var((66, 78, 160)))
        tissue[cavity & lung & ~mediastinum] = LUNG
    tissue[_ellipsoid(p, (0, -62, 0), (14, 6, np.inf))] = BONE  # sternum
    tissue[_ellipsoid(p, jit((0, 84, 0)), (20, 17, np.inf))] = SPONGY  # vertebral bodies
    tissue[_ellipsoid(p, jit((24, 58, 0)), (12, 12, np.inf))] = BLOOD  # descending aorta

    # heart frame: u = long axis from the base (right, posterior, superior) to the apex,
    # v = from the LV towards the RV (right, anterior), w = v x u (left, anterior, superior)
    ax = _frame(np.array([0.55, -0.5, -0.65]) + rng.normal(0, 0.08, 3))
    lv = jit((20, -10, -10))

    def at(a, b, c, sd=2.5):  # a point given in the heart frame, jittered
        return lv + np.array([a, b, c]) @ ax + rng.normal(0, sd, 3)

    chambers = [  # (label, centre, radii, axes), painted in this order
        ("right_ventricle", at(-4, 24, 0), var((38, 28, 36)), ax),
        ("right_atrium", at(-42, 0, 0) + jit((-30, -4, -8)), var((24, 26, 28)), None),
        ("myocardium", lv + 3 * ax[0], var((48, 30, 30), 0.04), ax),
        ("left_ventricle", lv, var((42, 21, 21)), ax),
        ("left_atrium", at(-44, 0, 0) + jit((6, 18, 0)), var((30, 21, 22)), None),
    ]
    pa_root = at(-30, 28, 24)  # pulmonary valve: anterior, superior, left of the aorta
    pa_fork = pa_root + jit((18, 26, 20))
    vessels = [  # (label, polyline, radii)
        ("pulmonary_artery", [pa_root, pa_root + jit((8, 2, 20)), pa_fork], var((13, 13, 12))),
        ("pulmonary_artery", [pa_fork, pa_fork + jit((34, 18, -4))], (10, 9)),
        ("pulmonary_artery", [pa_fork, pa_fork + jit((-58, 44, -10))], (10, 9)),
        ("ascending_aorta", [at(-30, 0, 0), at(-44, 0, 0) + jit((-12, -14, 20)),
                             at(-44, 0, 0) + jit((-12, -8, 52)), jit((8, 30, 100))],
         var((14, 15, 14, 13), 0.05)),
    ]
    shapes = [(n, _ellipsoid, (c, r, a)) for n, c, r, a in chambers]
    shapes += [(n, _tube, (pts, r)) for n, pts, r in vessels]
    walls = np.zeros(x.shape, bool)
    for name, centre, radii, axes in chambers:  # pericardial fat, then thin walls
        tissue[_ellipsoid(p, centre, radii, axes, grow=9)] = FAT
        if name not in ("myocardium", "left_ventricle"):
            walls |= _ellipsoid(p, centre, radii, axes, grow=3)
    for _, points, radii in vessels:
        tissue[_tube(p, points, np.asarray(radii) + 6)] = FAT
    tissue[walls] = SOFT
    for name, shape, args in shapes:
        mask = shape(p, *args)
        tissue[mask] = MYO if name == "myocardium" else BLOOD
        label[mask] = ids[name]
    return tissue, label


# --------------------------------------------------------------------------- intensities
def _render(tissue, modality: str, rng, w) -> np.ndarray:
    """Tissue map -> intensities: per-case tissue values, partial-volume blur, noise."""
    table = CT_HU if modality == "CT" else MR_T1
    lut = np.array([table[t][0] + table[t][1] * rng.standard_normal() for t in range(len(table))],
                   np.float32)
    image = ndimage.gaussian_filter(lut[tissue], sigma=rng.uniform(0.5, 0.8))
    noise = rng.uniform(10, 30) if modality == "CT" else rng.uniform(10, 25)
    if modality == "CT":
        image += rng.standard_normal(image.shape, np.float32) * np.float32(noise)
        return np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    image *= np.exp(_smooth_field(rng, w, 0.1, (250, 500), terms=2))  # bias field
    real = image + rng.standard_normal(image.shape, np.float32) * np.float32(noise)
    imag = rng.standard_normal(image.shape, np.float32) * np.float32(noise)
    return np.sqrt(real * real + imag * imag).astype(np.float32)  # Rician magnitude
