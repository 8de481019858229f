"""Evaluation against ground truth: Camelyon16 FROC and slide AUC (`froc.py`, `auc.py`),
figures (`plots.py`), tumour segmentation Dice (`segmentation.py`; inputs in
`segmentation_io.py`, the mask-vs-truth figure in `segmentation_plot.py`), and the
readers that turn run folders / CSVs / masks / annotations into `SlideEval`s
(`froc_io.py`).

Names are imported lazily so `import napari_wsi_detect.evaluation` stays cheap; other
evaluation modules (detection F1, segmentation Dice) add their names to `_LAZY`.
"""

from __future__ import annotations

from .._lazy import attach

_LAZY = {
    "EvaluationError": "napari_wsi_detect.evaluation.froc",
    "SlideEval": "napari_wsi_detect.evaluation.froc",
    "FrocResult": "napari_wsi_detect.evaluation.froc",
    "compute_froc": "napari_wsi_detect.evaluation.froc",
    "evaluation_mask_from_mask": "napari_wsi_detect.evaluation.froc",
    "evaluation_mask_from_polygons": "napari_wsi_detect.evaluation.froc",
    "RocResult": "napari_wsi_detect.evaluation.auc",
    "slide_auc": "napari_wsi_detect.evaluation.auc",
    "plot_froc": "napari_wsi_detect.evaluation.plots",
    "load_detections": "napari_wsi_detect.evaluation.froc_io",
    "load_truth": "napari_wsi_detect.evaluation.froc_io",
    "CaseEval": "napari_wsi_detect.evaluation.detection",
    "F1Result": "napari_wsi_detect.evaluation.detection",
    "evaluate_f1": "napari_wsi_detect.evaluation.detection",
    "plot_f1_curve": "napari_wsi_detect.evaluation.detection",
    "SlideDice": "napari_wsi_detect.evaluation.segmentation",
    "DiceResult": "napari_wsi_detect.evaluation.segmentation",
    "slide_dice": "napari_wsi_detect.evaluation.segmentation",
    "summarise_slides": "napari_wsi_detect.evaluation.segmentation",
    "plot_dice": "napari_wsi_detect.evaluation.segmentation_plot",
}

__getattr__, __all__ = attach(__name__, _LAZY)
