#!/usr/bin/env bash
# Run a study in the background of a working session and commit each finished cell as it lands.
#   scripts/run-study.sh configs/study-cpu.yaml
# Resumable: finished cells are skipped, so the same command continues an interrupted study.
set -euo pipefail
cd "$(dirname "$0")/.."
config=$1
name=$(awk '$1 == "name:" {print $2}' "$config")
results=results/$name
mkdir -p "$results" out
{
  echo "# Machine and command"
  echo
  echo "command: \`ffnprune study --config $config\` (via scripts/run-study.sh), started $(date -u +%FT%TZ)"
  echo
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "- $(.venv/bin/python -c 'import torch, transformers, ffnprune; print(f"torch {torch.__version__}, transformers {transformers.__version__}, ffnprune {ffnprune.__version__}")')"
} >> "$results/MACHINE.md"
.venv/bin/ffnprune study --config "$config" > "out/study-$name.log" 2>&1 &
study=$!
commit() {
  if [ -n "$(git status --porcelain -- "$results")" ]; then
    git add -- "$results" && git commit -q -m "study $name: $(ls "$results"/cells/*.json 2>/dev/null | wc -l) cells landed" -- "$results"
  fi
}
while kill -0 "$study" 2>/dev/null; do sleep 30; commit; done
wait "$study"; status=$?
commit
exit $status
