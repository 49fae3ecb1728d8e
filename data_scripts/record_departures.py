"""Write into the shipped model's record how it differs from the paper as printed.

    python data_scripts/record_departures.py           # print them
    python data_scripts/record_departures.py --check   # exit 1 if the record's differ
    python data_scripts/record_departures.py --write   # write them into the record

``python -m cccl_lite ship`` writes ``departures`` into every record it makes
(:func:`cccl_lite.engine.departures.departures`, from the record's own ``config`` and
``recipe``, or a record's ``config`` and ``options`` from before the recipe was its own
object); this script adds them to a record shipped before that, changing
nothing else in it. ``tests/test_departures.py`` fails when the shipped
record's list differs from what the code derives from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cccl_lite.errors import InputError, read_json
from cccl_lite.files import write_text_atomic
from cccl_lite.engine.departures import departures
from cccl_lite.engine.recipes import settings_of

SHIPPED = Path(__file__).resolve().parent.parent / "cccl_lite" / "assets" / "lite-scenes-small-seed0.json"


def derived(record: dict, path: Path) -> list[dict]:
    for key in ("config", "options"):
        if not isinstance(record.get(key), dict):
            raise InputError(f"{path}: field {key!r} missing or not an object")
    try:  # a record of this version (with "recipe") or of the one before
        config, recipe, _ = settings_of(record)
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: its config or recipe does not fit this cccl_lite "
                         f"({e})") from None
    return departures(config, recipe)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--record", type=Path, default=SHIPPED, help="a shipped model's JSON record")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    try:
        record = read_json(args.record)
        want = derived(record, args.record)
    except (InputError, ValueError) as e:
        print(f"record_departures: {e}", file=sys.stderr)
        return 1
    if args.check:
        if record.get("departures") != want:
            print(f"{args.record}: its departures differ from the code's; run "
                  "python data_scripts/record_departures.py --write", file=sys.stderr)
            return 1
        return 0
    if args.write:
        # The record's other keys stay as they are, in their order; departures
        # go after "options", where ship writes them.
        out = {}
        for k, v in record.items():
            if k != "departures":
                out[k] = v
            if k == "options":
                out["departures"] = want
        write_text_atomic(json.dumps(out, indent=1, ensure_ascii=False) + "\n", args.record)
        return 0
    print(json.dumps(want, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
