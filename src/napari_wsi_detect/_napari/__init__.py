"""The napari skin: reader, sample data, layer conversions (and, later, widgets/writer).

Only this sub-package imports napari or Qt; the core (`napari_wsi_detect.slide`, engine,
CLI) never does. Contributions are declared in `napari_wsi_detect/napari.yaml` (npe2).
"""
