"""Shared test helpers: uneven kept-neuron sets and a check that runs code where ffnprune cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import torch

BLOCK_FFNPRUNE = textwrap.dedent("""
    import sys
    class _BlockFfnprune:
        def find_spec(self, name, path=None, target=None):
            if name == "ffnprune" or name.startswith("ffnprune."):
                raise ModuleNotFoundError("ffnprune is deliberately not importable here")
    sys.meta_path.insert(0, _BlockFfnprune())
""")


def uneven_kept(widths: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Kept indices cycling through: none, all, a random third, a single neuron."""
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for index, width in enumerate(widths):
        choice = index % 4
        if choice == 0:
            kept.append(torch.tensor([], dtype=torch.long))
        elif choice == 1:
            kept.append(torch.arange(width))
        elif choice == 2:
            kept.append(torch.sort(torch.randperm(width, generator=generator)[: width // 3]).values)
        else:
            kept.append(torch.tensor([width - 1]))
    return kept


def masked_and_compacted(model, adapter, kept, ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of the dense model, of the masked model, and of the model compacted in place to `kept`."""
    from ffnprune.compaction import compact_mlps
    from ffnprune.pruning.masks import NeuronMasks, masks_from_kept

    with torch.no_grad():
        dense = model(ids).logits
        with NeuronMasks(model, adapter, masks_from_kept(adapter.mlp_widths(model), kept)):
            masked = model(ids).logits
        compact_mlps(model, adapter, kept)
        return dense, masked, model(ids).logits


def run_without_ffnprune(script: str, workdir: Path, timeout: int = 600) -> dict:
    """Run a Python script in a fresh interpreter where `import ffnprune` fails; it prints one JSON object."""
    env = {**os.environ, "HF_MODULES_CACHE": str(workdir / "hf_modules"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run([sys.executable, "-c", BLOCK_FFNPRUNE + textwrap.dedent(script)], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-4000:]
    last = result.stdout.strip().splitlines()[-1]
    return json.loads(last[last.find("{"):])  # an input() prompt may precede the JSON object on its line


@contextmanager
def stopped_after_first_checkpoint():
    """Within the block, a fine-pruning run writes its first checkpoint and is then interrupted (as by Ctrl-C)."""
    import ffnprune.training.loop as loop

    original = loop.save_checkpoint

    def save_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    loop.save_checkpoint = save_then_stop
    try:
        yield
    finally:
        loop.save_checkpoint = original
