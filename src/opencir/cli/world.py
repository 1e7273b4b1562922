"""``opencir world``: generate the offline miniature worlds (ShapesCIR, EmojiCIR)."""

from __future__ import annotations

import argparse

from opencir.data.worlds.phrasing import TRAIN_PHRASINGS, VAL_PHRASINGS
from opencir.data.worlds.shapes import PALETTES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "world", help="generate a miniature world (shapes, emoji) or its triplets"
    )
    kinds = parser.add_subparsers(dest="world_command", required=True, metavar="WORLD")
    for name, help_text in (
        ("shapes", "ShapesCIR: rendered scenes of coloured shapes"),
        ("emoji", "EmojiCIR: Noto Color Emoji artwork (Debian fonts-noto-color-emoji)"),
    ):
        world = kinds.add_parser(name, help=help_text)
        world.add_argument("--out", required=True, help="world root directory")
        world.add_argument("--n-train", type=int, help="unannotated training images")
        world.add_argument("--n-test", type=int, help="test gallery images")
        world.add_argument("--queries", type=int, default=300, help="test queries")
        world.add_argument("--val-queries", type=int, default=100, help="val queries (train side)")
        if name == "shapes":
            world.add_argument(
                "--train-queries",
                type=int,
                default=0,
                help="ground-truth queries on the train side for supervised training, apart "
                "from the val queries (export them with `world triplets --split train`)",
            )
            world.add_argument(
                "--train-phrasing",
                default="plain",
                choices=TRAIN_PHRASINGS,
                help="plain: training queries in the terse canonical style; varied: in two "
                "styles with words of their own, none of them a val or test phrasing (same "
                "queries and images as plain, other texts)",
            )
            world.add_argument(
                "--palette",
                default="canonical",
                choices=PALETTES,
                help="canonical: the world's eight colours; xkcd: the 949 named colours of the "
                "XKCD colour survey, each named in its alt text — an image–text collection for "
                "pretraining with a wide colour vocabulary (needs --queries 0 --val-queries 0)",
            )
        world.add_argument(
            "--val-phrasing",
            default="plain",
            choices=VAL_PHRASINGS,
            help="plain: val texts in the terse canonical style a template writer uses; "
            "held-out: in two styles with their own words that neither the test phrasings "
            "nor training texts use, to choose settings for unseen phrasing (same val "
            "queries and images as plain, other texts)",
        )
        world.add_argument("--seed", type=int, default=0)
        world.add_argument("--image-size", type=int, default=64)
        world.add_argument("--workers", type=int, default=0, help="render processes")
        world.add_argument("--overwrite", action="store_true", help="replace a different world")
        world.set_defaults(handler=run_generate)
    triplets = kinds.add_parser("triplets", help="export a world's queries as GT triplets")
    triplets.add_argument("--root", required=True, help="world root directory")
    triplets.add_argument("--split", default="val", choices=("train", "val", "test"))
    triplets.add_argument("--out", required=True, help="triplet folder to write")
    triplets.set_defaults(handler=run_triplets)


def run_generate(args: argparse.Namespace) -> int:
    from opencir.data.worlds import generate_emoji_world, generate_shapes_world

    generate = generate_shapes_world if args.world_command == "shapes" else generate_emoji_world
    sizes = (("n_train", args.n_train), ("n_test", args.n_test))
    options = {k: v for k, v in sizes if v is not None}
    if getattr(args, "train_queries", 0):
        options["n_train_queries"] = args.train_queries
    for option in ("val_phrasing", "train_phrasing", "palette"):  # those this world has
        if hasattr(args, option):
            options[option] = getattr(args, option)
    info = generate(
        args.out, n_queries=args.queries, n_val_queries=args.val_queries, seed=args.seed,
        image_size=args.image_size, workers=args.workers, overwrite=args.overwrite, **options,
    )  # fmt: skip
    counts = ", ".join(f"{k}={v}" for k, v in info.counts.items())
    print(f"{info.world} world at {args.out}: {counts}")
    return 0


def run_triplets(args: argparse.Namespace) -> int:
    from opencir.data.worlds.triplets import export_world_triplets

    out = export_world_triplets(args.root, args.split, args.out)
    print(f"ground-truth triplets written to {out}")
    return 0
