#!/bin/bash
# Experiment 1 (README "Real data"): robustness transfer from MNIST to Fashion-MNIST at
# eps 0.1, end to end, on the offline data files. Every step resumes or is skipped when its
# output is there, so an interrupted run goes on where it stopped when started again:
#
#   bash scripts/real_data_fashion.sh
#
# Needs ../shared/data/mnist (the official MNIST IDX files) and Fashion-MNIST's
# (apt-get install dataset-fashion-mnist). Models go to runs/real_data/, results to
# results/real_data/fashion/.
set -euo pipefail
cd "$(dirname "$0")/.."
FASHION=/usr/share/datasets/fashion-mnist
EXAMPLES=${EXAMPLES:-1000}  # test examples every attack runs on
if [ ! -d "$FASHION" ]; then
  echo "ERROR: $FASHION is missing: apt-get install dataset-fashion-mnist" >&2
  exit 1
fi

mkdir -p results/real_data/fashion
# Each training command's wall-clock seconds (a resumed run adds a line; a finished one
# costs only its start).
train() {
  local began=$SECONDS
  python -m "igam_tf.$1" --flagfile="flags/$2"
  echo "$2 $((SECONDS - began))" >> results/real_data/fashion/training_seconds.txt
}

# The MNIST sources: robust (PGD-10 at eps 0.3, from a standard warm-up) and standard,
# each also written in MadryLab's TF1 layout, which the teachers load as Madry's release.
train train_baseline real_data/mnist_warm_up.cfg
train train_baseline real_data/mnist_teacher.cfg
train train_baseline real_data/mnist_standard.cfg
for source in mnist_teacher mnist_standard; do
  if [ ! -e "runs/real_data/${source}_madry/checkpoint" ]; then
    python -m igam_tf.export --model=trained --model_dir="runs/real_data/$source" \
      --format=madry_checkpoint --export_dir="runs/real_data/${source}_madry"
  fi
done

# The robust source's own robustness, at MNIST's eps 0.3 (Madry: 98.5% clean, 89.6% under
# PGD-100 with 50 restarts, 88.50% under AutoAttack).
if [ ! -e results/real_data/mnist_teacher/results.json ]; then
  python -m igam_tf.evaluate --model_dir=runs/real_data/mnist_teacher \
    --dataset=idx:../shared/data/mnist --epsilon=0.3 \
    --attacks=clean,fgsm,pgd20,apgd_ce,autoattack --num_examples="$EXAMPLES" \
    --output=results/real_data/mnist_teacher/
fi

# The teachers (the robust one is also the FT-MNIST row), then the students.
train finetune_teacher real_data/fashion/ft_mnist.cfg
train finetune_teacher real_data/fashion/ft_mnist_standard.cfg
train train_baseline real_data/fashion/standard.cfg
train train_igam real_data/fashion/igam.cfg
train train_baseline real_data/fashion/grad_norm.cfg
train train_igam real_data/fashion/igam_standard_teacher.cfg
train train_baseline real_data/fashion/pgd7.cfg

# Every model under the same attacks, each in its own report (a model already evaluated is
# skipped when the script is started again: AutoAttack takes up to an hour per model here).
for model in ft_mnist ft_mnist_standard standard igam grad_norm igam_standard_teacher pgd7; do
  if [ ! -e "results/real_data/fashion/$model.json" ]; then
    python -m igam_tf.evaluate --model_dir="runs/real_data/fashion/$model" \
      --dataset=idx:$FASHION --epsilon=0.1 --attacks=clean,fgsm,pgd20,apgd_ce,autoattack \
      --num_examples="$EXAMPLES" --output="results/real_data/fashion/$model.json"
  fi
done

R=runs/real_data/fashion
python -m igam_tf.visualize --dataset=idx:$FASHION \
  --models=$R/ft_mnist,$R/standard,$R/igam,$R/grad_norm,$R/igam_standard_teacher,$R/pgd7 \
  --output=results/real_data/fashion/input_gradients.png
