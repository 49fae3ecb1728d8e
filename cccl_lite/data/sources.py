"""Where Flickr30K / COCO inputs can be had today: the registry of :mod:`cccl_lite.data.download`.

:data:`KNOWN_FILES` lists the published inputs of the two converters
(``precomp.py``: SCAN's features + CAMERA's or GSMN's boxes; ``tsv.py``:
bottom-up-attention TSVs + Karpathy's split JSON). Each entry has the files
a converter needs and its :class:`Source` s, tried in order. Every source
says where we found it (``cited``: repository + file or issue); nothing here
was invented. This module is data only: hosts die and mirrors appear, so it
is the part that changes; the downloader that reads it, with its checks, is
:mod:`cccl_lite.data.download` (which re-exports every name here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = ["KINDS", "Source", "KnownFile", "KNOWN_FILES", "SCAN_NAMES", "DATASET_TAGS",
           "SCAN_SPLITS"]

#: How a source is fetched: plain HTTPS, a Google Drive file or folder, a Kaggle dataset.
KINDS = ("https", "gdrive", "gdrive_folder", "kaggle")


@dataclass(frozen=True)
class Source:
    """One place to get an input from.

    kind: "https" (ref: a URL), "gdrive" (ref: a Drive file id), "gdrive_folder"
    (ref: a Drive folder id), "kaggle" (ref: owner/dataset). cited: where this
    source was found (repository + file, or issue). saves_as: the name under
    ``--dest`` (default: the URL's last part; Drive's own file name; for a
    folder, the folder id; Kaggle's ``<dataset>.zip``). min_bytes: anything
    smaller is refused (an error page, a cut-off file); None when unknown.
    """

    kind: str
    ref: str
    cited: str
    saves_as: str | None = None
    note: str = ""
    min_bytes: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Source kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def id(self) -> str:
        """The key of this source in the checksum file."""
        return f"{self.kind}:{self.ref}"

    @property
    def link(self) -> str:
        """Where a person can look at it in a browser."""
        return {"https": self.ref,
                "gdrive": f"https://drive.google.com/file/d/{self.ref}/view",
                "gdrive_folder": f"https://drive.google.com/drive/folders/{self.ref}",
                "kaggle": f"https://www.kaggle.com/datasets/{self.ref}"}[self.kind]


@dataclass(frozen=True)
class KnownFile:
    """A published input: what it is, its publisher's page, the files a
    converter reads (relative names, for manual placement), what to do next,
    and the sources that serve it today (tried in order)."""

    description: str
    page: str
    files: tuple[str, ...]
    then: str
    sources: tuple[Source, ...] = ()


def _names(folder: str, splits: Sequence[str], patterns: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{folder}/{s}_{p}" for s in splits for p in patterns)


_F30K, _COCO = ("train", "dev", "test"), ("train", "dev", "test", "testall")
_BU = "https://github.com/peteanderson80/bottom-up-attention"
_GiB, _MiB = 2**30, 2**20
# An archive with Flickr30K's features holds at least 31,783 x 36 x 2048 float32
# (9.4 GB) before compression; 1 GiB is far below that and far above any web page.
_FEATURES_MIN = _GiB

KNOWN_FILES: dict[str, KnownFile] = {
    "scan_precomp": KnownFile(
        "SCAN's precomputed data: bottom-up features (36 regions x 2048), captions and image "
        "ids of Flickr30K (f30k_precomp) and COCO (coco_precomp), split as Karpathy's",
        "https://github.com/kuanghuei/SCAN (README, 'Download data')",
        _names("f30k_precomp", _F30K, ("ims.npy", "caps.txt")),
        "data_scripts/download.py scan_precomp --extract f30k (or coco) copies the dataset's "
        "files into DEST/f30k_precomp; then run data_scripts/prepare_precomp.py --src there",
        (Source("https", "https://iudata.blob.core.windows.net/scan/data.zip",
                "kuanghuei/SCAN README.md at commit a5fa1d9 (the iudata mirror that replaced "
                "scanproject.blob.core.windows.net)", "scan_data.zip",
                min_bytes=_FEATURES_MIN),
         Source("gdrive", "1iY6S-w-vG-4T_v9OvlFkZ1GDPzX5YVtl",
                "woodfrog/vse_infty issue 8 (VSE∞'s maintainer's copy, 2022-12-23; also in "
                "kuanghuei/SCAN issue 58)",
                note="its folder layout may differ from SCAN's (VSE∞'s data/f30k/precomp)",
                min_bytes=_FEATURES_MIN),
         Source("gdrive_folder", "1os1Kr7HeTbh8FajBNegW8rjJf6GIhFqC",
                "LgQu/CAMERA README.md ('You can also get the data from google drive')",
                "scan_drive_folder"),
         Source("kaggle", "kuanghueilee/scan-features",
                "kuanghuei/SCAN issue 58 (SCAN's author: 'I started hosting the data on "
                "Kaggle'), Paranioar/SGRAF issue 20, HuiChen24/IMRAM issue 9",
                note="needs a Kaggle API token", min_bytes=_FEATURES_MIN))),
    "camera_boxes": KnownFile(
        "CAMERA's boxes and image sizes for SCAN's rows: {split}_boxes.npy (pixel x1, y1, x2, "
        "y2) and {split}_img_sizes.npy (width, height)",
        "https://github.com/LgQu/CAMERA (README, 'Download data')",
        _names("f30k_precomp", _F30K, ("boxes.npy", "img_sizes.npy"))
        + _names("coco_precomp", _COCO, ("boxes.npy", "img_sizes.npy")),
        "data_scripts/download.py camera_boxes --extract f30k copies them next to SCAN's "
        "files; then data_scripts/prepare_precomp.py --boxes camera",
        (Source("gdrive", "1K9LnWJc71dK6lF1BJMPlbkIu_vYmHjVP",
                "LgQu/CAMERA README.md ('the positions of detected boxes ... can be "
                "downloaded from')", min_bytes=_MiB),)),
    "gsmn_boxes_f30k": KnownFile(
        "GSMN's boxes and image sizes for SCAN's Flickr30K rows: {split}_ims_bbx.npy (pixel "
        "x1, y1, x2, y2) and {split}_ims_size.npy (pickled image_w/image_h dicts)",
        "https://github.com/CrossmodalGroup/GSMN (README, 'Download data')",
        _names("f30k_precomp", _F30K, ("ims_bbx.npy", "ims_size.npy")),
        "data_scripts/download.py gsmn_boxes_f30k --extract f30k copies them next to SCAN's "
        "files; then data_scripts/prepare_precomp.py --boxes gsmn",
        (Source("gdrive_folder", "1kuLiCLb5luJdorJuKMVhT7BMVhJSybT-",
                "CrossmodalGroup/CMCAN README.md ('ims_bbx.npy, ims_size.npy, "
                "precaps_stan.txt for Flickr30K: f30k_precomp')", "cmcan_f30k_precomp"),
         Source("gdrive", "1ZVLIN7uSh3dqYAEldelyYF2ei9vicJvZ",
                "CrossmodalGroup/GSMN README.md and issue 3 (text features, boxes and "
                "dependencies of Flickr30K and MSCOCO in one file)", min_bytes=_MiB))),
    "gsmn_boxes_coco": KnownFile(
        "GSMN's boxes and image sizes for SCAN's COCO rows (as gsmn_boxes_f30k)",
        "https://github.com/CrossmodalGroup/GSMN (README, 'Download data')",
        _names("coco_precomp", _COCO, ("ims_bbx.npy", "ims_size.npy")),
        "data_scripts/download.py gsmn_boxes_coco --extract coco copies them next to SCAN's "
        "files; then data_scripts/prepare_precomp.py --boxes gsmn",
        (Source("gdrive_folder", "1iKUOq4NL14I3imhUuPB0sdF_DZHgB4o7",
                "CrossmodalGroup/CMCAN README.md ('ims_bbx.npy, ims_size.npy, "
                "precaps_stan.txt for MSCOCO: coco_precomp')", "cmcan_coco_precomp"),
         Source("gdrive", "1ZVLIN7uSh3dqYAEldelyYF2ei9vicJvZ",
                "CrossmodalGroup/GSMN README.md and issue 3", min_bytes=_MiB))),
    "karpathy_splits": KnownFile(
        "Karpathy's split JSONs (dataset_flickr30k.json, dataset_coco.json, "
        "dataset_flickr8k.json) in caption_datasets.zip",
        "https://cs.stanford.edu/people/karpathy/deepimagesent/",
        ("caption_datasets.zip",),
        "unzip caption_datasets.zip; pass dataset_flickr30k.json or dataset_coco.json to "
        "data_scripts/prepare_tsv.py --karpathy",
        tuple(Source("https", url, "cs.stanford.edu/people/karpathy/deepimagesent/ (the page)",
                     "caption_datasets.zip")
              for url in ("https://cs.stanford.edu/people/karpathy/deepimagesent/"
                          "caption_datasets.zip",
                          "http://cs.stanford.edu/people/karpathy/deepimagesent/"
                          "caption_datasets.zip"))),
    "bottomup_coco_36": KnownFile(
        "bottom-up-attention features of COCO train2014 + val2014, 36 boxes per image (TSV)",
        f"{_BU} (README, 'Pretrained features')",
        ("trainval_36.zip",),
        "unzip trainval_36.zip; pass its .tsv to data_scripts/prepare_tsv.py --tsv with "
        "--karpathy dataset_coco.json",
        (Source("https", "https://imagecaption.blob.core.windows.net/imagecaption/trainval_36.zip",
                "peteanderson80/bottom-up-attention README.md", min_bytes=_GiB),)),
    "bottomup_coco_adaptive": KnownFile(
        "bottom-up-attention features of COCO train2014 + val2014, 10-100 boxes per image "
        "(TSV files)",
        f"{_BU} (README, 'Pretrained features')",
        ("trainval.zip",),
        "unzip trainval.zip; pass all its .tsv files to data_scripts/prepare_tsv.py --tsv with "
        "--karpathy dataset_coco.json (--num-regions keeps the first boxes of each image)",
        (Source("https", "https://imagecaption.blob.core.windows.net/imagecaption/trainval.zip",
                "peteanderson80/bottom-up-attention README.md", min_bytes=_GiB),)),
    "bottomup_flickr30k": KnownFile(
        "bottom-up-attention features of the Flickr30K images (TSV); not published as a "
        "download: extract them with tools/generate_tsv.py of bottom-up-attention from the "
        "Flickr30K images (distributed by the Flickr30K authors on request)",
        f"{_BU} (README, 'Demo' and tools/generate_tsv.py)",
        ("flickr30k_resnet101_faster_rcnn_genome.tsv",),
        "pass the .tsv file(s) to data_scripts/prepare_tsv.py --tsv with "
        "--karpathy dataset_flickr30k.json"),
}

# SCAN's file names per split (SCAN's data.py), CAMERA's (CAMERA's data.py) and
# GSMN's (GSMN's data.py): what extract_scan_files looks for.
SCAN_NAMES = {
    "features": ("ims.npy", "caps.txt", "ids.txt"),
    "camera": ("boxes.npy", "img_sizes.npy"),
    "gsmn": ("ims_bbx.npy", "ims_size.npy"),
}
#: The words a folder name holds when it holds one dataset's files, and each dataset's splits.
DATASET_TAGS = {"f30k": ("f30k", "flickr"), "coco": ("coco",)}
SCAN_SPLITS = {"f30k": _F30K, "coco": _COCO}
