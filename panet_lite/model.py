"""PANet: prototypes from the supports, cosine matching on the query, prototype alignment in training.

The same model runs two later methods built on PANet's matching, chosen by `method`:
MLC's baseline (Yang et al., ICCV 2021) and SSP's self-support matching (Fan et al., ECCV 2022).
They change a few of PANet's choices and add nothing learned; METHOD_CHOICES lists which.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .alignment import alignment_loss, support_target
from .data import IGNORE
from .episodes import size_mismatch
from .encoders import build_encoder, min_image_size, recompute_pieces
from .matching import ALPHA, prototype_scores, upsample_scores
from .pooling import downsampled_mask_pool, episode_prototypes, masked_average_pool
from .ssp import SSP_SCALE, ssp_match, two_way_scores

METHODS = ("panet", "mlc", "ssp")
# What each method changes in PANet's forward pass (the encoder and the recipe are TrainConfig's):
# the cosine scale, how masks pool features, how scores are upsampled, whether the 255 borders of a
# support count as its background, and the training loss beside the query's cross-entropy.
METHOD_CHOICES = {
    "panet": {"scale": ALPHA, "pooling": "features upsampled to the mask (late fusion)", "align_corners": False,
              "borders_are_background": True, "extra_loss": "prototype alignment (PAR)"},
    "mlc": {"scale": SSP_SCALE, "pooling": "mask downsampled to the features", "align_corners": True,
            "borders_are_background": False, "extra_loss": "none"},
    "ssp": {"scale": SSP_SCALE, "pooling": "mask downsampled to the features", "align_corners": True,
            "borders_are_background": False,
            "extra_loss": "query and supports each matched to their own ground-truth prototypes (weights 1, 0.2)"},
}
SUPPORT_SELF_WEIGHT = 0.2  # SSP's weight of the supports' self-matching loss


class PANetOutput(NamedTuple):
    logits: torch.Tensor  # (B, Q, 1 + N, H, W): [bg, way 1, ..., way N] scores at image size
    align_loss: torch.Tensor  # scalar; zero in eval mode or with align=False
    aux_loss: torch.Tensor = torch.zeros(())  # scalar: SSP's self-matching losses in training; zero otherwise


class PANet(nn.Module):
    """Few-shot segmenter with no parameters beyond its encoder.

    backbone: "vgg16" (the paper's), "resnet50" (dilated; for the COCO-20i 2-way row filed under PANet,
    not in PANet's paper), "resnet50-deepstem" (MLC's
    and SSP's) or "small" (CPU course). pretrained: True for torchvision's ImageNet weights, a path
    for a local state dict, False for random init. method: "panet", "mlc" (MLC's baseline) or "ssp"
    (self-support matching, 1-way episodes). align: add the prototype alignment loss in training
    (PANet's; default on for "panet", refused for the others). alpha: cosine scale (default: the
    method's, 20 or 10). refine: SSP's second self-support step.
    """

    recompute = False  # set by train(config.recompute): activation checkpointing of the encoder in training

    def __init__(self, backbone: str = "vgg16", pretrained: bool | str | Path = False, align: bool | None = None,
                 alpha: float | None = None, resnet_layer: str = "layer3", method: str = "panet",
                 refine: bool = False) -> None:
        super().__init__()
        self.backbone, self.resnet_layer = backbone, resnet_layer
        self._set_method(method, align, alpha, refine)
        self.encoder = build_encoder(backbone, pretrained, resnet_layer)

    def _set_method(self, method: str, align: bool | None, alpha: float | None, refine: bool) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        align = (method == "panet") if align is None else align
        if align and method != "panet":
            raise ValueError(f"prototype alignment is PANet's training loss; --method {method} trains without it "
                             f"(--align false)")
        if refine and method != "ssp":
            raise ValueError("--refine is a step of SSP's matching: use it with --method ssp")
        self.align, self.method, self.refine = align, method, refine
        self.alpha = METHOD_CHOICES[method]["scale"] if alpha is None else alpha

    def as_method(self, method: str, refine: bool = False) -> "PANet":
        """This model's encoder under another method's matching (its scale, pooling, upsampling and
        support borders), e.g. to test what SSP's matching alone does for an encoder trained as PANet.

        The new model shares the encoder itself (its weights and its train/eval mode), not a copy;
        PAR is on only for "panet". Train it only if the two models should learn together.
        """
        other = copy.copy(self)
        other._modules = dict(self._modules)  # assigning a module to one never changes the other
        other._set_method(method, None, None, refine)
        return other

    @property
    def init_args(self) -> dict:
        """The constructor's arguments (but `pretrained`): what a checkpoint stores to rebuild this model."""
        return {"backbone": self.backbone, "align": self.align, "alpha": self.alpha, "resnet_layer": self.resnet_layer,
                "method": self.method, "refine": self.refine}

    @property
    def borders_are_background(self) -> bool:
        """Whether this method's supports count their 255 borders as background (PANet's code does)."""
        return METHOD_CHOICES[self.method]["borders_are_background"]

    def _pool(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return masked_average_pool(features, masks) if self.method == "panet" else downsampled_mask_pool(features, masks)

    def _upsample(self, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return upsample_scores(scores, size, METHOD_CHOICES[self.method]["align_corners"])

    def encode(self, support_images: torch.Tensor, query_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of all supports (B, N, K, C, h, w) and queries (B, Q, C, h, w), in one batch."""
        B, N, K = support_images.shape[:3]
        Q = query_images.shape[1]
        images = torch.cat([support_images.flatten(0, 2), query_images.flatten(0, 1)])
        smallest = min_image_size(self.encoder)
        if min(images.shape[-2:]) < smallest:  # 1 feature pixel a side: fg and bg prototypes coincide
            stride = getattr(self.encoder, "stride", 8)
            raise ValueError(f"images of {images.shape[-2]}x{images.shape[-1]} pixels are too small for the "
                             f"stride-{stride} encoder: use at least {smallest} pixels a side (--size)")
        feats = self._run_encoder(images)
        return feats[: B * N * K].unflatten(0, (B, N, K)), feats[B * N * K:].unflatten(0, (B, Q))

    def _run_encoder(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's features; with `recompute` (training, gradients on), only the input of each
        piece between max-pools is kept, and each piece's activations are recomputed in backward, one
        image at a time (the encoders normalise each image on its own, so that changes nothing): the
        same gradients, a fraction of the memory, one more encoder forward per step."""
        if not (self.recompute and self.training and torch.is_grad_enabled()):
            return self.encoder(images)
        x = images
        for piece in recompute_pieces(self.encoder):
            x = torch.cat([checkpoint(piece, image, use_reentrant=False) for image in x.split(1)])
        return x

    def forward(self, support_images: torch.Tensor, support_fg: torch.Tensor, support_bg: torch.Tensor,
                query_images: torch.Tensor, query_labels: torch.Tensor | None = None) -> PANetOutput:
        """support_images (B, N, K, 3, H, W) normalised; support_fg, support_bg (B, N, K, H, W) float 0/1;
        query_images (B, Q, 3, H, W); query_labels (B, Q, H, W) episode labels, needed only to train SSP.
        Returns logits (B, Q, 1 + N, H, W), the alignment loss and SSP's self-matching loss."""
        if support_images.shape[-2:] != query_images.shape[-2:]:
            raise ValueError(size_mismatch([tuple(support_images.shape[-2:]), tuple(query_images.shape[-2:])],
                                           "this episode's supports and queries"))
        support_feats, query_feats = self.encode(support_images, query_images)
        size = query_images.shape[-2:]
        if self.method == "ssp":
            return self._ssp_forward(support_feats, query_feats, support_fg, support_bg, query_labels, size)
        zero = query_feats.new_zeros(())
        prototypes = episode_prototypes(support_feats, support_fg, support_bg, self._pool)  # (B, 1+N, C)
        scores = prototype_scores(query_feats, prototypes, self.alpha)  # (B, Q, 1+N, h, w)
        logits = self._upsample(scores, size)
        if self.training and self.align:
            align = alignment_loss(support_feats, query_feats, scores, support_fg, support_bg)
        else:
            align = zero
        return PANetOutput(logits, align, zero)

    def _ssp_forward(self, support_feats, query_feats, support_fg, support_bg, query_labels, size) -> PANetOutput:
        """SSP on 1-way episodes: support prototypes, self-support matching, and in training the
        self-matching losses of SSP's code (each query and each support against its own
        ground-truth prototypes) plus, with `refine`, the loss of the first self-support step."""
        B, N, K = support_fg.shape[:3]
        Q = query_feats.shape[1]
        if N != 1:
            raise ValueError(f"SSP matches 1-way episodes (its self-support step has one foreground), got {N} ways: "
                             f"use --ways 1, or --method panet or mlc")
        feats_k = support_feats[:, 0]  # (B, K, C, h, w)
        fg_k, bg_k = self._pool(feats_k, support_fg[:, 0]), self._pool(feats_k, support_bg[:, 0])  # (B, K, C)
        queries = query_feats.flatten(0, 1)  # (B*Q, C, h, w); every query of an episode uses its prototypes
        match = ssp_match(queries, fg_k.mean(1).repeat_interleave(Q, 0), bg_k.mean(1).repeat_interleave(Q, 0),
                          self.refine, self.alpha)
        logits = self._upsample(match["scores"], size).unflatten(0, (B, Q))  # (B, Q, 2, H, W)
        zero = queries.new_zeros(())
        if not self.training:
            return PANetOutput(logits, zero, zero)
        if query_labels is None:
            raise ValueError("SSP's training loss matches the query with its own ground truth: pass query_labels")
        labels = query_labels.flatten(0, 1)  # (B*Q, H, W): 0 bg, 1 fg, 255 ignored
        q_fg, q_bg = self._pool(queries, (labels == 1).float()), self._pool(queries, (labels == 0).float())
        self_logits = self._upsample(two_way_scores(queries, q_fg, q_bg, self.alpha), size)
        aux = F.cross_entropy(self_logits, labels, ignore_index=IGNORE)
        supp_logits = self._upsample(two_way_scores(feats_k.flatten(0, 1), fg_k.flatten(0, 1), bg_k.flatten(0, 1),
                                                    self.alpha), size)
        target = support_target(support_fg[:, 0].flatten(0, 1), support_bg[:, 0].flatten(0, 1))
        aux = aux + SUPPORT_SELF_WEIGHT * F.cross_entropy(supp_logits, target, ignore_index=IGNORE)
        if self.refine:  # SSP's code also supervises the prediction before refinement
            aux = aux + F.cross_entropy(self._upsample(match["second"], size), labels, ignore_index=IGNORE)
        return PANetOutput(logits, zero, aux)
