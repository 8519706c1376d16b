"""gbmseg: 3D organ segmentation with global binary masks.

Pipeline stages, one module each::

    dataset.py        read and validate an nnU-Net / MSD dataset
    masks.py          global binary masks (threshold, otsu, labels)
    preprocessing.py  resample + crop onto the model grid, normalise, cache
    network.py        the paper's 3D U-Net
    training.py       training loop (Dice loss, Adam, best checkpoint, resume)
    inference.py      predict a label map in the input's own geometry
    evaluation.py     Dice, centre-of-mass distance, HD95, ASD
    phantoms.py       procedural head / heart phantoms (built-in data)
    sweep.py          the paper's training-size experiment
    report.py         tables, figures, statistics
"""

__version__ = "0.1.0"
