"""Command line: ``gbmseg <command> ...``. Each command is a thin wrapper over one module.

Commands import their module when they run (so ``gbmseg --help`` does not load torch); every such
import points down the layers like any other (see ``tests/test_layers.py``).

Errors in the user's input (:class:`GbmsegError`) are printed as one line naming the file and the
problem, with exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import GbmsegError, Interrupted, one_line_warnings


def _cases(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _dataset(args):
    """The dataset of a command that writes into its work folder (checked writable first)."""
    from .dataset import Dataset

    ds = Dataset(args.dataset, work=args.work)
    ds.check_writable()
    return ds


def _writable(*paths) -> None:
    """Check output paths before any work, so a long run does not fail at its last step."""
    from .io import check_writable

    for path in paths:
        if path is not None:
            check_writable(path)


# -- commands ---------------------------------------------------------------------------------
def cmd_masks(args) -> None:
    from .global_masks import make_dataset_masks

    ds = _dataset(args)
    params = json.loads(args.params) if args.params else {}
    if args.model:
        params["model"] = args.model
    if args.template:
        params["template"] = args.template
    rec = make_dataset_masks(ds, args.method, params, workers=args.workers, overwrite=args.overwrite)
    print(f"masks ({rec['method']}) written to {ds.mask_dir}")


def cmd_mask_model(args) -> None:
    from .mask_model import train_mask_model

    ds = _dataset(args)
    _writable(args.output)
    result = train_mask_model(ds, args.output, preset=args.preset, overrides=args.set, train_cases=_cases(args.train),
                              val_cases=_cases(args.val), seed=args.seed, device=args.device)
    print(json.dumps(result, indent=2))
    print(f"mask model written to {args.output}; use it with: gbmseg masks DATASET --method model --model {args.output}")


def cmd_preprocess(args) -> None:
    from .config import load_config
    from .preprocessing import preprocess_dataset

    ds = _dataset(args)
    cfg = load_config(args.preset, args.set)
    out = preprocess_dataset(ds, cfg, workers=args.workers)
    print(f"preprocessed {len(ds.cases)} cases into {out}")
    _warn_coverage(out)


def cmd_train(args) -> None:
    from . import distributed
    from .config import channels_for_mode, load_config
    from .dataset import split_cases
    from .network import select_device
    from .preprocessing import preprocess_dataset
    from .training import train

    ds = _dataset(args)
    _writable(args.output)
    channels_for_mode(args.mode)
    cfg = load_config(args.preset, args.set)
    train_cases, val_cases = _cases(args.train), _cases(args.val)
    if val_cases is None:  # default: a seeded 20% (at least one) of the cases not named for training
        rest = [c for c in ds.cases if c not in (train_cases or [])]
        if len(rest) < 2:
            raise GbmsegError("need at least two cases (one to train, one to validate)")
        val_cases = split_cases(rest, max(1, round(len(rest) * 0.2)), seed=args.seed)["val"]
    if train_cases is None:
        train_cases = [c for c in ds.cases if c not in val_cases]
    ds.check_cases(train_cases, "training case")
    ds.check_cases(val_cases, "validation case")
    device = args.device
    if distributed.requested():  # started by torchrun: join the group before the cache is made (by rank 0)
        device = str(distributed.setup(select_device(args.device)))
    cache = distributed.main_first(
        lambda: preprocess_dataset(ds, cfg, workers=args.workers, plan_cases=train_cases + val_cases,
                                   progress=distributed.is_main()))
    main = distributed.is_main()
    if main:
        _warn_coverage(cache, train_cases + val_cases)
    result = train(cache, args.mode, train_cases, val_cases, cfg, args.output, seed=args.seed, device=device)
    if main:
        print(json.dumps(result, indent=2))
        print(f"model written to {args.output}")


def _warn_coverage(cache, cases=None) -> None:
    from .preprocessing import coverage_summary

    for line in coverage_summary(cache, cases):
        print(f"warning: {line}", file=sys.stderr)


def cmd_predict(args) -> None:
    from .io import is_dicom_series
    from .predict import load_model, predict_file, predict_folder

    if args.mask and args.mask_method:
        raise GbmsegError("give --mask (a ready mask) or --mask-method (how to make one), not both")
    src = Path(args.input)
    if args.format != "nifti":
        from .export_dicom import check_dicom_request, predict_dicom

        check_dicom_request(src, args.format)  # extra installed, DICOM input: before loading anything
        model = load_model(args.model, device=args.device)
        print(f"wrote {predict_dicom(model, src, args.output, args.format, args.mask, series=args.series, mask_method=args.mask_method)}")
        return
    model = load_model(args.model, device=args.device)
    if src.is_dir() and not is_dicom_series(src):
        out = predict_folder(model, src, args.output, mask_dir=args.mask, overwrite=args.overwrite,
                             mask_method=args.mask_method)
        print(f"{len(out)} segmentations in {args.output}")
    else:
        print(f"wrote {predict_file(model, src, args.output, args.mask, series=args.series, mask_method=args.mask_method)}")


def cmd_evaluate(args) -> None:
    from .evaluation import evaluate_folder, evaluate_masks, summarize
    from .io import read_json

    _writable(args.output)
    if args.masks:
        df = evaluate_masks(args.pred, args.ref, out_csv=args.output)
        print(df.describe().loc[["mean", "std"]].to_string())
        return
    labels = None
    if args.labels:
        labels = read_json(args.labels, ("labels",), "dataset.json with labels")["labels"]
    df = evaluate_folder(args.pred, args.ref, labels=labels, out_csv=args.output, cases=_cases(args.cases))
    left_out = df.attrs.get("left_out", [])
    print(f"scored {df['case'].nunique()} case(s) that have a prediction"
          + (f"; {len(left_out)} reference case(s) without one left out" if left_out else ""))
    print(summarize(df)[["structure", "n", "n_missing", "dice_mean", "dice_sd", "com_mm_mean", "hd95_mm_mean"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.output:
        print(f"metrics written to {args.output}")


def cmd_export_nnunet(args) -> None:
    from .export_nnunet import export_nnunet, looks_like_nnunet_name

    out = export_nnunet(_dataset(args), args.out, mode=args.mode, cases=_cases(args.cases), link=not args.copy)
    print(f"nnU-Net v2 raw dataset ({args.mode}) written to {out}")
    if not looks_like_nnunet_name(out):
        print(f"note: nnU-Net finds datasets by id in folders named DatasetXXX_Name under $nnUNet_raw; "
              f"'{out.name}' is not such a name", file=sys.stderr)


def cmd_phantoms(args) -> None:
    from .phantoms import write_phantom_dataset

    _writable(args.output)
    out = write_phantom_dataset(args.output, kind=args.kind, n=args.n, modality=args.modality, seed=args.seed,
                                spacing=args.spacing, size=args.size, workers=args.workers)
    print(f"{args.n} {args.kind} {args.modality} phantoms written to {out}")


def cmd_sweep(args) -> None:
    from .report import make_report
    from .sweep import plan_sweep, prepare_sweep
    from .sweep_backends import run, write_slurm_script

    from .global_masks import make_dataset_masks

    ds = _dataset(args)
    _writable(args.output)
    if not ds.mask_record_path.exists():
        make_dataset_masks(ds, args.mask_method, workers=args.workers)
    sweep_dir = plan_sweep(ds, args.output, modes=args.modes.split(","), sizes=[int(n) for n in args.sizes.split(",")],
                           seeds=list(range(args.seeds)), preset=args.preset, overrides=args.set,
                           val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                           val=_cases(args.val), test=_cases(args.test), also_test=_also_test(args),
                           also_test_masks=args.also_test_masks)
    if args.emit == "slurm":
        prepare_sweep(sweep_dir, workers=args.workers)  # the cache now, so that the array tasks do not race to make it
        script = write_slurm_script(sweep_dir, args.slurm_opt, cpus_per_job=args.cpus_per_job or 4,
                                    gpus_per_job=int(args.gpus_per_job or 0))
        print(f"jobs written to {sweep_dir / 'runs'}; submit them as a job array with: sbatch {script}")
        return
    if args.plan_only:
        print(f"jobs written to {sweep_dir / 'runs'}; run each with 'gbmseg job JOB_DIR'")
        return
    options = {k: v for k, v in (("address", args.address), ("cpus_per_job", args.cpus_per_job),
                                 ("gpus_per_job", args.gpus_per_job)) if v is not None}
    metrics = run(sweep_dir, backend=args.backend, device=args.device, workers=args.workers, **options)
    print(f"report: {make_report(sweep_dir)}")
    failed = metrics.attrs.get("failed", {})
    if failed:
        raise GbmsegError(f"{len(failed)} job(s) failed (the report covers the others): "
                          + "; ".join(f"{job}: {msg}" for job, msg in failed.items()))


def _also_test(args) -> list:
    """The ``--also-test`` datasets, each with its work folder (``--also-test-work``, in the same order)."""
    from .dataset import Dataset

    works = args.also_test_work or []
    if len(works) > len(args.also_test or []):
        raise GbmsegError("--also-test-work given more often than --also-test (one work folder per dataset)")
    return [Dataset(path, work=works[i] if i < len(works) else None) for i, path in enumerate(args.also_test or [])]


def cmd_job(args) -> None:
    from .sweep import run_job

    _writable(args.job_dir)
    print(json.dumps(run_job(args.job_dir, device=args.device), indent=2))


def cmd_report(args) -> None:
    from .report import make_report

    _writable(args.output or Path(args.sweep_dir) / "report")
    print(f"report: {make_report(args.sweep_dir, args.output)}")


def cmd_demo(args) -> None:
    from .demo import dice_table, run_demo

    _writable(args.output)
    report = run_demo(args.output, device=args.device)
    print(dice_table(Path(args.output) / "sweep"))
    print(f"report: {report}")


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .config import presets

    p = argparse.ArgumentParser(prog="gbmseg", description="3D organ segmentation with global binary masks.")
    sub = p.add_subparsers(dest="command", required=True)

    def dataset_cmd(name: str, help: str):
        s = sub.add_parser(name, help=help, description=help)
        s.add_argument("dataset", help="dataset folder (nnU-Net v2 raw layout or MSD dataset.json)")
        s.add_argument("--work", help="folder for masks and cache (default: the dataset folder)")
        s.add_argument("--workers", type=int, default=1, help="parallel processes over cases")
        return s

    def config_args(s, default: str = "fast"):
        s.add_argument("--preset", default=default,
                       help=f"{', '.join(presets())}, or a JSON file (default {default})")
        s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a preset value, e.g. --set training.lr=3e-4 (repeatable)")

    s = dataset_cmd("masks", "Make global binary masks -> WORK/masksTr/<case>.nii.gz")
    s.add_argument("--method", default="auto",
                   help="auto (threshold for CT, otsu for MR), threshold, otsu, register, model, labels, box")
    s.add_argument("--params", help='JSON overrides, e.g. \'{"hu": -400}\'')
    s.add_argument("--model", help="method model: a trained mask model (its run folder, or a sweep job folder)")
    s.add_argument("--template", help="method register: template image, 'phantom', or a case id")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_masks)

    mask_model = sub.add_parser("mask-model", help="Whole-organ mask models: gbmseg mask-model train DATASET -o RUN")
    mm_sub = mask_model.add_subparsers(dest="action", required=True)
    s = mm_sub.add_parser("train", help="Train a whole-organ mask model on the union of the labels",
                          description="Train a whole-organ mask model on the union of the labels")
    s.add_argument("dataset", help="dataset folder (nnU-Net v2 raw layout or MSD dataset.json)")
    s.add_argument("--work", help="folder for masks and cache (default: the dataset folder)")
    s.add_argument("--workers", type=int, default=1, help="parallel processes over cases")
    config_args(s, default="coarse")
    s.add_argument("--train", help="comma-separated training cases (default: all but the last)")
    s.add_argument("--val", help="comma-separated validation cases (default: the last case)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device")
    s.add_argument("-o", "--output", required=True, help="run directory of the mask model")
    s.add_argument("--mlflow", action="store_true", help="log the training run(s) to MLflow (as GBMSEG_MLFLOW=1)")
    s.set_defaults(func=cmd_mask_model)

    s = dataset_cmd("preprocess", "Resample, crop around the global mask, normalise and cache every case")
    config_args(s)
    s.set_defaults(func=cmd_preprocess)

    s = dataset_cmd("train", "Train a U-Net in one input mode")
    config_args(s)
    s.add_argument("--mode", required=True, help="image, mask or image+mask")
    s.add_argument("--train", help="comma-separated training cases (default: 80%% of the cases)")
    s.add_argument("--val", help="comma-separated validation cases (default: the other 20%%)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", help="cuda, mps or cpu (default: best available)")
    s.add_argument("-o", "--output", required=True, help="run directory")
    s.add_argument("--mlflow", action="store_true", help="log the training run(s) to MLflow (as GBMSEG_MLFLOW=1)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("predict", help="Segment an image, a DICOM folder, or a folder of images")
    s.add_argument("-m", "--model", required=True,
                   help="a trained model: a run directory, or a sweep's job folder (SWEEP/runs/<job>)")
    s.add_argument("-i", "--input", required=True, help="image file, DICOM series folder, or folder of images")
    s.add_argument("-o", "--output", required=True, help="output file (or folder in folder mode)")
    s.add_argument("--mask", help="ready global mask (file, or folder of <case>.nii.gz in folder mode)")
    s.add_argument("--mask-method", metavar="METHOD",
                   help="make the global mask with auto, threshold, otsu or box instead of the model's own method "
                        "(e.g. a mask-mode model on another modality)")
    s.add_argument("--series", metavar="UID", help="DICOM folder with several series: the series instance UID to use")
    s.add_argument("--device")
    s.add_argument("--overwrite", action="store_true", help="folder mode: redo existing outputs")
    s.add_argument("--format", default="nifti", choices=["nifti", "dicom-seg", "rtstruct"],
                   help="nifti (default; also .nrrd/.mha by the output's suffix), or for a DICOM series input "
                        "a DICOM Segmentation or RT Structure Set file referencing it (needs gbmseg[dicom])")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("evaluate", help="Dice, centre-of-mass distance, HD95, ASD per case and structure")
    s.add_argument("--pred", required=True, help="folder of predicted <case>.nii.gz")
    s.add_argument("--ref", required=True, help="folder of reference labels (e.g. DATASET/labelsTr)")
    s.add_argument("--labels", help="dataset.json naming the labels (default: the one beside --ref)")
    s.add_argument("--masks", action="store_true", help="score global masks against the union of labels")
    s.add_argument("--cases", help="comma-separated cases to score (default: every reference with a prediction)")
    s.add_argument("-o", "--output", help="CSV to write (a _summary.csv is written beside it)")
    s.set_defaults(func=cmd_evaluate)

    s = dataset_cmd("export-nnunet", "Write the dataset and its global masks as an nnU-Net v2 raw dataset")
    s.add_argument("out", help="folder to write, e.g. $nnUNet_raw/Dataset901_HeadGbm (must not exist)")
    s.add_argument("--mode", default="image+mask", choices=["image+mask", "image", "mask"],
                   help="input channels: image then mask (default), image only, or mask only")
    s.add_argument("--cases", help="comma-separated cases to export (default: all)")
    s.add_argument("--copy", action="store_true", help="copy images and labels (default: hard links where possible)")
    s.set_defaults(func=cmd_export_nnunet)

    s = sub.add_parser("phantoms", help="Write procedural head or heart phantoms as an nnU-Net dataset")
    s.add_argument("--kind", default="head", choices=["head", "heart"])
    s.add_argument("--n", type=int, default=20, help="number of cases")
    s.add_argument("--modality", default="CT", choices=["CT", "MR"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm")
    s.add_argument("--size", type=int, default=96, help="voxels per axis")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("-o", "--output", required=True, help="dataset folder to write")
    s.set_defaults(func=cmd_phantoms)

    s = dataset_cmd("sweep", "The paper's experiment: modes x training-set sizes x seeds, then a report")
    config_args(s)
    s.add_argument("--modes", default="image,mask,image+mask",
                   help="comma-separated: U-Net input modes image, mask, image+mask, the controls image+coords, "
                        "image+sdm, and the multi-atlas baselines atlas, atlas-lw")
    s.add_argument("--sizes", default="1,2,4,8,16,26", help="training-set sizes (capped at what the dataset has)")
    s.add_argument("--seeds", type=int, default=3, help="number of seeds (training subsets and initialisations)")
    s.add_argument("--val-fraction", type=float, default=0.2)
    s.add_argument("--test-fraction", type=float, default=0.2)
    s.add_argument("--val", help="explicit validation cases (with --test)")
    s.add_argument("--test", help="explicit test cases (with --val)")
    s.add_argument("--mask-method", default="auto", help="used when the dataset has no masks yet")
    s.add_argument("--also-test", action="append", metavar="DATASET",
                   help="every job also segments this dataset's cases (same structure names), e.g. the MR "
                        "scans of CT-trained models; see README (repeatable)")
    s.add_argument("--also-test-work", action="append", metavar="DIR",
                   help="work folder of the --also-test dataset of the same position (its masks; default: "
                        "the dataset folder)")
    s.add_argument("--also-test-masks", default="auto", metavar="METHOD",
                   help="mask method for an --also-test dataset without masks yet (default auto: threshold "
                        "for CT, otsu for MR); one that has masks keeps its own")
    s.add_argument("--plan-only", action="store_true", help="write the job folders and stop (for a cluster)")
    s.add_argument("--emit", choices=["slurm"], help="with --plan-only: also write SWEEP/slurm.sh, a job array")
    s.add_argument("--slurm-opt", action="append", default=[], metavar="OPTION",
                   help="an #SBATCH option for --emit slurm, e.g. --slurm-opt=--partition=gpu (repeatable)")
    s.add_argument("--backend", default="local", help="local (one job after another here) or ray")
    s.add_argument("--address", help="ray: the cluster to join (default: start a local Ray instance)")
    s.add_argument("--cpus-per-job", type=int, help="ray, slurm: CPUs (torch threads) per job (default 1; slurm 4)")
    s.add_argument("--gpus-per-job", type=float, help="ray, slurm: GPUs per job (ray allows fractions; default 0)")
    s.add_argument("--device")
    s.add_argument("-o", "--output", required=True, help="sweep folder")
    s.add_argument("--mlflow", action="store_true", help="log the training run(s) to MLflow (as GBMSEG_MLFLOW=1)")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("job", help="Run one job folder of a sweep (what a cluster node runs)")
    s.add_argument("job_dir")
    s.add_argument("--device")
    s.add_argument("--mlflow", action="store_true", help="log the training run(s) to MLflow (as GBMSEG_MLFLOW=1)")
    s.set_defaults(func=cmd_job)

    s = sub.add_parser("report", help="Tables, figures and statistics of a sweep (HTML + Markdown + CSV)")
    s.add_argument("sweep_dir")
    s.add_argument("-o", "--output", help="report folder (default SWEEP/report)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("demo", help="Phantoms -> reduced sweep (3 modes) -> report, in minutes on a CPU")
    s.add_argument("-o", "--output", default="gbmseg_demo", help="demo folder (default ./gbmseg_demo)")
    s.add_argument("--device")
    s.set_defaults(func=cmd_demo)
    return p


def _glue(argv: list[str], option: str) -> list[str]:
    """``OPTION VALUE`` -> ``OPTION=VALUE``, so that a value starting with '-' (``--slurm-opt --partition=gpu``)
    is taken as the option's value, as argparse would not."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == option and i + 1 < len(argv):
            out.append(f"{option}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _glue(list(sys.argv[1:] if argv is None else argv), "--slurm-opt")
    args = build_parser().parse_args(argv)
    with one_line_warnings(args.command):  # a warning is one line, as errors are: "gbmseg masks: warning: ..."
        return _run(args)


def _run(args) -> int:
    """Run the parsed command; a :class:`GbmsegError` becomes one line and exit status 2."""
    try:
        if getattr(args, "mlflow", False):  # the environment switch, so sweep workers and jobs see it too
            from .tracking import ENV, make_tracker

            os.environ[ENV] = "1"
            make_tracker()  # a missing MLflow is an error now, not after preprocessing
        args.func(args)
    except GbmsegError as exc:
        print(f"gbmseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # a scheduler's signal: checkpoint written; nonzero so the job counts as unfinished
        print(f"gbmseg {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"gbmseg {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
