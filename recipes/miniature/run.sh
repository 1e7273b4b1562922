#!/usr/bin/env bash
# A miniature world end to end on a CPU: world → image–text pretraining → zero-shot
# triplets → S1 + ablations + baselines + supervised ceiling + data-scaling curve →
# S2 (the MLLM embedder: decoder LM pretraining, stage 1, stage 2, ablations) →
# evaluation table. Every step is an `opencir` command; rerunning skips finished steps.
#   bash recipes/miniature/run.sh shapes|emoji      # OUT=runs/<world>-tiny by default
set -euo pipefail
cd "$(dirname "$0")/../.."
WORLD=${1:?usage: run.sh shapes|emoji}
case "$WORLD" in
  shapes) BENCHMARK=shapescir
          DEFAULT_WORLD_ARGS="--n-train 10000 --n-test 2000 --queries 300 --val-queries 1500"
          DEFAULT_PAIRS=16000 DEFAULT_SCALING="1000 4000" ;;
  emoji)  BENCHMARK=emojicir
          DEFAULT_WORLD_ARGS="--queries 300 --val-queries 300"
          DEFAULT_PAIRS=5000 DEFAULT_SCALING="500 2000" ;;
  *) echo "unknown world $WORLD (expected shapes or emoji)" >&2; exit 2 ;;
esac
OUT=${OUT:-runs/$WORLD-tiny}
OPENCIR=${OPENCIR:-.venv/bin/opencir}
WORLD_ARGS=${WORLD_ARGS:-$DEFAULT_WORLD_ARGS}
PAIRS=${PAIRS:-$DEFAULT_PAIRS}
SCALING=${SCALING:-$DEFAULT_SCALING}
RECIPES=recipes/miniature
W=$OUT/world
BB=$OUT/pretrain/backbone
mkdir -p "$OUT/results"

done_marker() { [ -e "$1" ]; }

train() {  # train NAME RECIPE [overrides...]: skip when NAME/final exists, else (re)start/resume
  local name=$1 recipe=$2; shift 2
  done_marker "$OUT/$name/final/config.json" && return 0
  local resume=()
  [ -f "$OUT/$name/checkpoints/latest" ] && resume=(--resume latest)
  "$OPENCIR" train --recipe "$recipe" out_dir="$OUT/$name" "$@" "${resume[@]}" --no-progress
}

evaluate() {  # evaluate NAME MODEL [extra args]
  local name=$1 model=$2; shift 2
  done_marker "$OUT/results/$name.json" && return 0
  "$OPENCIR" eval --model "$model" --benchmark "$BENCHMARK" --data-root "$W" --split test \
    --out "$OUT/results/$name.json" --cache-dir "$OUT/cache" --no-progress "$@"
}

# shellcheck disable=SC2086
done_marker "$W/world.json" || "$OPENCIR" world "$WORLD" --out "$W" $WORLD_ARGS
train pretrain "$RECIPES/pretrain.yaml" data.pairs="$W/images.jsonl"

# zero-shot triplets: related pairs (nearest neighbours in the pretrained image space, S3),
# alt text as sidecar captions, the template writer for the change text
"$OPENCIR" generate --images "$W/images.jsonl" --where split=train --out "$OUT/triplets" \
  --pairs "$PAIRS" --sampler related --embed-model "$OUT/pretrain/final" \
  --captioner sidecar --writer template --seed 0 --no-progress --no-verify-images
done_marker "$OUT/gt/triplets.jsonl" || "$OPENCIR" world triplets --root "$W" --split val --out "$OUT/gt"

GEN="data.triplets=[$OUT/triplets]"
for method in image-only text-only sum; do
  evaluate "$method" "$method-vit-mini-minilm" --pretrained "$BB"
done
train combiner-baseline "$RECIPES/combiner-baseline.yaml" pretrained="$BB" "$GEN"
train s1 "$RECIPES/s1.yaml" pretrained="$BB" "$GEN"
train s1-no-ema "$RECIPES/s1.yaml" pretrained="$BB" "$GEN" model_overrides.ema=false
train s1-no-xattn "$RECIPES/s1.yaml" pretrained="$BB" "$GEN" model_overrides.cross_attention=false
train s1-gt "$RECIPES/s1.yaml" pretrained="$BB" "data.triplets=[]" "data.labelled=[$OUT/gt]" \
  data.labelled_ratio=1.0
for n in $SCALING; do
  train "s1-n$n" "$RECIPES/s1.yaml" pretrained="$BB" "$GEN" data.max_triplets="$n"
done
train s1-combiner "$RECIPES/combiner-stage.yaml" init="$OUT/s1/final" "$GEN"

# S2: the MLLM embedder on the same ViT, a small decoder pretrained on the alt text, then
# stage 1 (joint embedding on image–alt-text pairs) and stage 2 (instruction tuning on the
# generated triplets); ablations: stage 2 without stage 1, and stage 2 on ground truth. Each
# twice: with the method's last-token pooling and with mean pooling (suffix -mean).
PAIRS_DATA="data.pairs=$W/images.jsonl"
GT=("data.triplets=[]" "data.labelled=[$OUT/gt]" data.labelled_ratio=1.0)
train mllm-lm "$RECIPES/mllm-lm.yaml" vision_init="$BB" "$PAIRS_DATA"
for pooling in last mean; do
  suffix=""; [ "$pooling" = mean ] && suffix=-mean
  train "mllm-stage1$suffix" "$RECIPES/mllm-stage1.yaml" init="$OUT/mllm-lm/final" "$PAIRS_DATA" \
    model_overrides.pooling=$pooling
  train "mllm-s2$suffix" "$RECIPES/mllm-stage2.yaml" init="$OUT/mllm-stage1$suffix/final" "$GEN"
  train "mllm-s2$suffix-no-stage1" "$RECIPES/mllm-stage2.yaml" init="$OUT/mllm-lm/final" "$GEN" \
    model_overrides.pooling=$pooling
  train "mllm-s2$suffix-gt" "$RECIPES/mllm-stage2.yaml" init="$OUT/mllm-stage1$suffix/final" \
    "${GT[@]}"
done

for name in combiner-baseline s1 s1-no-ema s1-no-xattn s1-gt s1-combiner \
  mllm-stage1 mllm-s2 mllm-s2-no-stage1 mllm-s2-gt \
  mllm-stage1-mean mllm-s2-mean mllm-s2-mean-no-stage1 mllm-s2-mean-gt; do
  evaluate "$name" "$OUT/$name/final"
done
scaling=()
for n in $SCALING; do
  evaluate "s1-n$n" "$OUT/s1-n$n/final"
  scaling+=("$n=$OUT/results/s1-n$n.json")
done
scaling+=("$PAIRS=$OUT/results/s1.json")

"$OPENCIR" results \
  image-only="$OUT/results/image-only.json" text-only="$OUT/results/text-only.json" \
  sum="$OUT/results/sum.json" combiner="$OUT/results/combiner-baseline.json" \
  "S1 full=$OUT/results/s1.json" "S1 + combiner (Eq. 3)=$OUT/results/s1-combiner.json" \
  "S1 w/o EMA=$OUT/results/s1-no-ema.json" "S1 w/o cross-attention=$OUT/results/s1-no-xattn.json" \
  "S1 on ground-truth triplets=$OUT/results/s1-gt.json" \
  "S2 stage 1 only=$OUT/results/mllm-stage1.json" "S2 full (stages 1+2)=$OUT/results/mllm-s2.json" \
  "S2 w/o stage 1=$OUT/results/mllm-s2-no-stage1.json" \
  "S2 on ground-truth triplets=$OUT/results/mllm-s2-gt.json" \
  "S2 mean pooling, stage 1 only=$OUT/results/mllm-stage1-mean.json" \
  "S2 mean pooling, full=$OUT/results/mllm-s2-mean.json" \
  "S2 mean pooling w/o stage 1=$OUT/results/mllm-s2-mean-no-stage1.json" \
  "S2 mean pooling on ground-truth triplets=$OUT/results/mllm-s2-mean-gt.json" \
  --out "$OUT/table.md" --scaling "${scaling[@]}" --plot "$OUT/scaling.png" \
  --baselines "image-only,sum,combiner,S1 on ground-truth triplets" --baseline image-only
cat "$OUT/table.md"
