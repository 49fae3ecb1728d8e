#!/usr/bin/env python
"""Download a published Flickr30K / COCO input, or say where to get it by hand.

    python data_scripts/download.py --list
    python data_scripts/download.py karpathy_splits --dest data/

Resumable (a rerun continues the .part file); exit 1 with instructions for a
manual download when a file has no known URL or every mirror fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from cccl_lite.data.download import KNOWN_FILES, DownloadError, fetch  # noqa: E402
from cccl_lite.files import OutputError, check_output_dir  # noqa: E402


def list_known() -> None:
    for key, entry in KNOWN_FILES.items():
        how = "download" if all(r.urls for r in entry.files) else "by hand"
        print(f"{key}  [{how}]\n  {entry.description}\n  page: {entry.page}")
        for r in entry.files:
            print(f"    {r.name}" + (f"  <- {r.urls[0]}" if r.urls else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", choices=sorted(KNOWN_FILES), help="what to download")
    p.add_argument("--dest", default="data", help="folder to download into (default: data)")
    p.add_argument("--list", action="store_true", help="list the known inputs and exit")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per network read")
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
        for path in fetch(args.name, args.dest, timeout=args.timeout):
            print(f"{path}: ok")
    except DownloadError:
        return 1  # fetch printed where to get the file by hand
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the .part file",
              file=sys.stderr)
        return 130
    print(f"next: {KNOWN_FILES[args.name].then}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
