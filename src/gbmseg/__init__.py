"""gbmseg: 3D organ segmentation with global binary masks.

Pipeline stages, lowest layer last; every import points down (see ``tests/test_layers.py``)::

    cli.py, demo.py        commands; phantoms -> sweep -> report
    report.py              figures, HTML / Markdown  (numbers in sweep_stats.py)
    sweep.py               the paper's training-size experiment
    export_dicom.py        label maps out as DICOM-SEG / RTSTRUCT against the source series
    predict.py             two-stage prediction: global mask, then segmentation
    global_masks.py        global binary masks: one entry point, a registry of methods
    mask_model.py          learned whole-organ masks
    training.py            training loop (Dice loss, Adam, best checkpoint, resume)
    inference.py           a trained model applied on its model grid
    preprocessing.py       resample + crop onto the model grid, normalise, cache
    registration.py        registration to a template (mask method register, standard frame)
    morphology.py          image-only masks (threshold, otsu, labels, box); evaluation.py: metrics
    dataset.py             read and validate a dataset; every path of its work folder
    config.py, network.py  typed presets; the paper's 3D U-Net; phantoms.py: built-in data
    io.py, parallel.py     images and JSON records, atomic writes; process pool
"""

__version__ = "0.1.0"
