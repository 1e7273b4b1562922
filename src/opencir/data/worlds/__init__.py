"""Miniature worlds: offline CIR benchmarks plus unannotated training collections.

* :func:`generate_shapes_world` — ShapesCIR, rendered scenes of coloured shapes.
* :func:`generate_emoji_world` — EmojiCIR, Noto Color Emoji artwork with Unicode names.

Both write the layout described in :mod:`opencir.data.worlds.common`; the benchmark adapter is
:func:`opencir.eval.benchmarks.worlds.load_world_split`.
"""

from opencir.data.worlds.common import WorldInfo, read_world_info
from opencir.data.worlds.emoji import EmojiConfig, generate_emoji_world, write_emoji_world
from opencir.data.worlds.shapes import ShapesConfig, generate_shapes_world, write_shapes_world

__all__ = [
    "EmojiConfig",
    "ShapesConfig",
    "WorldInfo",
    "generate_emoji_world",
    "generate_shapes_world",
    "read_world_info",
    "write_emoji_world",
    "write_shapes_world",
]
