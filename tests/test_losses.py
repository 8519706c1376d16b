"""The training losses, by name (gbmseg.losses)."""

import pytest
import torch
import torch.nn.functional as F

from gbmseg.errors import GbmsegError
from gbmseg.losses import LOSSES, make_loss


def _label() -> torch.Tensor:
    """A (1, 1, 8, 8, 8) label map with a 4^3 block of structure 1 and one of structure 2."""
    label = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    label[..., :4, :4, :4] = 1
    label[..., 4:, 4:, 4:] = 2
    return label


def _confident(label: torch.Tensor, scale: float = 30.0) -> torch.Tensor:
    return F.one_hot(label[:, 0], 3).permute(0, 4, 1, 2, 3).float() * scale


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_confident_correct_prediction_costs_nothing(name):
    assert float(make_loss(name)(_confident(_label()), _label())) < 1e-3


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_swapping_the_two_structures_costs_the_whole_dice(name):
    label = _label()
    swapped = label.clone()
    swapped[label == 1], swapped[label == 2] = 2, 1
    assert float(make_loss(name)(_confident(swapped), label)) > 0.99


@pytest.mark.parametrize("name,extra", [("dice", 0.0), ("dicece", 1.0)])
def test_cross_entropy_is_added_only_by_dicece(name, extra):
    """A uniform prediction: Dice loss as for 'dice', plus ln(3) of cross-entropy for 'dicece'."""
    label, logits = _label(), torch.zeros(1, 3, 8, 8, 8)
    diff = float(make_loss(name)(logits, label)) - float(make_loss("dice")(logits, label))
    assert diff == pytest.approx(extra * torch.log(torch.tensor(3.0)).item(), abs=1e-5)


def test_an_unknown_loss_is_a_one_line_error_naming_the_choices():
    with pytest.raises(GbmsegError, match="training.loss 'focal': choose dice or dicece"):
        make_loss("focal")
