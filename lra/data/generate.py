"""Generators for the two LRA tasks that can be made locally: ListOps and Pathfinder.

``lra generate listops --out DIR`` writes ``DIR/listops-1000/basic_{train,val,test}.tsv`` and
``lra generate pathfinder --out DIR`` writes ``DIR/pathfinder<size>/<difficulty>/{imgs,metadata}``
-- the layout of the LRA release, read by the same loaders. Both are deterministic given
``--seed`` (and independent of ``--workers``).

The generators live one per task: :mod:`lra.data.listops_generator` and
:mod:`lra.data.pathfinder_generator`; this module is the command line.
"""

from __future__ import annotations

import argparse

from lra.data.listops_generator import ListOpsConfig, generate_listops
from lra.data.pathfinder_generator import DIFFICULTY_DIRS, generate_pathfinder, plot_examples


def main(argv: list[str] | None = None) -> None:
    """``lra generate listops|pathfinder --out DIR [...]``."""
    ap = argparse.ArgumentParser(prog="lra generate", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="task", required=True)
    shows_defaults = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter}
    lo = sub.add_parser("listops", help="write listops-1000/basic_{train,val,test}.tsv",
                        **shows_defaults)
    lo.add_argument("--out", required=True, help="output root (e.g. data/lra_release)")
    lo.add_argument("--n-train", type=int, default=96000, help="training expressions")
    lo.add_argument("--n-val", type=int, default=2000, help="validation expressions")
    lo.add_argument("--n-test", type=int, default=2000, help="test expressions")
    lo.add_argument("--max-depth", type=int, default=10, help="deepest nesting")
    lo.add_argument("--max-args", type=int, default=10, help="most arguments per operator")
    lo.add_argument("--min-length", type=int, default=500, help="fewest tokens")
    lo.add_argument("--max-length", type=int, default=2000, help="most tokens")
    pf = sub.add_parser("pathfinder", help="write pathfinder<size>/<difficulty>/{imgs,metadata}",
                        **shows_defaults)
    pf.add_argument("--out", required=True, help="output root (e.g. data/lra_release)")
    pf.add_argument("--resolution", type=int, default=32, choices=(32, 64, 128),
                    help="image side in pixels")
    pf.add_argument("--contour-length", type=int, default=14, choices=sorted(DIFFICULTY_DIRS),
                    help="dashes per path (6, 9 or 14: the difficulty)")
    pf.add_argument("--distractors", type=int, default=None,
                    help="distractor paths per image instead of LRA's (10 at 32x32 and contour "
                         "length 6); fewer make an easier task, written to "
                         "<difficulty>_distractors<N> so it never passes for the release's")
    pf.add_argument("--n-images", type=int, default=200000, help="images in all")
    pf.add_argument("--per-batch", type=int, default=1000, help="images per imgs/<i> folder")
    pf.add_argument("--examples", default=None, help="also save a labelled example grid here")
    for p in (lo, pf):
        p.add_argument("--seed", type=int, default=0, help="random seed")
        p.add_argument("--workers", type=int, default=1, help="processes")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.task == "listops":
        cfg = ListOpsConfig(args.max_depth, args.max_args, args.min_length, args.max_length)
        folder = generate_listops(args.out, args.n_train, args.n_val, args.n_test, cfg,
                                  args.seed, args.workers, progress=not args.quiet)
    else:
        folder = generate_pathfinder(args.out, args.resolution, args.contour_length,
                                     args.n_images, args.per_batch, args.seed, args.workers,
                                     progress=not args.quiet, distractors=args.distractors)
        if args.examples:
            plot_examples(args.examples, seed=args.seed)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
