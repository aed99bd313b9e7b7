"""Loading released weights safely and strictly."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn


class WeightsMismatchError(ValueError):
    """The weights do not fit the model; the message lists every missing, unexpected or misshapen key."""

    def __init__(self, missing, unexpected, misshapen):
        self.missing, self.unexpected, self.misshapen = list(missing), list(unexpected), list(misshapen)
        lines = ["weights do not match the model:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for key, want, got in self.misshapen:
            lines.append(f"  wrong shape for {key}: model has {tuple(want)}, weights have {tuple(got)}")
        super().__init__("\n".join(lines))


def read_state_dict(path_or_state_dict) -> dict[str, torch.Tensor]:
    """Read a state_dict from a file (``weights_only=True``, onto the CPU) or take a mapping as is.

    Checkpoints that nest the weights under ``"state_dict"`` are unwrapped, and a ``module.``
    prefix (left by ``nn.DataParallel``) is stripped from every key.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        if not os.path.exists(path_or_state_dict):
            raise FileNotFoundError(f"no weight file at {os.fspath(path_or_state_dict)!r}")
        state = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
    else:
        state = path_or_state_dict
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
    prefix = "module."
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def load_weights(model: nn.Module, path_or_state_dict) -> nn.Module:
    """Load weights into ``model`` strictly and return it.

    Raises :class:`WeightsMismatchError` naming every missing, unexpected and wrongly shaped key
    before anything is copied, so a failed load leaves the model unchanged.
    """
    state = read_state_dict(path_or_state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [
        (k, own[k].shape, state[k].shape)
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    if missing or unexpected or misshapen:
        raise WeightsMismatchError(missing, unexpected, misshapen)
    model.load_state_dict(state, strict=True)
    return model
