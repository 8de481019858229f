"""The cluster-guided loss of H2G-Net (CWCE, METHODS §3) and the clusters it needs.

Clusters: deep features of a sample of training patches are standardised, reduced by
PCA to the components explaining 95 % of the variance, and grouped by k-means (k = 10).
During training every patch gets the cluster of its features, and the loss is the
cross-entropy averaged within each cluster present in the batch, then averaged over
those clusters (macro average): a large, easy cluster (e.g. plain lymphoid tissue)
weighs as much as a small, hard one.

Deviation from the paper: it clusters ImageNet-VGG16 features; no pretrained weights can
be downloaded here, so the feature extractor is pluggable (`make_extractor`): the
default is this run's own warm-up network (stage-1 patch classifier after a plain
cross-entropy warm-up, frozen), or a metastasis ScanNet model file
(``scannet:NAME_OR_PATH``), whose convolutional features are pooled. Documented in
docs/tumour-model.md.

PCA and k-means are numpy/scipy (scikit-learn is not installed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import WsiDetectError


@dataclass
class ClusterModel:
    """Standardise → project on PCA components → nearest k-means centroid."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    components: np.ndarray  # (D, q)
    centroids: np.ndarray  # (k, q)
    explained: float  # variance fraction kept

    @property
    def k(self) -> int:
        return len(self.centroids)

    def project(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.components

    def assign(self, features: np.ndarray) -> np.ndarray:
        z = self.project(features)
        d = ((z[:, None, :] - self.centroids[None]) ** 2).sum(-1)
        return d.argmin(1).astype(np.int64)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "components": self.components.tolist(),
                "centroids": self.centroids.tolist(), "explained": self.explained}

    @classmethod
    def from_dict(cls, d: dict) -> ClusterModel:
        return cls(np.asarray(d["mean"]), np.asarray(d["scale"]),
                   np.asarray(d["components"]).reshape(len(d["mean"]), -1),
                   np.asarray(d["centroids"]), float(d["explained"]))

    def save(self, path: Path) -> None:
        from .checkpoints import write_json_atomic

        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path) -> ClusterModel:
        return cls.from_dict(json.loads(Path(path).read_text()))


def pca_components(z: np.ndarray, variance: float = 0.95) -> tuple[np.ndarray, float]:
    """(D, q) principal directions of standardised data `z` explaining ≥ `variance`."""
    zc = z - z.mean(0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    var = s ** 2
    ratio = np.cumsum(var) / max(var.sum(), 1e-12)
    q = int(np.searchsorted(ratio, variance - 1e-12) + 1)
    q = max(1, min(q, len(s)))
    return vt[:q].T, float(ratio[q - 1])


def fit_clusters(features: np.ndarray, k: int = 10, variance: float = 0.95,
                 seed: int = 0) -> ClusterModel:
    """Standardise, PCA to `variance`, k-means with k-means++ starts (scipy)."""
    from scipy.cluster.vq import kmeans2

    f = np.asarray(features, np.float64)
    if len(f) < k:
        raise WsiDetectError(f"{len(f)} patches cannot make {k} clusters; sample more")
    mean, scale = f.mean(0), f.std(0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    comps, explained = pca_components((f - mean) / scale, variance)
    z = ((f - mean) / scale) @ comps
    centroids, _ = kmeans2(z, k, minit="++", seed=np.random.default_rng(seed))
    return ClusterModel(mean, scale, comps, centroids, explained)


def cwce_loss(logits: torch.Tensor, labels: torch.Tensor, clusters: torch.Tensor
              ) -> torch.Tensor:
    """Cross-entropy per cluster, macro-averaged over the clusters present."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    present, inverse = torch.unique(clusters, return_inverse=True)
    sums = torch.zeros(len(present), dtype=ce.dtype, device=ce.device).index_add_(
        0, inverse, ce)
    counts = torch.bincount(inverse, minlength=len(present)).to(ce.dtype)
    return (sums / counts).mean()


Extractor = Callable[[torch.Tensor], torch.Tensor]


def make_extractor(spec: str, warmup_net: torch.nn.Module | None, device: torch.device
                   ) -> Extractor:
    """A frozen (N, 3, H, W) normalised patches → (N, D) features function.

    "warmup": the warm-up patch classifier's pooled MobileNetV2 features (its input
    normalisation); "scannet:NAME_OR_PATH": a metastasis model's pooled conv features
    (the patch re-normalised to that model's normalisation is the caller's business: the
    features only have to separate tissue kinds, not classify them)."""
    if spec == "warmup":
        if warmup_net is None:
            raise WsiDetectError("the warm-up extractor needs the warm-up network")
        net = warmup_net.eval()

        def warm(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return net.features(x)
        return warm
    if spec.startswith("scannet:"):
        from ..models.io import load_model

        net, _ = load_model(spec.split(":", 1)[1], device)
        net.eval()

        def scannet(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return net.features(x).mean(dim=(2, 3))
        return scannet
    raise WsiDetectError(f"unknown cluster feature extractor {spec!r}: use 'warmup', "
                         "'scannet:NAME_OR_PATH' or 'none' (plain cross-entropy)")


__all__ = ["ClusterModel", "cwce_loss", "fit_clusters", "make_extractor", "pca_components"]
