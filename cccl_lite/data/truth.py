"""Ground truth of the synthetic scenes: is a caption true of an image?

A synthetic caption is written for one image, but many are true of others
too ("two circles", "a red square"): a scene's siblings share its objects,
and short captions fit many scenes. The grammar knows the rule
(:func:`cccl_lite.data.grammar.caption_holds`) and reads a caption's
meaning back from its words (:func:`cccl_lite.data.grammar.parse_caption`,
re-exported here); this module applies the rule to any scene, so training
and evaluation can use the truth instead of "the image it was written for"
(chapters 5, 6 and 8).

* :func:`caption_true_of`, :func:`truth_matrix`: one pair, or every pair of
  given scenes and captions.
* :class:`SplitTruth`: a split of a synthetic file, every caption parsed and
  every scene placed once, so that the truth of any (images x captions)
  block (a training batch) costs only the checks themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from cccl_lite.data.grammar import Caption, caption_holds, parse_caption
from cccl_lite.data.layout import GRID, read_scenes
from cccl_lite.data.schema import SchemaError

__all__ = ["parse_caption", "caption_true_of", "truth_matrix", "SplitTruth"]


def _with_cells(scene: Sequence[dict], canvas: float) -> list[dict]:
    """Objects with the grid cell (row, column) of their box's centre: the stored
    scenes keep only the box, and each centre stays inside its cell."""
    side = canvas / GRID
    out = []
    for o in scene:
        x1, y1, x2, y2 = o["box"]
        row = min(GRID - 1, int((y1 + y2) / 2 // side))
        col = min(GRID - 1, int((x1 + x2) / 2 // side))
        out.append({**o, "cell": (row, col)})
    return out


def caption_true_of(tokens: str | Sequence[str], kind: str, scene: Sequence[dict],
                    canvas: float) -> bool:
    """Whether a synthetic caption is true of a scene (not only of its own image).

    scene: the objects of ``images/scene`` (shape, colour, size, box in pixels)
    on a square canvas of side ``canvas``. Uses the generator's own rule
    (``grammar.caption_holds``: exact counts, "the" = exactly one, relations
    between grid cells).
    """
    return caption_holds(parse_caption(tokens, kind), _with_cells(scene, canvas))


def truth_matrix(tokens: Sequence, kinds: Sequence[str], scenes: Sequence[Sequence[dict]],
                 canvas: float) -> np.ndarray:
    """:func:`caption_true_of` for every (scene, caption): (N_img, N_txt) bool.

    tokens, kinds: one entry per caption (``captions/tokens``, ``captions/kind``);
    scenes: one object list per image (``images/scene``). Each caption is
    parsed once, each scene's cells computed once.
    """
    if len(tokens) != len(kinds):
        raise ValueError(f"truth_matrix: {len(tokens)} tokens but {len(kinds)} kinds")
    captions = [parse_caption(t, k) for t, k in zip(tokens, kinds)]
    placed = [_with_cells(s, canvas) for s in scenes]
    return np.array([[caption_holds(c, objects) for c in captions] for objects in placed],
                    dtype=bool).reshape(len(scenes), len(captions))


class SplitTruth:
    """The truth of one split of a synthetic-scenes file, for any block of pairs.

    ``SplitTruth(path, split)`` reads ``images/scene``, ``images/size``,
    ``captions/tokens`` and ``captions/kind`` (a file without scenes, e.g.
    Flickr30K, raises :class:`SchemaError`: it has no truth beyond its own
    pairs). ``truth(image_idx, caption_idx)`` -> (len(image_idx),
    len(caption_idx)) bool, True where the caption is true of the image;
    ``group``: (N,) the group of each image (siblings share one).
    """

    def __init__(self, path, split: str):
        self.path, self.split = Path(path), split
        with h5py.File(self.path, "r") as f:
            g = f[split]
            for field in ("images/scene", "images/group", "captions/kind"):
                if field not in g:
                    raise SchemaError(f"{self.path}:/{split}/{field}: missing; the caption "
                                      f"truth needs the synthetic scenes' fields")
            scenes = read_scenes(g["images/scene"], f"{self.path}:/{split}/images/scene")
            sizes = g["images/size"][:]
            self.group = g["images/group"][:]
            tokens = list(g["captions/tokens"].asstr()[:])
            kinds = list(g["captions/kind"].asstr()[:])
            self.caption_image = g["captions/image"][:]
        self._captions = [parse_caption(t, k) for t, k in zip(tokens, kinds)]
        # Square canvases (the generator's); the cell rule needs the side.
        self._scenes = [_with_cells(s, float(w)) for s, (w, _h) in zip(scenes, sizes)]

    @property
    def n_images(self) -> int:
        return len(self._scenes)

    @property
    def n_captions(self) -> int:
        return len(self._captions)

    def holds(self, caption: Caption, image: int) -> bool:
        """Whether ``caption`` (a meaning, e.g. from :func:`parse_caption`) is
        true of image ``image`` of the split."""
        return caption_holds(caption, self._scenes[int(image)])

    def truth(self, image_idx, caption_idx) -> np.ndarray:
        """(len(image_idx), len(caption_idx)) bool: caption k true of image i."""
        image_idx = np.asarray(image_idx, dtype=np.int64).reshape(-1)
        caption_idx = np.asarray(caption_idx, dtype=np.int64).reshape(-1)
        return np.array([[caption_holds(self._captions[k], self._scenes[i]) for k in caption_idx]
                         for i in image_idx], dtype=bool).reshape(len(image_idx), len(caption_idx))
