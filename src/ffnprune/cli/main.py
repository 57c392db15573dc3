"""The `ffnprune` command."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ffnprune.cli.options import add_config_arguments, config_from_args
from ffnprune.config import (
    AnalyzeConfig,
    BenchConfig,
    DemoConfig,
    EvaluateConfig,
    ExportConfig,
    PruneConfig,
    TrainingBenchConfig,
)
from ffnprune.criteria import METHODS
from ffnprune.errors import FfnpruneError
from ffnprune.messages import configure_cli_logging


def _info(args) -> None:
    from ffnprune.analysis.footprint import footprint, format_widths
    from ffnprune.models import load_model

    loaded = load_model(args.model)
    size = footprint(loaded.model, loaded.adapter, args.context)
    if args.json:
        print(json.dumps({"model": args.model, "location": loaded.location, **size}, indent=2))
        return
    print(f"model           {args.model} ({loaded.location})")
    print(f"architecture    {size['model_type']} (adapter {size['architecture']}), {size['layers']} layers")
    print(f"MLP neurons     {format_widths(size['mlp_widths'])} (total {sum(size['mlp_widths']):,})")
    print(f"parameters      {size['parameters']:,}, of which MLP {size['mlp_parameters']:,} "
          f"({size['mlp_parameter_share']:.1%})")
    print(f"FLOPs per token {size['flops_per_token'] / 1e6:,.1f} M at context {args.context}, of which MLP "
          f"{size['mlp_flops_per_token'] / 1e6:,.1f} M ({size['mlp_flop_share']:.1%})")


def _prune(args) -> None:
    from ffnprune.config import read_yaml
    from ffnprune.pipeline import RUN_CONFIG, process_state, prune

    base = None
    if args.resume:
        if not (Path(args.resume) / RUN_CONFIG).is_file():
            raise FfnpruneError(_nothing_to_resume(Path(args.resume)))
        base = read_yaml(Path(args.resume) / RUN_CONFIG, PruneConfig)
    config = config_from_args(PruneConfig, args, base)
    out = prune(config, resume=args.resume)
    if process_state().is_main_process:
        _summary(out)


def _nothing_to_resume(workdir: Path) -> str:
    from ffnprune.io.pruned_dir import read_metadata

    out = workdir.with_name(workdir.name.removesuffix(".work"))
    if workdir.name.endswith(".work") and read_metadata(out):
        return (f"{workdir} holds no checkpoint: the run finished, and its model is in {out} (the work directory is "
                "removed once the model is saved); nothing to resume")
    return (f"{workdir} holds no checkpoint to resume (no run.yaml): give the work directory (OUT.work) that the run "
            "printed at its start")


def _summary(out: Path) -> None:
    """What a user wants to know of the saved model, and how to go on."""
    from ffnprune.analysis.footprint import format_widths
    from ffnprune.io.pruned_dir import read_metadata

    metadata = read_metadata(out)
    before, after = metadata.get("parameters_before"), metadata.get("parameters_after")
    print(f"saved the pruned model to {out}")
    print(f"MLP neurons per layer: {format_widths(metadata['mlp_widths'])}")
    if before and after:
        print(f"parameters: {before:,} -> {after:,} ({after / before:.1%})")
    print(f"evaluate it: ffnprune evaluate {shlex.quote(str(out))}")


def _evaluate(args) -> None:
    from ffnprune.evaluation.run import evaluate

    def show(result):
        if "table" in result:  # the zero-shot tasks
            print(result["table"], flush=True)
            return
        metrics = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result["metrics"].items()
                   if k != "implementation"}
        print(json.dumps({"task": result["task"], "split": result["split"], "metrics": metrics}, indent=2),
              flush=True)

    evaluate(config_from_args(EvaluateConfig, args), show=show)


def _analyze(args) -> None:
    from ffnprune.analysis.run import analyze, compare

    config = config_from_args(AnalyzeConfig, args)
    if args.compare:
        compare(args.compare, config)
    else:
        analyze(config)


def _study(args) -> None:
    from ffnprune.study.run import run_study

    results = run_study(args.config, args.results, args.models, args.data)
    print(f"study results in {results} (table.md, results.json, plots, cells/)")


def _export(args) -> None:
    from ffnprune.io.export import export

    if args.uniform:
        if getattr(args, "format", "uniform") != "uniform":
            raise FfnpruneError(f"--uniform is --format uniform, which conflicts with --format {args.format}; give "
                                "one of them")
        args.format = "uniform"
    print(export(config_from_args(ExportConfig, args)))


def _bench(args) -> None:
    from ffnprune.benchmark.run import run_bench

    run_bench(config_from_args(BenchConfig, args))


def _bench_training(args) -> None:
    from ffnprune.benchmark.training import run_training_bench

    run_training_bench(config_from_args(TrainingBenchConfig, args))


def _demo(args) -> None:
    from ffnprune.demo import run_demo

    run_demo(config_from_args(DemoConfig, args))


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (unknown flag, missing value) in ffnprune's one error format, exit 2."""

    def error(self, message):
        self.exit(2, f"ffnprune: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ffnprune", description="Structured pruning of the MLP neurons of decoder-only language models."
    )
    parser.add_argument("--quiet", "-q", dest="quiet_before_command", action="store_true",
                        help="print only results, warnings and errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="print only results, warnings and errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_parser = commands.add_parser
    commands.add_parser = lambda *args, **kwargs: add_parser(*args, parents=[common], **kwargs)

    info = commands.add_parser("info", help="architecture, MLP widths, parameters and FLOPs of a model")
    info.add_argument("model", help="hub id, model directory (pruned or not), .gguf file, or 'smollm2-135m'")
    info.add_argument("--context", type=int, default=1024, help="context length for attention FLOPs (default: 1024)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info)

    prune = commands.add_parser(
        "prune", help="prune a model's MLP neurons and save the smaller model",
        description=f"Methods: {', '.join(METHODS)}. --steps 0 prunes in one shot (random, magnitude, and the "
        "calibrated criteria, which refit each layer); --steps N fine-prunes for N optimizer steps with the cubic "
        "schedule (calibrated criteria: one-shot, then N recovery steps).",
    )
    add_config_arguments(prune, PruneConfig)
    prune.add_argument("--config", help="YAML file of options (flat keys named like the flags, dashes or underscores: "
                       "round-to or round_to); flags override it")
    prune.add_argument("--resume", help="continue the killed run whose work directory (OUT.work) this names")
    prune.set_defaults(handler=_prune)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a model (dense or pruned) on a task's split with the task's metric",
        description="wikitext: block and sliding-window perplexity; samsum: ROUGE-1/2/L/Lsum; wikisql: exact match "
        "(generated and teacher-forced); e2e: BLEU, NIST, METEOR, ROUGE-L, CIDEr. Generation uses beam search.",
    )
    add_config_arguments(evaluate, EvaluateConfig)
    evaluate.set_defaults(handler=_evaluate)

    analyze = commands.add_parser(
        "analyze", help="sensitivity, uniqueness and linear span of every MLP neuron, with plots",
        description="ffnprune analyze MODEL --out DIR, or ffnprune analyze --compare DIR1 DIR2 ... --out DIR "
        "(model directories are analysed first; analysis directories are read).",
    )
    add_config_arguments(analyze, AnalyzeConfig)
    analyze.add_argument("--compare", nargs="+", metavar="DIR", help="compare these analyses or models")
    analyze.set_defaults(handler=_analyze)

    study = commands.add_parser("study", help="run a study: methods x keep fractions x tasks, resumably")
    study.add_argument("--config", required=True, help="the study YAML file")
    study.add_argument("--data", help="task data folder (default: ../shared/data)")
    study.add_argument("--results", default="results", help="where results/<study>/ goes (default: results)")
    study.add_argument("--models", default="out/studies", help="where pruned models go (default: out/studies)")
    study.set_defaults(handler=_study)

    export = commands.add_parser("export", help="re-save a model in another format: a stock checkpoint or GGUF")
    add_config_arguments(export, ExportConfig)
    export.add_argument("--uniform", action="store_true", help="the same as --format uniform")
    export.set_defaults(handler=_export)

    bench = commands.add_parser("bench", help="measure a pruned model's speed against the dense one")
    add_config_arguments(bench, BenchConfig)
    bench.set_defaults(handler=_bench)

    bench_training = commands.add_parser("bench-training", help="step time and memory of fine-pruning methods "
                                         "against plain fine-tuning")
    add_config_arguments(bench_training, TrainingBenchConfig)
    bench_training.set_defaults(handler=_bench_training)

    demo = commands.add_parser("demo", help="prune SmolLM2 with one-shot OBS (+ recovery) and GUM, compact, compare "
                               "perplexity and speed")
    add_config_arguments(demo, DemoConfig)
    demo.set_defaults(handler=_demo)
    return parser


def _interrupted(args) -> None:
    """Ctrl-C: say what was kept and how to go on."""
    print("ffnprune: interrupted", file=sys.stderr)
    out = getattr(args, "out", None)
    resumed = getattr(args, "resume", None)
    if args.command == "prune" and (out or resumed):
        from ffnprune.pipeline import work_dir
        from ffnprune.training.checkpoint import resumable_checkpoint
        from ffnprune.training.loop import CHECKPOINT

        workdir = Path(resumed) if resumed else work_dir(out)
        if resumable_checkpoint(workdir / CHECKPOINT):
            print(f"ffnprune: continue from the last checkpoint with: ffnprune prune --resume "
                  f"{shlex.quote(str(workdir))}", file=sys.stderr)
        elif _one_shot(args):
            print("ffnprune: one-shot pruning writes nothing until it has finished; nothing was saved to "
                  f"{out or 'the output'}: run it again", file=sys.stderr)
        else:
            print("ffnprune: no checkpoint was written (--checkpoint-every N writes them); nothing was saved to "
                  f"{out or 'the output'}", file=sys.stderr)


def _one_shot(args) -> bool:
    """Whether the interrupted prune was one-shot (--steps 0, the default), from its flags or --config file."""
    try:
        return config_from_args(PruneConfig, args).steps == 0
    except FfnpruneError:
        return False


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a malformed command line (already reported)
        return stop.code or 0
    args.quiet = args.quiet or args.quiet_before_command
    configure_cli_logging(args.quiet)
    if args.quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    try:
        args.handler(args)
    except FfnpruneError as error:
        print(f"ffnprune: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _interrupted(args)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
