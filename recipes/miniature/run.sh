#!/usr/bin/env bash
# A miniature world end to end on a CPU: world → image–text pretraining → zero-shot
# triplets → S1 + ablations + baselines + supervised ceiling + data-scaling curve →
# S2 (the MLLM embedder: decoder LM pretraining, stage 1, stage 2, ablations) →
# evaluation table with 95% CIs and paired tests. Every step is an `opencir` command;
# rerunning skips finished steps and resumes an interrupted training from its last checkpoint,
# so the table can be built up over several runs (copy OUT/results/*.json between machines).
#   bash recipes/miniature/run.sh shapes|emoji            # OUT=runs/<world>-tiny by default
#   QUICK=1 bash recipes/miniature/run.sh shapes|emoji    # smoke check: small world, few steps,
#                                                         # one seed (OUT=runs/<world>-quick)
# The key rows (image-only, sum, S1 and its ablations, S1 on ground truth, S2 full) are run with
# every seed of SEEDS (default "0 1 2"): S1 and S2 rows vary the training seed on the seed-0
# backbone; image-only and sum vary the backbone's pretraining seed. Every model is evaluated
# as soon as it is trained (OUT/results/NAME.json); the first seed's key rows and S2 come first,
# then the other rows, then the other seeds' repeats, so an interrupted run leaves the most
# telling rows behind first.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORLD=${1:?usage: run.sh shapes|emoji}
QUICK=${QUICK:-0}
case "$WORLD" in
  # ShapesCIR's ground truth is worded in the varied training styles, and its supervised rows
  # train MiniLM's last three layers (chosen on held-out-phrasing val, docs/RESULTS.md "Wider
  # varied wording"); EmojiCIR's ground truth is its plain-worded val side, trained as s1.yaml
  shapes) BENCHMARK=shapescir GT_SPLIT=train
          FULL_WORLD_ARGS="--n-train 60000 --n-test 12000 --queries 2000 --val-queries 1500
                           --train-queries 10000 --train-phrasing varied"
          QUICK_WORLD_ARGS="--n-train 5000 --n-test 1500 --queries 200 --val-queries 200
                            --train-queries 500 --train-phrasing varied"
          GT_TRAIN=("freeze=[text_model.embeddings,text_model.encoder.layer.0.,text_model.encoder.layer.1.,text_model.encoder.layer.2.]")
          FULL_PAIRS=16000 FULL_SCALING="1000 2000 4000 8000"
          # pretraining goes on for 3,000 more steps from a fresh warm-up (docs/RESULTS.md
          # "Ensembles, and a longer-trained backbone", chosen on held-out-phrasing val)
          MORE_PRETRAIN=(steps=3000 optim.lr=5e-4) ;;
  emoji)  BENCHMARK=emojicir GT_SPLIT=val
          FULL_WORLD_ARGS="--queries 1000 --val-queries 300"
          QUICK_WORLD_ARGS="--queries 200 --val-queries 100"
          FULL_PAIRS=5000 FULL_SCALING="500 1000 2000 3500" GT_TRAIN=() MORE_PRETRAIN=() ;;
  *) echo "unknown world $WORLD (expected shapes or emoji)" >&2; exit 2 ;;
esac
if [ "$QUICK" = 1 ]; then
  OUT=${OUT:-runs/$WORLD-quick} WORLD_ARGS=${WORLD_ARGS:-$QUICK_WORLD_ARGS}
  PAIRS=${PAIRS:-1000} SCALING=${SCALING:-"250 500"} SEEDS=${SEEDS:-0}
  TRAIN_EXTRA=(steps="${QUICK_STEPS:-40}")  # every training stage
else
  OUT=${OUT:-runs/$WORLD-tiny} WORLD_ARGS=${WORLD_ARGS:-$FULL_WORLD_ARGS}
  PAIRS=${PAIRS:-$FULL_PAIRS} SCALING=${SCALING:-$FULL_SCALING} SEEDS=${SEEDS:-"0 1 2"}
  TRAIN_EXTRA=()  # each recipe's own steps
fi
OPENCIR=${OPENCIR:-.venv/bin/opencir}
RECIPES=recipes/miniature
W=$OUT/world
# the backbone every row builds on: pretraining's, or its continuation's where the world has one
if [ ${#MORE_PRETRAIN[@]} -gt 0 ]; then PRE=pretrain-more; else PRE=pretrain; fi
BB=$OUT/$PRE/backbone
mkdir -p "$OUT/results"

done_marker() { [ -e "$1" ]; }
# shellcheck source=recipes/miniature/lib.sh
source "$RECIPES/lib.sh"
evaluate() { evaluate_on "$W" test "$BENCHMARK" "$@"; }  # evaluate NAME MODEL [extra args]

seeded() {  # seeded NAME SEED: the run name of one seed (seed 0 keeps the plain name)
  if [ "$2" = 0 ]; then echo "$1"; else echo "$1-seed$2"; fi
}

runs() {  # runs NAME: the results files of every seed of NAME, comma-separated
  local files=() seed
  for seed in $SEEDS; do files+=("$OUT/results/$(seeded "$1" "$seed").json"); done
  (IFS=,; echo "${files[*]}")
}

row() {  # row NAME RECIPE [overrides...]: train NAME, then evaluate it on the test split
  train "$@"
  evaluate "$1" "$OUT/$1/final"
}

FIRST_SEED=${SEEDS%% *}
OTHER_SEEDS=${SEEDS#"$FIRST_SEED"}

backbone_rows() {  # backbone_rows SEED: pretraining with SEED, image-only and sum on it
  local pre
  pre=$(seeded pretrain "$1")
  train "$pre" "$RECIPES/pretrain.yaml" data.pairs="$W/images.jsonl" seed="$1"
  if [ ${#MORE_PRETRAIN[@]} -gt 0 ]; then  # the continuation starts from the first run's model
    local more
    more=$(seeded pretrain-more "$1")
    train "$more" "$RECIPES/pretrain.yaml" data.pairs="$W/images.jsonl" \
      seed="$1" pretrained="$OUT/$pre/final" text_init=null "${MORE_PRETRAIN[@]}"
    pre=$more
  fi
  for method in image-only sum; do
    evaluate "$(seeded "$method" "$1")" "$method-vit-mini-minilm" --pretrained "$OUT/$pre/backbone"
  done
}

s1_rows() {  # s1_rows SEED: S1, its two ablations and S1 on ground truth, trained with SEED
  row "$(seeded s1 "$1")" "$RECIPES/s1.yaml" pretrained="$BB" "$GEN" seed="$1"
  # without a fixed target there is no table of target embeddings to take pool negatives
  # from: the EMA rows use the batch and 4 mined hard negatives per triplet instead
  row "$(seeded s1-no-ema "$1")" "$RECIPES/s1.yaml" pretrained="$BB" "$GEN" seed="$1" \
    model_overrides.ema=false "${MINED[@]}"
  row "$(seeded s1-no-xattn "$1")" "$RECIPES/s1.yaml" pretrained="$BB" "$GEN" \
    seed="$1" model_overrides.cross_attention=false
  # the supervised S1 trains 4,000 steps (chosen on held-out-phrasing val, docs/RESULTS.md)
  row "$(seeded s1-gt "$1")" "$RECIPES/s1.yaml" pretrained="$BB" "${GT[@]}" seed="$1" \
    steps=4000 ${GT_TRAIN[@]+"${GT_TRAIN[@]}"}
}

# shellcheck disable=SC2086
done_marker "$W/world.json" || "$OPENCIR" world "$WORLD" --out "$W" $WORLD_ARGS
if [ "$FIRST_SEED" != 0 ]; then
  echo "SEEDS must start with 0 (the other rows train on the seed-0 backbone), got '$SEEDS'" >&2
  exit 2
fi
backbone_rows 0
evaluate text-only text-only-vit-mini-minilm --pretrained "$BB"

# zero-shot triplets: related pairs (nearest neighbours in the pretrained image space, S3),
# alt text as sidecar captions, the template writer for the change text
"$OPENCIR" generate --images "$W/images.jsonl" --where split=train --out "$OUT/triplets" \
  --pairs "$PAIRS" --sampler related --embed-model "$OUT/$PRE/final" \
  --captioner sidecar --writer template --seed 0 --no-progress --no-verify-images
# the supervised ceiling's ground truth: ShapesCIR's train-side queries (val stays unseen);
# EmojiCIR has no train-side queries, so its val queries
done_marker "$OUT/gt/triplets.jsonl" ||
  "$OPENCIR" world triplets --root "$W" --split "$GT_SPLIT" --out "$OUT/gt"

GEN="data.triplets=[$OUT/triplets]"
GT=("data.triplets=[]" "data.labelled=[$OUT/gt]" data.labelled_ratio=1.0)
MINED=(pool_negatives=false hard_negatives=4)
s1_rows 0

# S2: the MLLM embedder on the same ViT, a small decoder pretrained on the alt text, then
# stage 1 (joint embedding on image–alt-text pairs) and stage 2 (instruction tuning on the
# generated triplets); ablations: stage 2 without stage 1, and stage 2 on ground truth. Each
# twice: with the method's last-token pooling and with mean pooling (suffix -mean); the full
# method (last-token pooling, both stages) with every seed.
PAIRS_DATA="data.pairs=$W/images.jsonl"
train mllm-lm "$RECIPES/mllm-lm.yaml" vision_init="$BB" "$PAIRS_DATA"
for pooling in last mean; do
  suffix=""; [ "$pooling" = mean ] && suffix=-mean
  row "mllm-stage1$suffix" "$RECIPES/mllm-stage1.yaml" init="$OUT/mllm-lm/final" "$PAIRS_DATA" \
    model_overrides.pooling=$pooling
  row "mllm-s2$suffix" "$RECIPES/mllm-stage2.yaml" init="$OUT/mllm-stage1$suffix/final" "$GEN"
  row "mllm-s2$suffix-no-stage1" "$RECIPES/mllm-stage2.yaml" init="$OUT/mllm-lm/final" "$GEN" \
    model_overrides.pooling=$pooling
  row "mllm-s2$suffix-gt" "$RECIPES/mllm-stage2.yaml" init="$OUT/mllm-stage1$suffix/final" \
    "${GT[@]}"
done

# the other rows of the table: the combiner baseline, the paper's EMA target, the
# data-scaling curve and S1 + combiner
row combiner-baseline "$RECIPES/combiner-baseline.yaml" pretrained="$BB" "$GEN"
# the paper's EMA target (momentum 0.999) beside the recipe's fixed one
row s1-ema999 "$RECIPES/s1.yaml" pretrained="$BB" "$GEN" model_overrides.ema_momentum=0.999 \
  "${MINED[@]}"
for n in $SCALING; do
  row "s1-n$n" "$RECIPES/s1.yaml" pretrained="$BB" "$GEN" data.max_triplets="$n"
done
row s1-combiner "$RECIPES/combiner-stage.yaml" init="$OUT/s1/final" "$GEN"

# the key rows' other seeds
for seed in $OTHER_SEEDS; do
  s1_rows "$seed"
  row "$(seeded mllm-s2 "$seed")" "$RECIPES/mllm-stage2.yaml" init="$OUT/mllm-stage1/final" \
    "$GEN" seed="$seed"
  backbone_rows "$seed"
done

scaling=()
for n in $SCALING; do scaling+=("$n=$OUT/results/s1-n$n.json"); done
scaling+=("$PAIRS=$OUT/results/s1.json")

R=$OUT/results
"$OPENCIR" results \
  image-only="$(runs image-only)" text-only="$R/text-only.json" sum="$(runs sum)" \
  combiner="$R/combiner-baseline.json" \
  "S1 full=$(runs s1)" "S1 + combiner (Eq. 3)=$R/s1-combiner.json" \
  "S1 w/o EMA=$(runs s1-no-ema)" "S1 with EMA 0.999 (the paper's target)=$R/s1-ema999.json" \
  "S1 w/o cross-attention=$(runs s1-no-xattn)" \
  "S1 on ground-truth triplets=$(runs s1-gt)" \
  "S2 stage 1 only=$R/mllm-stage1.json" "S2 full (stages 1+2)=$(runs mllm-s2)" \
  "S2 w/o stage 1=$R/mllm-s2-no-stage1.json" \
  "S2 on ground-truth triplets=$R/mllm-s2-gt.json" \
  "S2 mean pooling, stage 1 only=$R/mllm-stage1-mean.json" \
  "S2 mean pooling, full=$R/mllm-s2-mean.json" \
  "S2 mean pooling w/o stage 1=$R/mllm-s2-mean-no-stage1.json" \
  "S2 mean pooling on ground-truth triplets=$R/mllm-s2-mean-gt.json" \
  --out "$OUT/table.md" --scaling "${scaling[@]}" --plot "$OUT/scaling.png" \
  --baselines "image-only,sum,combiner,S1 on ground-truth triplets" --baseline image-only
cat "$OUT/table.md"
