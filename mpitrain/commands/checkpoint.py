"""Show what a checkpoint holds -- its step, the layout and job it was saved
with, every tensor with its shape and size -- and verify every checksum. No MPI
needed. A checkpoint that fails verification is one line naming the file and
dataset, exit code 2."""
from __future__ import annotations

from pathlib import Path

HELP = "show and verify a checkpoint (step, layout, tensors, checksums)"


def add_arguments(parser) -> None:
    parser.add_argument("path", metavar="PATH", help="a step-NNNNNNNN checkpoint directory, or a checkpoints "
                                                     "folder (its latest)")
    parser.add_argument("--tensors", action="store_true", help="list every tensor")


def run(args) -> int:
    import numpy as np

    from ..checkpoint.files import close_all, read_tensor
    from ..checkpoint.manifest import latest, read_manifest
    from ..checkpoint.pieces import datasets
    from ..failure import agree_or_exit

    path = Path(args.path)
    if not (path / "manifest.json").exists() and latest(path) is not None:
        path = latest(path)
    manifest = agree_or_exit(lambda: read_manifest(path))
    state, layout = manifest["state"], manifest["layout"]
    files: dict = {}


    def verify() -> int:
        count = 0
        try:
            for key, entry in manifest["tensors"].items():
                for dataset in datasets(path, key, entry):  # a tensor split over tp: each of its pieces
                    read_tensor(path, key, dataset, files)
                    count += 1
        finally:
            close_all(files)
        return count
    verified = agree_or_exit(verify)
    model = {k: v for k, v in manifest["tensors"].items() if k.startswith("model/")}
    optim = {k: v for k, v in manifest["tensors"].items() if k.startswith("optim/")}
    size = sum((path / f).stat().st_size for f in manifest["files"])
    params = sum(int(np.prod(v["shape"])) for v in model.values())
    print(f"checkpoint {path}: task {manifest['task']}, format {manifest['format_version']}")
    print(f"  step {state['step']} (epoch {state['epoch'] + 1}, step {state['step_in_epoch']} of it)")
    print(f"  saved on dp {layout['dp']} x pp {layout['pp']} x tp {layout['tp']} ({layout['world']} ranks); "
          f"loads on any layout")
    print(f"  {len(model)} model tensors ({params:,} values), {len(optim)} optimizer tensors, "
          f"{len(manifest['files'])} files, {size / 2**20:.1f} MiB")
    if state.get("metrics"):
        print("  dev metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in state["metrics"].items()))
    if args.tensors:
        for key, entry in sorted(manifest["tensors"].items()):
            where = entry["file"] if "pieces" not in entry else \
                f"{len(entry['pieces'])} pieces along dim {entry['split']['dim']}: " + \
                ", ".join(piece["file"] for piece in entry["pieces"])
            print(f"    {key:<60} {str(entry['shape']):<16} {entry['dtype']:<9} {where}")
    print(f"  all {verified} checksums verified")
    return 0
