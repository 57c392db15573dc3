"""How far two pruned models agree on which neurons to keep: Jaccard overlap of their kept sets, pairwise.

    .venv/bin/python scripts/kept-overlap.py out/a out/b [out/c ...] [--out overlap.json]

The overlap of two runs that differ only in the seed is the noise floor against which a change (e.g. GUM's cheap
statistics) is judged. Reads each directory's pruning.json; loads no weights.
"""

from __future__ import annotations

import argparse
import itertools
import sys

from ffnprune.io.atomic import write_json_atomic
from ffnprune.io.pruned_dir import read_metadata


def kept_sets(directory: str) -> set[tuple[int, int]]:
    kept = read_metadata(directory).get("kept_neurons")
    if kept is None:
        sys.exit(f"{directory} has no pruning.json with kept_neurons: give directories written by ffnprune prune")
    return {(layer, neuron) for layer, neurons in enumerate(kept) for neuron in neurons}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+")
    parser.add_argument("--out")
    args = parser.parse_args()
    sets = {directory: kept_sets(directory) for directory in args.directories}
    pairs = []
    for a, b in itertools.combinations(args.directories, 2):
        shared = len(sets[a] & sets[b])
        pairs.append({"a": a, "b": b, "kept_a": len(sets[a]), "kept_b": len(sets[b]), "shared": shared,
                      "jaccard": shared / len(sets[a] | sets[b])})
        print(f"{pairs[-1]['jaccard']:.4f}  shared {shared:,} of {len(sets[a]):,} / {len(sets[b]):,}  {a}  {b}")
    if args.out:
        write_json_atomic(args.out, {"pairs": pairs})


if __name__ == "__main__":
    main()
