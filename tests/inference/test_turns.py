"""The candidate score over half-turns: as before with one, the same whichever way a
patch lies with four."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.architectures import CandidateNet
from inference.detect import TURNS, score
from inference.patches import PATCH

ROOT = Path(__file__).resolve().parents[2]


def _net_and_patches() -> tuple[CandidateNet, np.ndarray]:
    """The shipped detector's weights and six patches of a ball off the patch's centre: a
    trained network, whose scores a turn moves (an untrained one barely looks)."""
    net = CandidateNet(channels=3)
    weights = ROOT / "models" / "lesion-detect" / "weights.pt"
    net.load_state_dict(torch.load(weights, weights_only=True))
    rng = np.random.default_rng(5)
    z, y, x = np.mgrid[:PATCH, :PATCH, :PATCH]
    out = []
    for _ in range(6):
        c, r = rng.uniform(6, 18, 3), rng.uniform(2, 5)
        ball = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r * r).astype(np.float32)
        view = 0.1 + 0.8 * ball + rng.normal(0, 0.05, ball.shape)
        out.append(np.stack([view, 0.5 * view, view]))
    return net.eval(), np.clip(np.array(out), 0, 1).astype(np.float16)


def test_one_turn_is_the_patch_as_cut() -> None:
    net, x = _net_and_patches()
    with torch.inference_mode():
        logit = net(torch.from_numpy(x).float().contiguous(memory_format=torch.channels_last_3d))
    assert np.array_equal(score(net, x), torch.sigmoid(logit).numpy().astype(np.float32))
    assert np.array_equal(score(net, x, turns=1), score(net, x))


def test_four_turns_score_a_turned_patch_as_the_patch_itself() -> None:
    """The four turns are a group (each turned by another is a third): their mean logit is
    the same for a patch turned by any of them, where the score of one way is not."""
    net, x = _net_and_patches()
    four = score(net, x, turns=4)
    for dims in TURNS[1:]:
        turned = np.ascontiguousarray(np.flip(x, dims))
        assert np.allclose(score(net, turned, turns=4), four, atol=1e-5)
        assert np.abs(score(net, turned) - score(net, x)).max() > 0.1
    # and it is the mean of the four logits, not of their probabilities
    with torch.inference_mode():
        t = torch.from_numpy(x).float()
        mean = torch.stack([net(t.flip(d) if d else t) for d in TURNS]).mean(0)
    assert np.allclose(four, torch.sigmoid(mean).numpy(), atol=1e-6)


@pytest.mark.parametrize("turns", [0, 5])
def test_turns_outside_the_four_are_refused(turns: int) -> None:
    net, x = _net_and_patches()
    with pytest.raises(ValueError, match=f"turns: 1 to 4, not {turns}"):
        score(net, x, turns=turns)
