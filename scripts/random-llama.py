"""A LLaMA of TinyLlama's shape (1.1B parameters) with random weights, for timing pruning at a realistic scale
where no such weights can be had (step times and memory do not depend on the weights' values).

    python scripts/random-llama.py out/llama1b --tokenizer out/smol-gum [--device cuda]
"""

from __future__ import annotations

import argparse

import torch
import transformers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="directory to save the model to")
    parser.add_argument("--tokenizer", required=True, help="a directory or hub id whose tokenizer the model gets")
    parser.add_argument("--device", default="cpu", help="where to initialise it (cuda is much faster)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer)
    config = transformers.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                      num_attention_heads=32, num_key_value_heads=4, vocab_size=len(tokenizer),
                                      max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = transformers.LlamaForCausalLM(config)
    model.to("cpu").save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved {sum(p.numel() for p in model.parameters()):,} parameters to {args.out}")


if __name__ == "__main__":
    main()
