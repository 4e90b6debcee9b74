#!/bin/sh
# The main job: builds ldmc, draws the demo dataset (four classes of shapes in varied sizes and
# aspect ratios), trains the tiny autoencoder and then the tiny class-conditional UNet on the CPU,
# samples the trained model with `ldmc sample`, and ends with sample grids (one row per class) and
# the loss curves. 12 to 20 minutes on 2 cores.
# Everything goes to runs/demo/ (removed first: the demo always starts fresh).
set -eu
cd "$(dirname "$0")/.."
scripts/build.sh
rm -rf runs/demo
build/ldmc demo-data runs/demo/data
echo
echo "== 1/2: the autoencoder (configs/demo_vae.yaml)"
build/ldmc train configs/demo_vae.yaml
echo
echo "== 2/2: the class-conditional UNet (configs/demo.yaml)"
build/ldmc train configs/demo.yaml
grid=$(ls runs/demo/unet/samples/*.png | tail -n 1)
echo
echo "== sampling the trained model: DPM++ 2M (Karras), 25 steps, guidance 3, 4 of each class"
build/ldmc sample configs/demo.yaml --class 0,1,2,3 --n 4 --batch 8 --seed 1 --steps 25 \
    --sampler dpmpp_2m --cfg 3 --quiet --out runs/demo/sampled
echo
echo "demo done:"
echo "  samples      $grid (rows: circle, cross, square, triangle)"
echo "  sampled      runs/demo/sampled/grid.png and one PNG per image (ldmc sample, parameters inside)"
echo "  loss curves  runs/demo/unet/loss_curve.png, runs/demo/vae/loss_curve.png"
echo "  metrics      runs/demo/unet/metrics.jsonl; TensorBoard: tensorboard --logdir runs/demo"
echo "  checkpoints  runs/demo/unet/checkpoints/ (resume: build/ldmc train configs/demo.yaml --resume latest)"
