"""Write docs/bad-inputs.md: every bad input of tests/bad_inputs.py run through the CLI, with its message, exit code
and what it left on disk (tests/test_bad_inputs.py asserts the same rows).

    python scripts/bad-inputs-table.py [--out docs/bad-inputs.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bad_inputs import CASES, prepare, run_case, umask_run  # noqa: E402
from ffnprune.tasks.data import default_data_dir  # noqa: E402
from tiny_models import tiny_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "bad-inputs.md"))
    args = parser.parse_args()
    from transformers import PreTrainedTokenizerFast

    data = default_data_dir()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        dense = scratch / "dense"
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(data / "gpt2_tokenizer" / "tokenizer.json"),
                                            eos_token="<|endoftext|>")
        tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(dense)
        tokenizer.save_pretrained(dense)
        cases = scratch / "cases"
        cases.mkdir()
        places = prepare(cases, dense, data)
        rows = [run_case(case, places) for case in CASES if case.applies()]
        modes = umask_run(scratch, dense)
    lines = [
        "# Bad inputs: what ffnprune says, and what it leaves on disk",
        "",
        "Every row was run through the command line on a tiny LLaMA checkpoint written to disk (`python "
        "scripts/bad-inputs-table.py` regenerates this page; `tests/test_bad_inputs.py` asserts every row: exit 2, "
        "one `ffnprune: error:` line naming the problem, no file created or changed). TMP is the scratch folder; "
        "DENSE, PRUNED and WORK a dense model, a pruned model and the work directory of an interrupted run in it.",
        "",
        "| bad input | command | exit | message (`ffnprune: error: ...`) | left on disk |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        command = (row["command"].replace("{tmp}", "TMP").replace("{dense}", "DENSE").replace("{pruned}", "PRUNED")
                   .replace("{work}", "WORK").replace("{data}", "DATA"))
        message = row["message"].replace(places["dense"], "DENSE").replace("|", "\\|")
        left = "nothing" if not row["changed"] else ", ".join(row["changed"])
        lines.append(f"| {row['what']} | `{command}` | {row['code']} | {message} | {left} |")
    lines += ["", f"Permissions under umask 022: the output directory {oct(modes.pop('modes'))}, its files "
                  f"{', '.join(sorted({oct(m) for m in modes.values()}))} (they follow the user's umask).", ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
