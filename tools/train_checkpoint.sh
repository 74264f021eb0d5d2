#!/usr/bin/env bash
# Regenerate the shipped checkpoints (make checkpoint). Each stage resumes where it stopped, so the
# script can be interrupted and run again. See checkpoints/README.md for the figures it produced.
#   1. the AR twin (causal, next-token loss) for the first STEPS_AR_INIT of its STEPS steps;
#   2. the MDLM, started from those weights (a warm start; chapter 8) with the output shift, for
#      STEPS - STEPS_AR_INIT steps, so that the MDLM's whole budget (AR steps included) equals the twin's;
#   3. the AR twin, on to STEPS steps: the equal-compute baseline.
# The best checkpoint of each run (lowest validation loss) is then exported without its optimizer state
# into checkpoints/shakespeare-mdlm and checkpoints/shakespeare-ar.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-4000}
STEPS_AR_INIT=${STEPS_AR_INIT:-1000}
RUNS=${RUNS:-runs}
MDLM_FLAGS=${MDLM_FLAGS---output-shift}   # options of the MDLM stage: DiffuLLaMA's output shift (bench/RESULTS.md);
                                           # MDLM_FLAGS= (empty) trains without it
TOK=checkpoints/tokenizer_shakespeare_4096.json
common=(--preset cpu --tokenizer "$TOK" --resume)

$PY -m mdlm_course train "${common[@]}" --objective ar --steps "$STEPS" --stop-at "$STEPS_AR_INIT" \
    --out "$RUNS/shakespeare-ar"
init="$RUNS/shakespeare-ar-init"
if [ ! -d "$init" ]; then
    cp -r "$RUNS/shakespeare-ar/step-$(printf %06d "$STEPS_AR_INIT")" "$init.tmp" && mv "$init.tmp" "$init"
fi
# shellcheck disable=SC2086  (MDLM_FLAGS is a list of options)
$PY -m mdlm_course train "${common[@]}" --init-from "$init" --steps $((STEPS - STEPS_AR_INIT)) $MDLM_FLAGS \
    --out "$RUNS/shakespeare-mdlm"
export_best() {   # weights, tokenizer, configs and history, without the optimizer state: what ships
    rm -rf "checkpoints/$1.new" && $PY -c "import sys; from mdlm_course.checkpoint import export_for_shipping as e
print(e(sys.argv[1], sys.argv[2]))" "$RUNS/$1" "checkpoints/$1.new" \
    && rm -rf "checkpoints/$1" && mv "checkpoints/$1.new" "checkpoints/$1"
}
export_best shakespeare-mdlm
$PY -m mdlm_course train "${common[@]}" --objective ar --steps "$STEPS" --out "$RUNS/shakespeare-ar"
export_best shakespeare-ar
