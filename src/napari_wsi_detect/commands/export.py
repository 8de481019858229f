"""`wsi-detect export ngff|qupath RUN_DIR`: a finished run folder for other tools.

* ``ngff RUN_DIR [--out PATH]``: the OME-Zarr (NGFF 0.4) copy of the run's maps and
  masks, RUN_DIR/maps.ome.zarr by default (a run writes it itself when it completes;
  this rewrites it, e.g. after a kill or from a run made by an older version).
* ``qupath RUN_DIR [--out F]``: the pyramidal OME-TIFF heatmap overlay at F (default
  RUN_DIR/<task>-overlay.ome.tif) and the run's GeoJSON beside it.

See docs/results-elsewhere.md. Bad input (not a run folder, a mixed output set, a
damaged store) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run folder's results for QuPath, napari-ome-zarr "
                                      "and other OME-Zarr readers")
    kinds = p.add_subparsers(dest="export_kind", metavar="KIND")
    ngff = kinds.add_parser("ngff", help="OME-Zarr (NGFF 0.4): the maps as multiscale images, "
                                         "the masks as labels, in µm")
    ngff.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (--out of wsi-detect TASK)")
    ngff.add_argument("--out", metavar="PATH", help="where to write (default "
                                                     "RUN_DIR/maps.ome.zarr)")
    ngff.set_defaults(func=run_ngff)
    qp = kinds.add_parser("qupath", help="pyramidal OME-TIFF heatmap overlay + the GeoJSON")
    qp.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (--out of wsi-detect TASK)")
    qp.add_argument("--out", metavar="F", help="overlay file (default "
                                                "RUN_DIR/<task>-overlay.ome.tif); the GeoJSON "
                                                "goes beside it")
    qp.set_defaults(func=run_qupath)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_ngff(args: argparse.Namespace) -> int:
    from ..exports.ngff import export_ngff

    print(export_ngff(args.run_dir, args.out))
    return 0


def run_qupath(args: argparse.Namespace) -> int:
    from ..exports.qupath import export_qupath

    overlay, geojson = export_qupath(args.run_dir, args.out)
    print(overlay)
    print(geojson)
    return 0
