#!/usr/bin/env bash
# Train coreset_attention (FaceCoresetNet) on synthetic identities disjoint from the synthetic
# protocol's, then compare every aggregator on the protocol's held-out templates.
# Runs on 2 CPU cores: bank ~10 s, training <= 15 min (--max-minutes), evaluation ~1 min.
#
#   bash examples/train_coreset_synthetic.sh [WORKDIR]
#
# The checkpoint shipped as aggregators/weights/coreset_attention_synthetic.ckpt was made by
# exactly this script (WORKDIR/coreset_attention_synthetic.ckpt).
set -euo pipefail
WORK=${1:-runs/train_coreset_synthetic}
mkdir -p "$WORK"

# 1. A training bank: 2,000 synthetic identities x 20 images (stills and video clips), drawn
#    from the same world model (seed 0) as the protocol, but none of its subjects.
python -c "from eval_protocols.synthetic import make_training_bank as m; m('$WORK/bank.npz', seed=0, num_identities=2000, images_per_identity=20)"

# 2. Train. Model selection: TAR@FAR=1e-5 on templates of 10% held-out bank identities
#    (never the test protocol). Seeded; resumable (re-run the same command after a kill).
facecoreset train coreset_attention --train-features "$WORK/bank.npz" --output "$WORK/run" \
    --steps 1000 --eval-every 100 --max-minutes 15 --seed 0 \
    --val-fraction 0.1 --val-templates 8 --val-far 1e-5 \
    --export "$WORK/coreset_attention_synthetic.ckpt"

# 3. Evaluate all aggregators side by side on the synthetic protocol (seed 0, demo preset).
facecoreset eval --protocol synthetic --data-root "$WORK/protocol" --output "$WORK/eval" \
    --aggregators mean,quality_weighted,media_fusion,coreset_fps,coreset_attention \
    --checkpoint coreset_attention="$WORK/coreset_attention_synthetic.ckpt"
