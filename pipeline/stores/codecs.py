"""Named compressors for the fbank of a feature store (the `features.codec` setting).

A codec changes the bytes on disk, never the values read back: every name here is lossless. Zarr writes
the codec into the array's own metadata, so a store reads back whatever codec it was written with.
The measured sizes and read speeds behind the default are in docs/ARCHITECTURE.md (feature store).
"""
from __future__ import annotations

from typing import Any

# zarr 3's own choice for float16 arrays, used by every store written before `features.codec` existed:
# ZstdCodec(level=0), i.e. zstd's default level 3
ZARR_DEFAULT = "zstd-3"
# the smallest store whose 32-clip batch reads are >= 20x cheaper than decode + fbank and whose writes
# cost no more than zarr's default (blosc-lz4hc is 4 % smaller still, but its writes make the feature
# stage about 2x slower)
DEFAULT_CODEC = "blosc-lz4-bitshuffle"

# name -> (compressor, its options); blosc's shuffle puts the high and low bytes of the float16 values
# in separate planes (2-byte items), bitshuffle the same per bit
CODECS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "none": None,
    "zstd-1": ("zstd", {"level": 1}),
    "zstd-3": ("zstd", {"level": 0}),  # level 0 = zstd's default, 3 (what zarr 3 writes by default)
    "blosc-lz4": ("blosc", {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}),
    "blosc-lz4-bitshuffle": ("blosc", {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"}),
    "blosc-lz4hc": ("blosc", {"cname": "lz4hc", "clevel": 5, "shuffle": "shuffle"}),
    "blosc-zstd-1": ("blosc", {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"}),
    "blosc-zstd-3": ("blosc", {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"}),
}


def check_codec(name: str) -> str:
    """`name` if it is a known codec, else a one-line ValueError naming the known ones."""
    if name not in CODECS:
        raise ValueError(f"features.codec {name!r}: unknown; known: {', '.join(CODECS)}")
    return name


def compressors(name: str) -> tuple[Any, ...]:
    """The zarr `compressors` argument for codec `name` (empty: stored uncompressed)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    spec = CODECS[check_codec(name)]
    if spec is None:
        return ()
    kind, options = spec
    if kind == "zstd":
        return (ZstdCodec(**options),)
    return (BloscCodec(typesize=2, **options),)
