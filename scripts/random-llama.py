"""A LLaMA with random weights of a real model's shape, for timing pruning at a realistic scale where no such weights
can be had (time and memory do not depend on the weights' values). The checkpoint is written one layer per shard,
never held whole, so a 7B shape fits in little memory.

    python scripts/random-llama.py out/llama1b --tokenizer DIR [--shape tinyllama|wide-3.5gb|llama2-7b]
                                   [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

SHAPES = {
    # TinyLlama-1.1B
    "tinyllama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                      num_key_value_heads=4),
    # about 3.5 GB in bf16 (issue 21's first streamed target)
    "wide-3.5gb": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=32,
                       num_key_value_heads=8),
    # Llama-2-7B, about 13.5 GB in bf16
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="directory to save the model to")
    parser.add_argument("--tokenizer", required=True, help="a directory or hub id whose tokenizer the model gets")
    parser.add_argument("--shape", choices=SHAPES, default="tinyllama")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, help="fewer decoder layers than the shape has (e.g. for profiling)")
    args = parser.parse_args()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer)
    shape = SHAPES[args.shape] | ({"num_hidden_layers": args.layers} if args.layers else {})
    config = transformers.LlamaConfig(**shape, vocab_size=len(tokenizer), max_position_embeddings=2048,
                                      tie_word_embeddings=False, dtype=args.dtype)
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in transformers.LlamaForCausalLM(config).state_dict().items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[str]] = {}
    for name in shapes:  # one shard per decoder layer, one for the rest
        parts = name.split(".")
        groups.setdefault(f"layer-{int(parts[2]):03d}" if parts[1] == "layers" else "rest", []).append(name)
    generator = torch.Generator().manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    weight_map, total = {}, 0
    for index, (group, names) in enumerate(sorted(groups.items())):
        file = f"model-{index + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in names:
            tensor = torch.ones(shapes[name]) if name.endswith("norm.weight") else \
                torch.randn(shapes[name], generator=generator).mul_(0.02)
            tensors[name] = tensor.to(dtype)
            total += tensors[name].numel() * tensors[name].element_size()
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}, indent=2))
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"saved {sum(s.numel() for s in shapes.values()):,} parameters ({total / 1e9:.2f} GB) to {out}")


if __name__ == "__main__":
    main()
