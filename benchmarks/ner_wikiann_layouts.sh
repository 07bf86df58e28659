#!/usr/bin/env bash
# The BERT NER acceptance run: the transformers reference, then the job on the
# layouts 1x1, dp2, pp2 and dp2 x pp2, one after another (same seed, 1 epoch of
# WikiANN English). Prints a table of test F1 and training tokens/s.
#   bash benchmarks/ner_wikiann_layouts.sh [DATA_DIR]   (default ../shared/data/wikiann-en)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/wikiann-en}
PY=${PYTHON:-.venv/bin/python}
MPIEXEC=${MPIEXEC:-$(dirname "$PY")/mpiexec}
OUT=runs/bench-ner
mkdir -p "$OUT"
JOB=jobs/bert_ner_wikiann.toml
common=(--set "data.dir=\"$DATA\"" --set "data.prepared_dir=\"$OUT/prepared\"")

"$PY" -m mpitrain bench ner-reference "$JOB" "${common[@]}" --threads 2 --json "$OUT/reference.json" \
  > "$OUT/reference.log" 2>&1
for layout in "1 1" "2 1" "1 2" "2 2"; do
  set -- $layout
  name="dp$1-pp$2"
  rm -rf "$OUT/$name"
  "$MPIEXEC" -n $(($1 * $2)) "$PY" -m mpitrain "$JOB" "${common[@]}" --set grid.dp=$1 --set grid.pp=$2 \
    --set "job.run_dir=\"$OUT/$name\"" > "$OUT/$name.log" 2>&1
done
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
ref = json.loads((out / "reference.json").read_text())
print(f"{'layout':<22} {'test F1':>8} {'tokens/s':>9} {'vs reference':>12}")
print(f"{'transformers (1 proc)':<22} {ref['test_f1']:>8.4f} {ref['tokens_per_s']:>9.0f} {1.0:>12.2f}")
for name in ("dp1-pp1", "dp2-pp1", "dp1-pp2", "dp2-pp2"):
    d = out / name
    rate = json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])["tokens_per_s"]
    f1 = json.loads((d / "eval_test.json").read_text())["f1"]
    print(f"{name:<22} {f1:>8.4f} {rate:>9.0f} {rate / ref['tokens_per_s']:>12.2f}")
PY
