"""The seed's model architectures, by registry name (the ``architecture`` of a package).

- ``voxel_logistic``: a 1x1x1 convolution, a per-voxel logistic model (baseline
  segmenter; with fixed weights it is an exact, known threshold function).
- ``unet3d``: a 3-D U-Net for lesion segmentation, optionally with attention gates.
- ``cnn_classifier``: a 3-D CNN for diagnosis prediction / disease classification.
- ``attention_cnn``: a 3-D CNN whose attention map pools the features; the map
  is an output (explanation and localisation).
- ``sequence_rnn``: a convolutional front end and an LSTM or GRU over time
  (12-lead ECG, or a patient's prior studies as feature vectors).
- ``fusion_head``: combines an image feature vector with a sequence (LSTM/GRU).
- ``priors_fusion``: a study and the patient's prior studies -> change since
  the priors (a shared CNN per study, the fusion head over the priors).
- ``candidate_net``: a small 3-D CNN that scores one blob candidate's patches as
  lesion or not (``inference.detect``; trained by ``training.candidate_net``).

Segmentation models return logits ``(N, C, D, H, W)``; classifiers return
``(logits, attention)`` where attention is ``(N, 1, D, H, W)`` or None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "ARCHITECTURES",
    "AttentionCNN",
    "CNNClassifier",
    "CandidateNet",
    "FusionHead",
    "PriorsFusion",
    "SequenceRNN",
    "UNet3D",
    "VoxelLogistic",
    "build",
]


class VoxelLogistic(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # type: ignore[no-any-return]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on a skip connection."""

    def __init__(self, skip: int, gate: int, inner: int) -> None:
        super().__init__()
        self.theta = nn.Conv3d(skip, inner, 1)
        self.phi = nn.Conv3d(gate, inner, 1)
        self.psi = nn.Conv3d(inner, 1, 1)

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        a = torch.sigmoid(self.psi(F.relu(self.theta(x) + self.phi(g))))
        return x * a


class UNet3D(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base: int = 8,
        depth: int = 3,
        attention: bool = False,
    ) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.bottom = _block(widths[-1], widths[-1] * 2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        self.gates = nn.ModuleList()
        cin = widths[-1] * 2
        for w in reversed(widths):
            self.up.append(nn.ConvTranspose3d(cin, w, 2, stride=2))
            self.gates.append(AttentionGate(w, w, max(1, w // 2)) if attention else nn.Identity())
            self.dec.append(_block(2 * w, w))
            cin = w
        self.head = nn.Conv3d(widths[0], out_channels, 1)
        self.divisor = 2**depth

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        x = self.bottom(x)
        for up, gate, dec, skip in zip(self.up, self.gates, self.dec, reversed(skips), strict=True):
            x = up(x)
            s = gate(skip, x) if isinstance(gate, AttentionGate) else skip
            x = dec(torch.cat([s, x], dim=1))
        return self.head(x)  # type: ignore[no-any-return]


class _Encoder(nn.Module):
    def __init__(self, in_channels: int, base: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(depth):
            cout = base * 2**i
            layers += [_block(cin, cout), nn.MaxPool3d(2)]
            cin = cout
        self.body = nn.Sequential(*layers[:-1])  # keep the last resolution
        self.channels = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)  # type: ignore[no-any-return]


class CNNClassifier(nn.Module):
    def __init__(
        self, in_channels: int = 1, num_classes: int = 2, base: int = 8, depth: int = 3
    ) -> None:
        super().__init__()
        self.encoder = _Encoder(in_channels, base, depth)
        self.fc = nn.Linear(self.encoder.channels, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x).mean(dim=(2, 3, 4))  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.fc(self.features(x)), None


class AttentionCNN(nn.Module):
    """Attention pooling: a softmax over space weights the features; the map is returned."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 2, base: int = 8, depth: int = 3
    ) -> None:
        super().__init__()
        self.encoder = _Encoder(in_channels, base, depth)
        self.score = nn.Conv3d(self.encoder.channels, 1, 1)
        self.fc = nn.Linear(self.encoder.channels, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.encoder(x)
        n = f.shape[0]
        weights = torch.softmax(self.score(f).flatten(2), dim=-1)  # (N, 1, DHW)
        pooled = (f.flatten(2) * weights).sum(-1)  # (N, C)
        attention = weights.view(n, 1, *f.shape[2:])
        attention = F.interpolate(attention, size=x.shape[2:], mode="trilinear")
        return self.fc(pooled), attention


class SequenceRNN(nn.Module):
    """(N, channels, time) -> logits: strided convolutions, then an LSTM or a GRU."""

    def __init__(
        self,
        in_channels: int = 12,
        num_classes: int = 3,
        hidden: int = 64,
        cell: str = "lstm",
        downsample: int = 4,
        layers: int = 1,
    ) -> None:
        super().__init__()
        front: list[nn.Module] = []
        cin = in_channels
        for _ in range(downsample):
            front += [nn.Conv1d(cin, hidden, 7, stride=2, padding=3), nn.ReLU(inplace=True)]
            cin = hidden
        self.front = nn.Sequential(*front)
        rnn: type[nn.LSTM] | type[nn.GRU] = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(hidden, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, num_classes)

    def features(self, x: Tensor) -> Tensor:
        h = self.front(x).transpose(1, 2)  # (N, T, hidden)
        out, _ = self.rnn(h)
        return out.mean(dim=1)  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.fc(self.features(x)), None


class FusionHead(nn.Module):
    """Image features (N, F_img) and a sequence (N, T, F_seq) -> logits.

    An LSTM or GRU summarises the sequence; its last state is joined with the
    image features by a small MLP whose last layer is ``fc`` (what temperature
    scaling rescales).
    """

    def __init__(
        self,
        image_features: int,
        sequence_features: int,
        num_classes: int = 2,
        hidden: int = 32,
        cell: str = "gru",
    ) -> None:
        super().__init__()
        rnn: type[nn.LSTM] | type[nn.GRU] = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(sequence_features, hidden, batch_first=True)
        self.hidden = nn.Sequential(nn.Linear(image_features + hidden, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, image: Tensor, sequence: Tensor) -> Tensor:
        _, state = self.rnn(sequence)
        h = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c)
        return self.fc(self.hidden(torch.cat([image, h[-1]], dim=1)))  # type: ignore[no-any-return]


class PriorsFusion(nn.Module):
    """Change since the priors: a study and its prior studies -> change class logits.

    Each study is summarised by a learnable soft histogram (Wang et al. 2016):
    a learnt 3-D smoothing per level, then the fraction of the field of view
    above each of ``levels`` learnt intensity levels (sigmoid steps), as
    logarithms, so a lesion doubling in volume moves a feature by the same step
    whatever its size. The recurrent fusion head runs over the priors, oldest
    first, each step seeing the prior's features, the current study's features
    minus them, and how many years before the current study it was taken; its
    state is fused with the current study's features. ``forward(x, years)``:
    ``x`` (N, T, C, D, H, W) with the current study last, ``years`` (N, T)
    before the current study (0 for it). Inputs must share a physical grid
    (a package's ``target_spacing``) and intensity window.
    """

    logits_layer = "head.fc"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        levels: int = 8,
        low: float = 0.35,
        high: float = 0.65,
        kernel: int = 3,
        hidden: int = 32,
        cell: str = "gru",
    ) -> None:
        super().__init__()
        self.smooth = nn.Conv3d(in_channels, levels, kernel, padding=kernel // 2)
        with torch.no_grad():  # start as a box filter: the mean of the neighbourhood
            self.smooth.weight.fill_(1.0 / (in_channels * kernel**3))
            assert self.smooth.bias is not None
            self.smooth.bias.zero_()
        self.level = nn.Parameter(torch.linspace(low, high, levels))
        self.slope = nn.Parameter(torch.full((levels,), 40.0))
        self.head = FusionHead(levels, 2 * levels + 1, num_classes, hidden, cell)

    def features(self, x: Tensor) -> Tensor:
        """(N, C, D, H, W) studies -> (N, levels) log fractions above each level."""
        z = self.smooth(x)
        steps = torch.sigmoid(
            self.slope.view(1, -1, 1, 1, 1) * (z - self.level.view(1, -1, 1, 1, 1))
        )
        return torch.log(steps.mean(dim=(2, 3, 4)) + 1e-6)

    def fuse(self, features: Tensor, years: Tensor) -> Tensor:
        """(N, T, F) features and (N, T) years, current study last -> logits."""
        current, priors = features[:, -1], features[:, :-1]
        steps = torch.cat(
            [priors, current[:, None] - priors, years[:, :-1, None].to(features.dtype)], dim=2
        )
        return self.head(current, steps)  # type: ignore[no-any-return]

    def forward(self, x: Tensor, years: Tensor) -> tuple[Tensor, None]:
        n, t = x.shape[:2]
        features = self.features(x.flatten(0, 1)).view(n, t, -1)
        return self.fuse(features, years), None


def _bn_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)
    )


class CandidateNet(nn.Module):
    """A candidate's patches (``channels`` of 24³, ``inference.patches.patches``) → one
    logit: lesion at the centre or not. 209 k parameters with the defaults."""

    def __init__(self, channels: int = 3, base: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _bn_block(channels, base),
            nn.MaxPool3d(2),
            _bn_block(base, 2 * base),
            _bn_block(2 * base, 2 * base),
            nn.MaxPool3d(2),
            _bn_block(2 * base, 4 * base),
            _bn_block(4 * base, 4 * base),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * base, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.features(x))
        return out[:, 0]


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "voxel_logistic": VoxelLogistic,
    "unet3d": UNet3D,
    "cnn_classifier": CNNClassifier,
    "attention_cnn": AttentionCNN,
    "sequence_rnn": SequenceRNN,
    "fusion_head": FusionHead,
    "priors_fusion": PriorsFusion,
    "candidate_net": CandidateNet,
}


def build(name: str, parameters: dict[str, Any]) -> nn.Module:
    """Instantiate a registered architecture; errors name the architecture and argument."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r} (known: {', '.join(sorted(ARCHITECTURES))})")
    try:
        return ARCHITECTURES[name](**parameters)
    except TypeError as exc:
        raise TypeError(f"architecture {name!r}: {exc}") from None
