"""One module per `wsi-detect` sub-command; see `cli.py`."""
