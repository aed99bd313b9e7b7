"""RetinaFace: the assembled face detector (backbone → FPN → SSH per level → heads)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_feature_map
from .fpn import FPN
from .heads import make_bbox_head, make_class_head, make_landmark_head
from .mobilenet import MobileNetV1
from .resnet50 import ResNet50
from .ssh import SSH

#: The two released configurations: backbone, which children feed the FPN, and widths.
CONFIGS = {
    "mobile0.25": {"backbone": MobileNetV1, "return_layers": ("stage1", "stage2", "stage3"), "in_channel": 32, "out_channel": 64},
    "resnet50": {"backbone": ResNet50, "return_layers": ("layer2", "layer3", "layer4"), "in_channel": 256, "out_channel": 256},
}

#: Anchor settings shared by both configs (used by the detection pipeline).
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
#: BGR mean subtracted from the input image (no scaling by 255).
BGR_MEAN = (104.0, 117.0, 123.0)


class IntermediateLayers(nn.Module):
    """Runs a backbone's children in order and returns the outputs of ``return_layers``.

    Only the children up to the last returned one are kept, so the backbone's classifier is not
    part of the detector's state_dict (as with torchvision's IntermediateLayerGetter).
    """

    def __init__(self, backbone: nn.Module, return_layers):
        super().__init__()
        self.return_layers = tuple(return_layers)
        for name, child in backbone.named_children():
            self.add_module(name, child)
            if name == self.return_layers[-1]:
                break

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for name, child in self.named_children():
            x = child(x)
            if name in self.return_layers:
                outputs.append(x)
        return outputs


class RetinaFace(nn.Module):
    """Face detector. ``forward(x)`` returns ``(boxes [N,P,4], scores [N,P,2], landmarks [N,P,10])``.

    ``x`` is a BGR float image batch ``[N, 3, H, W]`` with the mean (104, 117, 123) subtracted.
    Scores are softmaxed (column 1 is "face"); boxes and landmarks are offsets from the priors.
    ``P = 2 * sum over strides s in (8, 16, 32) of ceil(H/s) * ceil(W/s)``.
    """

    def __init__(self, network_name: str = "mobile0.25", phase: str = "test"):
        super().__init__()
        if network_name not in CONFIGS:
            raise ValueError(f"unknown network_name {network_name!r}; expected one of {sorted(CONFIGS)}")
        if phase not in ("test", "train"):
            raise ValueError(f"phase must be 'test' or 'train', got {phase!r}")
        cfg = CONFIGS[network_name]
        self.network_name = network_name
        self.phase = phase
        self.body = IntermediateLayers(cfg["backbone"](), cfg["return_layers"])
        in_channel, out_channel = cfg["in_channel"], cfg["out_channel"]
        in_channels_list = [in_channel * 2, in_channel * 4, in_channel * 8]
        self.fpn = FPN(in_channels_list, out_channel)
        self.ssh1 = SSH(out_channel, out_channel)
        self.ssh2 = SSH(out_channel, out_channel)
        self.ssh3 = SSH(out_channel, out_channel)
        self.ClassHead = make_class_head(fpn_num=3, inchannels=out_channel)
        self.BboxHead = make_bbox_head(fpn_num=3, inchannels=out_channel)
        self.LandmarkHead = make_landmark_head(fpn_num=3, inchannels=out_channel)

    def forward(self, inputs: torch.Tensor):
        check_feature_map(inputs, 3, "RetinaFace")
        out = self.body(inputs)
        fpn = self.fpn(out)
        features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        bbox_regressions = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        classifications = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        ldm_regressions = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        if self.phase == "train":
            return bbox_regressions, classifications, ldm_regressions
        return bbox_regressions, F.softmax(classifications, dim=-1), ldm_regressions


def num_priors(height: int, width: int) -> int:
    """Number of anchors RetinaFace predicts for an ``height x width`` input."""
    return sum(len(m) * -(-height // s) * -(-width // s) for m, s in zip(MIN_SIZES, STEPS))
