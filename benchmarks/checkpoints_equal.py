"""Two folders of runs, checkpoint by checkpoint: equal in every tensor (torch.equal over
every tensor leaf, same dtype)? Used to show that a change leaves CIFAR training bit-identical:

    python benchmarks/checkpoints_equal.py BEFORE AFTER

BEFORE and AFTER hold one sub-folder per run (the same names); the non-tensor entries that
differ (new records) are listed, not counted as differences."""
import sys
from pathlib import Path

import torch


def leaves(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def compare(a: Path, b: Path) -> tuple[int, list[str], list[str]]:
    left = dict(leaves(torch.load(a, map_location="cpu", weights_only=True)))
    right = dict(leaves(torch.load(b, map_location="cpu", weights_only=True)))
    tensors = [k for k, v in left.items() if isinstance(v, torch.Tensor)]
    bad = [k for k in tensors if not (isinstance(right.get(k), torch.Tensor)
                                      and right[k].dtype == left[k].dtype
                                      and torch.equal(right[k], left[k]))]
    bad += [k for k, v in right.items() if isinstance(v, torch.Tensor) and k not in left]
    others = sorted({k.split("/")[1] for k in set(left) ^ set(right)} |
                    {k.split("/")[1] for k in set(left) & set(right)
                     if not isinstance(left[k], torch.Tensor) and left[k] != right[k]})
    return len(tensors), bad, others


if __name__ == "__main__":
    before, after = Path(sys.argv[1]), Path(sys.argv[2])
    ok = True
    for run in sorted(p.name for p in before.iterdir() if p.is_dir()):
        for ck in sorted(p.name for p in (before / run).glob("*.pt")):
            n, bad, others = compare(before / run / ck, after / run / ck)
            ok &= not bad
            print(f"{run}/{ck}: {n} tensors, {len(bad)} differ {bad[:3]}; non-tensor "
                  f"entries that differ: {others}")
    print("ALL TENSORS EQUAL" if ok else "DIFFERENCES")
