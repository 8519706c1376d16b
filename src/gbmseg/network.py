"""The paper's 3D U-Net, written out so that every layer is visible.

Encoder: ``depth`` blocks, each followed by 2x max-pooling; a bottleneck block; decoder: ``depth``
transposed-convolution upsamplings, each concatenated with the encoder's skip and followed by a
block. Channels start at ``base_channels`` and double at every level. A block is two 3x3x3
convolutions, each followed by normalisation and the activation (sigmoid in the paper), then 3D
spatial dropout (channel dropout). A 1x1x1 convolution gives one logit per class.

Example:
    >>> import torch
    >>> net = UNet3D(in_channels=2, n_classes=4, depth=2, base_channels=4)
    >>> net(torch.zeros(1, 2, 16, 16, 16)).shape
    torch.Size([1, 4, 16, 16, 16])
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .config import NetworkConfig
from .errors import GbmsegError

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01)}


class InstanceNorm3d(nn.InstanceNorm3d):
    """Affine instance normalisation that runs a batch of one through the batch-norm kernel.

    For one sample, batch normalisation with batch statistics *is* instance normalisation (each
    channel over its own volume); PyTorch's ``instance_norm`` gets there by reshaping the input and
    repeating the weights first, which costs time in every layer. Same parameters and state dict as
    ``nn.InstanceNorm3d(c, affine=True)``, same output (tested); larger batches take the usual path.
    """

    def __init__(self, channels: int):
        super().__init__(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            return super().forward(x)
        return nn.functional.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


NORMS = {"batch": nn.BatchNorm3d, "instance": InstanceNorm3d, "none": lambda c: nn.Identity()}


ONEDNN_MIN = 20480  # PyTorch takes oneDNN for a batch of one only when N*C*D*H exceeds this


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs a CPU batch of one as two overlapping depth halves: a batch of two.

    For a batch of one, PyTorch's CPU convolution takes oneDNN only when ``N*C*D*H > 20480`` and
    otherwise falls back to a slow reference kernel, which is what the deeper (small-spatial,
    many-channel) layers of a 3D U-Net get. Two halves of depth ``D/2 + 1`` (one voxel of overlap,
    whose outputs are dropped) make a batch of two, which oneDNN takes; the result is the same
    convolution, exactly (same weights, same sums; tested). Only for 3x3x3, stride 1, padding 1.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, d, h, _ = x.shape
        if (n != 1 or x.device.type != "cpu" or d < 4 or d % 2 or n * c * d * h > ONEDNN_MIN
                or self.kernel_size != (3, 3, 3) or self.stride != (1, 1, 1) or self.padding != (1, 1, 1)):
            return super().forward(x)
        k = d // 2
        y = super().forward(torch.cat([x[:, :, : k + 1], x[:, :, k - 1:]], 0))
        return torch.cat([y[:1, :, :k], y[1:, :, 1:]], 2)


class ConvBlock(nn.Sequential):
    """(conv 3x3x3 -> norm -> activation) x 2 -> spatial dropout."""

    def __init__(self, cin: int, cout: int, activation: str, norm: str, dropout: float):
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers += [Conv3d(c, cout, 3, padding=1, bias=norm == "none"), NORMS[norm](cout),
                       ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        super().__init__(*layers)


class UNet3D(nn.Module):
    """3D U-Net returning per-class logits ``(B, n_classes, Z, Y, X)``.

    Args:
        in_channels: 1 (``image`` or ``mask`` mode) or 2 (``image+mask``).
        n_classes: structures + background.
        depth: number of poolings (the paper: 4). Input sizes must be divisible by ``2**depth``.
        base_channels: channels of the first level (the paper: 32), doubled per level.
        activation: ``sigmoid`` (paper), ``relu`` or ``leakyrelu``.
        norm: ``batch`` (paper), ``instance`` or ``none``.
        dropout: spatial dropout rate after each block (paper: 0.2).
        deep_supervision: also give logits at the coarser decoder levels, in training only: the
            forward pass then returns a list, full resolution first (nnU-Net's deep supervision).
    """

    def __init__(self, in_channels: int, n_classes: int, depth: int = 4, base_channels: int = 32,
                 activation: str = "sigmoid", norm: str = "batch", dropout: float = 0.2,
                 deep_supervision: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}")
        ch = [base_channels * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.encoder = nn.ModuleList()
        cin = in_channels
        for c in ch[:-1]:
            self.encoder.append(ConvBlock(cin, c, activation, norm, dropout))
            cin = c
        self.pool = nn.MaxPool3d(2)
        self.bottleneck = ConvBlock(ch[-2], ch[-1], activation, norm, dropout)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up.append(nn.ConvTranspose3d(ch[i + 1], ch[i], kernel_size=2, stride=2))
            self.decoder.append(ConvBlock(2 * ch[i], ch[i], activation, norm, dropout))
        self.head = nn.Conv3d(ch[0], n_classes, kernel_size=1)
        self.aux = nn.ModuleList(nn.Conv3d(ch[i], n_classes, kernel_size=1) for i in range(1, depth)
                                 ) if deep_supervision else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        deep = self.aux is not None and self.training
        coarse = []  # with deep supervision: the decoder's outputs, coarsest (level depth-1) first
        for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
            if deep:
                coarse.append(x)
        if not deep:
            return self.head(x)
        # aux[i] belongs to level i+1: pair it with the outputs finest-first, leaving out level 0's
        return [self.head(x)] + [head(y) for head, y in zip(self.aux, reversed(coarse[:-1]))]


def output_classes(labels: Mapping[str, int]) -> int:
    """The network's outputs for a dataset's structures ``labels`` (name -> value): background and
    one per structure.

    Example:
        >>> output_classes({"brainstem": 1, "eye_left": 2, "eye_right": 3})
        4
    """
    return len(labels) + 1


def build_network(net_cfg: NetworkConfig, in_channels: int, n_classes: int) -> UNet3D:
    """The U-Net described by a config's ``network`` section."""
    return UNet3D(in_channels, n_classes, depth=net_cfg.depth, base_channels=net_cfg.base_channels,
                  activation=net_cfg.activation, norm=net_cfg.norm, dropout=net_cfg.dropout,
                  deep_supervision=net_cfg.deep_supervision)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", keys: tuple[str, ...] = ("model",),
                    hint: str = "") -> dict:
    """``torch.load(path, weights_only=True)`` of a gbmseg checkpoint (``model.pt``, ``last.pt``) that holds ``keys``.

    A truncated, corrupt or foreign file is one line naming it (and ``hint``, what to do), never a
    traceback from inside torch.

    Example:
        >>> state = load_checkpoint("runs/x/model.pt")["model"]                  # doctest: +SKIP
    """
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a bad file raises RuntimeError, UnpicklingError, EOFError, KeyError, ... by its damage
        raise GbmsegError(f"{path}: corrupt or truncated checkpoint ({_reason(exc)}){hint}") from None
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise GbmsegError(f"{path}: not a gbmseg checkpoint (no {', '.join(repr(k) for k in missing)}){hint}")
    return ckpt


def load_weights(net: nn.Module, state: dict, path: str | Path, source: str = "the run's config",
                 channels: list[str] | None = None) -> None:
    """``net.load_state_dict(state)``; weights of another shape or network are one line naming ``path``
    and ``source`` (what described ``net``). Another number of input channels (``channels``: their
    names, as ``source`` gives them) is named as such."""
    expected = net.state_dict()
    first = next(iter(expected))
    got = state.get(first) if isinstance(state, dict) else None
    want = expected[first].shape[1]
    if isinstance(got, torch.Tensor) and got.ndim == expected[first].ndim and got.shape[1] != want:
        names = f" ({', '.join(channels)})" if channels else ""
        raise GbmsegError(f"{path}: weights take {got.shape[1]} input channel(s) but {source} names {want}{names}; "
                          "the files come from different runs")
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise GbmsegError(f"{path}: weights do not fit the network {source} describes "
                          f"({lines[-1][:160] if lines else type(exc).__name__})") from None


def _reason(exc: Exception) -> str:
    """``Type: first sentence`` of an exception, for one-line messages."""
    text = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def select_device(name: str | None = None) -> torch.device:
    """``name`` if given, else cuda, then mps, then cpu."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
