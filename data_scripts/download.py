#!/usr/bin/env python
"""Download a published Flickr30K / COCO input from a source that serves it today.

    python data_scripts/download.py --list
    python data_scripts/download.py scan_precomp --dest data/flickr30k --extract f30k
    python data_scripts/download.py gsmn_boxes_f30k --dest data/flickr30k --extract f30k
    python data_scripts/download.py karpathy_splits --dest data/

Each input's sources (cccl_lite.data.download.KNOWN_FILES) are tried in order:
plain HTTPS (resumable), Google Drive through gdown, Kaggle through the kaggle
client (it needs an API token: https://www.kaggle.com/settings/api). gdown and
kaggle come with ``pip install 'cccl_lite[download]'``. An HTML page, a file
of the wrong format or far too small is refused and deleted. ``--record``
writes the sha256 and size of what was fetched to the registry's
checksums.json; later downloads are held to them. ``--extract f30k`` then
copies the dataset's SCAN-layout files into DEST/f30k_precomp for
prepare_precomp.py. Exit 1 with the reasons and manual instructions when no
source delivers.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's cccl_lite
from cccl_lite.cli.data import script_main  # noqa: E402


def main(argv=None) -> int:
    """``python -m cccl_lite download``, named download.py in its messages."""
    return script_main("download", argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
