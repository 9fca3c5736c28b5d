"""Unlearning methods, one file each (DESIGN.md, "The method").

`METHOD_NAMES` is what requests may name. The method functions and the `METHODS` dict that maps these
names to them come with the unlearning-core issue; until then the names let the ledger refuse a
request for a method that does not exist, before anything is written.
"""

METHOD_NAMES: tuple[str, ...] = ("duge", "esd-x", "esd-u", "ablation", "rgd", "uce")
DEFAULT_METHOD = "duge"
