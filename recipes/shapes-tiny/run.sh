#!/usr/bin/env bash
# ShapesCIR end to end on a CPU (see recipes/miniature/run.sh for the steps).
exec bash "$(dirname "$0")/../miniature/run.sh" shapes "$@"
