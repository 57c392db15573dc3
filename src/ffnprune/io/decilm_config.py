"""The configuration class of a Nemotron-NAS ("DeciLM") export, saved beside it as configuration_decilm.py.

vLLM, SGLang and TensorRT-LLM read the config through transformers' AutoConfig with trust_remote_code, then reach
into it by attribute: `config.block_configs[i].ffn.ffn_mult`, `.attention.n_heads_in_group`, `.ffn.no_op`, and
`hasattr(block.ffn, "intermediate_size")` to tell the two dialects apart. This file gives them that, importing nothing
but transformers, and writes config.json back unchanged. It is ffnprune's own code (Apache-2.0), not NVIDIA's.
"""

from transformers import LlamaConfig


class Settings(dict):
    """A JSON object whose keys also read as attributes; a key that is absent is an AttributeError, so hasattr()
    answers as the runtimes expect."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, **kwargs):
        # config.json leaves the uniform values null (each layer has its own, in block_configs), which LlamaConfig's
        # typed fields refuse: they take its defaults instead, and nothing reads them
        super().__init__(**{name: value for name, value in kwargs.items() if value is not None
                            or name not in ("intermediate_size", "num_key_value_heads")})
        self.block_configs = [
            Settings({part: Settings(values) for part, values in block.items()}) for block in (block_configs or [])
        ]
