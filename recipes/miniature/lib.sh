# Steps shared by the miniature recipes (sourced; set OUT and OPENCIR first).
# TRAIN_EXTRA, an optional array, is appended to every training's overrides.

train() {  # train NAME RECIPE [overrides...]: skip when OUT/NAME/final exists, else (re)start/resume
  local name=$1 recipe=$2; shift 2
  [ -e "$OUT/$name/final/config.json" ] && return 0
  local resume=()
  [ -f "$OUT/$name/checkpoints/latest" ] && resume=(--resume latest)
  "$OPENCIR" train --recipe "$recipe" out_dir="$OUT/$name" "$@" \
    ${TRAIN_EXTRA[@]+"${TRAIN_EXTRA[@]}"} "${resume[@]}" --no-progress
}

evaluate_on() {  # evaluate_on ROOT SPLIT BENCHMARK NAME MODEL [extra args]: OUT/results/NAME.json (no rankings: small enough to commit)
  local root=$1 split=$2 benchmark=$3 name=$4 model=$5; shift 5
  [ -e "$OUT/results/$name.json" ] && return 0
  "$OPENCIR" eval --model "$model" --benchmark "$benchmark" --data-root "$root" --split "$split" \
    --out "$OUT/results/$name.json" --no-rankings --cache-dir "$OUT/cache" --no-progress "$@"
}
