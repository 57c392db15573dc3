"""Break the one-shot, recovery and export numerics on purpose, one mutation at a time, and check that a test fails.

Each mutation replaces one piece of source text in a copy of src/ and tests/ (the working tree is never touched) and
runs the named tests there; a mutation that every test survives is a hole in the tests. Writes a Markdown table.

    python scripts/mutation-check.py [--only NAME,...] [--out results/mutations.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ONESHOT = "tests/test_oneshot.py"
CALIBRATED = "src/ffnprune/criteria/calibrated.py"
RECONSTRUCTION = "src/ffnprune/pruning/reconstruction.py"
SHARDING = "src/ffnprune/training/sharding.py"
FSDP_TESTS = "tests/test_distributed.py -k fsdp"
CLAIMS = "src/ffnprune/study/claims.py"
STUDY_CLAIMS = ("tests/test_study.py::test_claims_follow_their_rules_in_each_metrics_direction "
                "tests/test_study.py::test_claims_at_an_exact_match_of_zero_are_inconclusive_not_a_division_by_zero "
                "tests/test_study.py::test_the_loss_per_target_token_vetoes_a_metric_it_contradicts_and_decides_where"
                "_the_metric_is_zero")
# name: (file, text, replacement, tests to run)
MUTATIONS = {
    "obs greedy update of the weights removed": (
        CALIBRATED, "            columns.addr_(columns[:, j].clone(), row, alpha=-1)\n", "", ONESHOT),
    "obs greedy update of the inverse Hessian removed": (
        CALIBRATED, "            inverse_hessian.addr_(inverse_hessian[:, j].clone(), row, alpha=-1)\n", "", ONESHOT),
    "dense-target drift sign flipped where it is folded": (
        "src/ffnprune/calibration/sequential.py", "dense_hidden[batch_index] - outputs[-1]",
        "outputs[-1] - dense_hidden[batch_index]", ONESHOT),
    "dense-target drift sign flipped where it enters the refit": (
        CALIBRATED, "return own_cross + drift.T.to(own_cross)", "return own_cross - drift.T.to(own_cross)", ONESHOT),
    "FLAP bias compensation sign flipped": (
        RECONSTRUCTION, "new_bias = dense[:, width] + dense", "new_bias = dense[:, width] - dense", ONESHOT),
    "damping removed from OBS selection": (
        CALIBRATED, "    inverse_hessian = inverse(damped(gram := stats.augmented(), damping(gram, damp)))\n    # The",
        "    inverse_hessian = inverse(gram := stats.augmented())\n    # The", ONESHOT),
    "damping removed from OBS scores": (
        CALIBRATED, "    inverse_hessian = inverse(damped(gram := stats.augmented(), damping(gram, damp)))\n    return",
        "    inverse_hessian = inverse(gram := stats.augmented())\n    return", ONESHOT),
    "damping removed from the least-squares refit": (
        RECONSTRUCTION, "system = damped(stats.kept_block(kept.to(weight.device)), neuron_damping(stats.gram."
        "diagonal(), damp))", "system = stats.kept_block(kept.to(weight.device))", ONESHOT),
    "refit error: the kept columns' change left out": (
        RECONSTRUCTION, "    difference[:, kept] -= new_weight\n", "", ONESHOT),
    "refit error: one block of rows summed": (
        RECONSTRUCTION, "for rows in difference.split(ROWS_AT_ONCE))",
        "for rows in difference.split(ROWS_AT_ONCE)[:1])", ONESHOT),
    "activation scores inverted": (
        CALIBRATED, "return stats.sequence_means.sqrt()", "return -stats.sequence_means.sqrt()", ONESHOT),
    "OBS scores inverted": (
        CALIBRATED, "return weight.square().sum(dim=0) / inverse_hessian", "return -weight.square().sum(dim=0) / "
        "inverse_hessian", ONESHOT),
    "--init-scores ignored": (
        "src/ffnprune/pipeline.py", "initial_scores = _calibrated_initial_scores(loaded, config, say)",
        "initial_scores = None", ONESHOT),
    "recovery distils from the pruned model": (
        "src/ffnprune/pipeline.py", "eval_examples, workdir, teacher=teacher,",
        "eval_examples, workdir, teacher=teacher and copy.deepcopy(loaded.model),", ONESHOT),
    "calibration statistics not summed across processes": (
        "src/ffnprune/calibration/sequential.py", "                    torch.distributed.all_reduce(tensor)\n",
        "                    pass\n", "tests/test_distributed.py"),
    "FSDP: the replicated scores' gradients not averaged": (
        "src/ffnprune/training/loop.py", "            average_gradients(pruner.trainable_scores())\n",
        "            pass\n", FSDP_TESTS),
    "FSDP: clipping by the sum of norms instead of their root-sum-square": (
        SHARDING, "squares = squares + (norm.full_tensor() if isinstance(norm, DTensor) else norm) ** 2",
        "squares = squares + (norm.full_tensor() if isinstance(norm, DTensor) else norm)", FSDP_TESTS),
    "FSDP: optimizer shards not restored on resume": (
        "src/ffnprune/training/checkpoint.py", "    state.update(restored)\n", "", FSDP_TESTS),
    "Phi-3: the neuron mask not repeated for the up half of gate_up_proj": (
        "src/ffnprune/pruning/masks.py", ".repeat(blocks)", ".repeat(1)",
        "tests/test_finepruning_mechanics.py -k movement_formula"),
    "Phi-3: sensitivity from the gate half only": (
        "src/ffnprune/analysis/redundancy.py", "total = total + sum(adapter.neuron_blocks(product))",
        "total = total + adapter.neuron_blocks(product)[0]", "tests/test_analysis.py -k first_order"),
    "Phi-3 GGUF: the fused projection padded as one matrix": (
        "src/ffnprune/io/gguf_families.py", "torch.cat([_pad(block, width) for block in adapter.neuron_blocks(rows)])",
        "_pad(rows, width * adapter.fused)", "tests/test_gguf_export.py -k phi3"),
    "Gemma GGUF: norms written without the + 1": (
        "src/ffnprune/io/gguf_families.py", "            tensor = tensor + 1\n", "            tensor = tensor + 0\n",
        "tests/test_gguf_export.py -k gemma"),
    "Nemotron-NAS: a layer left only its reconstruction bias written as no_op": (
        "src/ffnprune/io/nemotron_nas.py", "if width == 0 and (down.bias is None or not bool(down.bias.any())):",
        "if width == 0:", "tests/test_nemotron_nas.py"),
    "train-rows subset: the split's first rows instead of a seeded draw": (
        "src/ffnprune/tasks/examples.py", "torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))",
        "torch.arange(len(self))", "tests/test_tasks_metrics.py -k train_rows"),
    "seeded test subset: the seed ignored": (
        "src/ffnprune/evaluation/run.py", "random.Random(seed).sample(", "random.Random(0).sample(",
        "tests/test_study.py -k seeded"),
    "claims: a gap measured the wrong way round": (
        CLAIMS, "return -difference if self.lower_is_better else difference",
        "return difference if self.lower_is_better else -difference", STUDY_CLAIMS),
    "claims: the loss per target token's veto removed": (
        CLAIMS, "if verdict in CONCLUSIVE and by_loss.verdict in CONCLUSIVE", "if False", STUDY_CLAIMS),
    "claims: the loss per target token taken as a score (higher is better)": (
        CLAIMS, 'return self.kind != "score"', 'return self.kind == "perplexity"', STUDY_CLAIMS),
    "claims: the loss's 5% allowance in nats of loss instead of a perplexity ratio": (
        CLAIMS, 'return NEARLY * abs(best) if self.kind == "score"',
        'return NEARLY * abs(best) if self.kind != "perplexity"', STUDY_CLAIMS),
    "claims: the seed spread not held against a gap": (
        CLAIMS, "abs(lead) < 2 * spread", "abs(lead) < 0 * spread", STUDY_CLAIMS),
    "claims: random's 5% allowance removed": (CLAIMS, "NEARLY = 0.05", "NEARLY = 0.0", STUDY_CLAIMS),
    "claims: uniqueness compared the wrong way round": (
        CLAIMS, '"reproduced" if gum > movement', '"reproduced" if gum < movement', STUDY_CLAIMS),
    "claims: distillation's ranges compared the wrong way round": (
        CLAIMS, "narrowed = (max(units[False]) - min(units[False])) - (max(units[True]) - min(units[True]))",
        "narrowed = (max(units[True]) - min(units[True])) - (max(units[False]) - min(units[False]))", STUDY_CLAIMS),
    "analysis: the token budget counted in rows of --context": (
        "src/ffnprune/analysis/run.py", "examples.head_tokens(config.max_tokens)",
        "examples.head_tokens(config.max_tokens // config.context * 40)", "tests/test_analysis.py -k token_budget"),
    "target loss: averaged over every position (prompt and padding included)": (
        "src/ffnprune/evaluation/run.py", "tokens += int((labels != IGNORE).sum())", "tokens += labels.numel()",
        "tests/test_tasks_metrics.py -k teacher_forced"),
}


def run(name: str, python: str) -> tuple[str, float]:
    path, text, replacement, tests = MUTATIONS[name]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for part in ("src", "tests", "configs", "pyproject.toml"):
            source = ROOT / part
            (shutil.copytree if source.is_dir() else shutil.copy)(source, work / part)
        target = work / path
        original = target.read_text()
        if original.count(text) != 1:
            return f"not applied: the text occurs {original.count(text)} times", 0.0
        target.write_text(original.replace(text, replacement))
        data = os.environ.get("FFNPRUNE_DATA") or str(ROOT.parent / "shared" / "data")
        environment = {**os.environ, "PYTHONPATH": str(work / "src"), "FFNPRUNE_DATA": data}
        started = time.perf_counter()
        result = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests.split()],
                                cwd=work, env=environment, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if result.returncode == 1:
            failed = [line.split(" ")[1] for line in result.stdout.splitlines() if line.startswith("FAILED")]
            return f"killed by {', '.join(failed) or 'a failing test'}", seconds
        return ("survived" if result.returncode == 0 else f"pytest exit {result.returncode}"), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated mutation names (default: all)")
    parser.add_argument("--out", default="results/mutations.md")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(MUTATIONS)
    lines = ["| mutation | file | result | seconds |", "|---|---|---|---|"]
    survived = 0
    for name in names:
        outcome, seconds = run(name, sys.executable)
        survived += not outcome.startswith("killed")
        print(f"{name}: {outcome} ({seconds:.0f} s)", flush=True)
        lines.append(f"| {name} | {MUTATIONS[name][0]} | {outcome} | {seconds:.0f} |")
    Path(args.out).write_text("Mutations of the one-shot and recovery numerics (`python scripts/mutation-check.py`)"
                              ": each must fail a test.\n\n" + "\n".join(lines) + "\n")
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
