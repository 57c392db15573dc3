"""The exported GGUF files run in llama.cpp itself (through llama-cpp-python, which compiles llama.cpp: `make
test-llama-cpp` installs it and runs this file; the default install leaves it out, and then these tests skip).
A checkpoint pruned through the CLI, exported through the CLI, gives llama.cpp's logits equal to the pruned
transformers model's, for uniform widths (llama architecture) and per-layer widths with the reconstruction bias
(deci architecture), and llama.cpp splits text as the transformers tokenizer does."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import transformers
from gguf import GGUFReader

from ffnprune.cli.main import main
from ffnprune.io.pruned_dir import load_pruned

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: make test-llama-cpp")

TEXT = "Pruned models run in llama.cpp: 12,345 tokens, café — and ünïcödé."


@contextlib.contextmanager
def llama(path, **options):
    model = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, verbose=False, seed=0, **options)
    try:
        yield model
    finally:
        model.close()


@pytest.mark.parametrize("widths, extra", [
    ("uniform", ()),
    ("per-layer", ("--layer-keep", "0:1,-1:0.2", "--reconstruct", "bias", "--calibration-tokens", "256",
                   "--calibration-context", "32")),
])
def test_llama_cpp_runs_the_export_as_transformers_runs_the_pruned_model(tmp_path, tiny_model_dir, data_dir,
                                                                          widths, extra):
    pruned = tmp_path / "pruned"
    assert main(["prune", str(tiny_model_dir("llama")), "--method", "magnitude", "--keep", "0.5", "--data",
                 str(data_dir), "--out", str(pruned), *extra]) == 0
    out = tmp_path / "pruned.gguf"
    assert main(["export", str(pruned), "--format", "gguf", "--outtype", "f32", "--out", str(out)]) == 0
    ids = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_pruned(pruned).eval()(ids).logits[0].numpy()
    with llama(out, logits_all=True) as model:
        assert model.metadata["general.architecture"] == ("llama" if widths == "uniform" else "deci")
        model.eval(ids[0].tolist())
        logits = np.array(model.scores[: model.n_tokens])
        tokens = model.tokenize(TEXT.encode(), add_bos=False)
    # llama.cpp keeps its attention cache in f16: about 1e-4 here, where a wrong weight or layout is order 1.
    assert np.abs(logits - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
    assert tokens == transformers.AutoTokenizer.from_pretrained(pruned)(TEXT).input_ids


@pytest.mark.parametrize("outtype, ftype", [("q4_k_m", 15), ("q6_k", 18)])
def test_a_k_quant_export_is_llama_cpps_own_mixture_and_runs_close_to_the_model(tmp_path, tiny_model_dir, data_dir,
                                                                              outtype, ftype):
    """--outtype q4_k_m / q6_k write F16, then run llama.cpp's quantiser: the file says its type and the pruned
    widths, is smaller than the F16 one, and its logits follow the pruned model's."""
    pruned = tmp_path / "pruned"
    assert main(["prune", str(tiny_model_dir("llama")), "--method", "magnitude", "--keep", "0.5", "--layer-keep",
                 "0:1,-1:0.2", "--out", str(pruned)]) == 0
    for kind in ("f16", outtype):
        assert main(["export", str(pruned), "--format", "gguf", "--outtype", kind, "--out",
                     str(tmp_path / f"{kind}.gguf")]) == 0
    assert (tmp_path / f"{outtype}.gguf").stat().st_size < 0.8 * (tmp_path / "f16.gguf").stat().st_size
    assert not list(tmp_path.glob(".*"))  # the F16 scratch file is gone
    ids = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(0))
    pruned_model = load_pruned(pruned).eval()
    with torch.no_grad():
        expected = pruned_model(ids).logits[0].numpy()
    with llama(tmp_path / f"{outtype}.gguf", logits_all=True) as model:
        assert model.metadata["general.file_type"] == str(ftype)
        widths = [max(1, w) for w in pruned_model.config.ffnprune["mlp_widths"]]  # deci stores width 0 as 1
        assert GGUFReader(tmp_path / f"{outtype}.gguf").fields["deci.feed_forward_length"].contents() == widths
        model.eval(ids[0].tolist())
        logits = np.array(model.scores[: model.n_tokens])
    # a wrong layout or lost tensor decorrelates the logits; quantisation only blurs them (q4_k_m: 0.998 here)
    assert np.corrcoef(logits.ravel(), expected.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("model_type, architecture", [("gemma2", "gemma2"), ("gemma3_text", "gemma3"),
                                                      ("phi3", "phi3")])
def test_llama_cpp_runs_gemma_and_phi3_exports_as_transformers_runs_the_pruned_model(tmp_path, tiny_model_dir,
                                                                                      model_type, architecture):
    """Per-layer widths (padded to the widest with zero neurons), Gemma's (1 + w) norms, its sliding-window layers
    (24 tokens, a window of 8) and Phi-3's fused gate_up_proj, as llama.cpp's own architectures run them."""
    pruned = tmp_path / "pruned"
    assert main(["prune", str(tiny_model_dir(model_type)), "--method", "magnitude", "--keep", "0.5", "--layer-keep",
                 "0:0.25,1:1", "--out", str(pruned)]) == 0
    out = tmp_path / "model.gguf"  # llama.cpp expects Phi-3's own special tokens in a file whose name says phi3
    assert main(["export", str(pruned), "--format", "gguf", "--outtype", "f32", "--out", str(out)]) == 0
    ids = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_pruned(pruned).eval()(ids).logits[0].numpy()
    with llama(out, logits_all=True) as model:
        assert model.metadata["general.architecture"] == architecture
        model.eval(ids[0].tolist())
        logits = np.array(model.scores[: model.n_tokens])
    assert np.abs(logits - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
