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

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from cccl_lite.data.download import (KNOWN_FILES, DownloadError, extract_scan_files,  # noqa: E402
                                     fetch, load_checksums)
from cccl_lite.files import OutputError, check_output_dir  # noqa: E402


# What --extract copies out of each input (cccl_lite.data.download.SCAN_NAMES).
EXTRACT_KINDS = {"scan_precomp": ("features",), "camera_boxes": ("camera",),
                 "gsmn_boxes_f30k": ("gsmn",), "gsmn_boxes_coco": ("gsmn",)}


def list_known() -> None:
    recorded = load_checksums()
    for key, entry in KNOWN_FILES.items():
        how = f"{len(entry.sources)} source(s)" if entry.sources else "by hand only"
        print(f"{key}  [{how}]\n  {entry.description}\n  page: {entry.page}")
        for k, s in enumerate(entry.sources, 1):
            sha = "sha256 recorded" if s.id in recorded else "sha256 not recorded yet"
            print(f"    {k}. {s.kind:<13} {s.link}\n       from: {s.cited}"
                  + (f"\n       note: {s.note}" if s.note else "") + f"\n       {sha}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", choices=sorted(KNOWN_FILES), help="what to download")
    p.add_argument("--dest", default="data", help="folder to download into (default: data)")
    p.add_argument("--list", action="store_true", help="list the known inputs and exit")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per network read")
    p.add_argument("--source", default=None, metavar="N|KIND",
                   help="use only this source: its number in --list, or https, gdrive, "
                        "gdrive_folder, kaggle (default: each in turn)")
    p.add_argument("--record", action="store_true",
                   help="write the sha256 and size of the fetched files to the registry "
                        "(cccl_lite/data/checksums.json) instead of checking them")
    p.add_argument("--verify", action="store_true",
                   help="also recompute the sha256 of files fetched by an earlier run")
    p.add_argument("--extract", choices=("f30k", "coco"), default=None,
                   help="then copy that dataset's SCAN-layout files into --extract-to")
    p.add_argument("--extract-to", default=None,
                   help="default: DEST/f30k_precomp or DEST/coco_precomp")
    args = p.parse_args(argv)
    if args.list:
        list_known()
        return 0
    if args.name is None:
        p.error("give a NAME (see --list)")
    if not args.timeout > 0 or args.timeout == float("inf"):
        p.error(f"argument --timeout: expected a finite number > 0, got {args.timeout}")
    try:  # --dest under a file, or read-only: one line now, not a traceback later
        check_output_dir(args.dest, "destination folder (--dest)")
    except OutputError as e:
        print(f"download.py: error: {e}", file=sys.stderr)
        return 1
    try:
        paths = fetch(args.name, args.dest, timeout=args.timeout, record=args.record,
                      verify=args.verify, only=args.source)
        for path in paths:
            print(f"{path}: ok")
    except DownloadError:
        return 1  # fetch printed where to get the file by hand
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the .part file",
              file=sys.stderr)
        return 130
    if args.extract:
        if args.name not in EXTRACT_KINDS:
            p.error(f"--extract works for {', '.join(EXTRACT_KINDS)}, not {args.name}")
        out = Path(args.extract_to or Path(args.dest) / f"{args.extract}_precomp")
        try:
            files = extract_scan_files(paths, args.extract, out, EXTRACT_KINDS[args.name])
        except DownloadError as e:
            print(f"download.py: error: {e}", file=sys.stderr)
            return 1
        print(f"{len(files)} {args.extract} file(s) in {out}: {', '.join(f.name for f in files)}")
        return 0
    print(f"next: {KNOWN_FILES[args.name].then}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
