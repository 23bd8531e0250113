#!/usr/bin/env bash
# End-to-end smoke test of `zoo generate --device cuda` with no internet: CIFAR-shaped random
# data written to an .npz, a small W-Asym ResNet8 zoo (automatic group size, default precision),
# then `zoo verify` and `zoo info`. Usage: bash scripts/smoke_generate_cuda.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-$(mktemp -d)}
PY=${PYTHON:-python3}
"$PY" - "$W" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(0)
np.savez(f"{sys.argv[1]}/cifar_shaped.npz",
         x_train=rng.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8), y_train=rng.integers(0, 10, 10000),
         x_test=rng.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, 2000))
PY
sed -e "s|source = \"cifar10\"|source = \"npz:$W/cifar_shaped.npz\"|" -e 's|^models = 10000|models = 96|' \
    -e 's|^models_per_shard = 1000|models_per_shard = 48|' -e 's|low = 10, high = 40|low = 2, high = 4|' \
    -e 's|^warmup_epochs = 5|warmup_epochs = 1|' zoo/presets/lim2024-wasym-resnet8.toml > "$W/spec.toml"
time "$PY" -m zoo.cli generate "$W/spec.toml" --out "$W/zoo" --device cuda
"$PY" -m zoo.cli verify "$W/zoo"
"$PY" - "$W/zoo" <<'PY'
import sys, json, zoo
z = zoo.open(sys.argv[1])
plan = json.load(open(f"{sys.argv[1]}/zoo-plan.json"))
print("group size chosen:", plan["group_size"], " models:", len(z), " diverged:", int(z.table.diverged.sum()))
print(z.table[["epochs", "lr", "test_acc"]].describe().round(4).to_string())
PY
