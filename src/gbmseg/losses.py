"""Losses: the training objective, by name (``training.loss``).

Both take logits ``(B, C, Z, Y, X)`` (channel 0 the background) and a label map ``(B, 1, Z, Y, X)``
of class indices, and apply a softmax over the classes (MONAI's implementations).

- ``dice``: the paper's soft Dice over the structures (MONAI ``DiceLoss``, background left out).
- ``dicece``: Dice + cross-entropy (MONAI ``DiceCELoss``), as nnU-Net trains.

Example:
    >>> import torch
    >>> label = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long); label[..., :4, :4, :4] = 1
    >>> logits = torch.nn.functional.one_hot(label[:, 0], 2).permute(0, 4, 1, 2, 3).float() * 20
    >>> [round(float(make_loss(name)(logits, label)), 3) for name in LOSSES]   # confident and right
    [0.0, 0.0]
    >>> round(float(make_loss("dice")(-logits, label)), 3)                      # confident and wrong
    1.0
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceLoss

from .errors import GbmsegError

LOSSES = {
    "dice": lambda: DiceLoss(include_background=False, to_onehot_y=True, softmax=True),
    "dicece": lambda: DiceCELoss(include_background=False, to_onehot_y=True, softmax=True),
}


def make_loss(name: str) -> torch.nn.Module:
    """The loss ``name`` (a key of :data:`LOSSES`); an unknown name is a one-line error."""
    if name not in LOSSES:
        raise GbmsegError(f"training.loss '{name}': choose {' or '.join(LOSSES)}")
    return LOSSES[name]()
