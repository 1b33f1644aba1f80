"""Stage 2 — data: which images, with which labels, in which split, and whether they are fair.

Our own tree and manifest (:mod:`.samples`), the layouts other datasets ship in (:mod:`.layouts`),
grouped and stratified splits (:mod:`.splits`), and the shortcut audit (:mod:`.audit`). It may
import :mod:`glassdetect.views` and the top-level helpers, never a higher stage.

The names below are the data API as ``glassdetect.data`` offered it before it became a package.
"""
from .samples import IMAGE_SUFFIXES, MANIFEST_NAME, SPLITS, Sample, check_no_leak, load_manifest, load_tree
from .splits import assign_splits, carve_val, load_samples, pair_key, pair_units, read_split, write_split

__all__ = [
    "IMAGE_SUFFIXES", "MANIFEST_NAME", "SPLITS", "Sample", "assign_splits", "carve_val", "check_no_leak",
    "load_manifest", "load_samples", "load_tree", "pair_key", "pair_units", "read_split", "write_split",
]
