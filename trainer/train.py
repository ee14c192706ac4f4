"""Thin entry point for pretraining: the same as `hf-ffsleep train ...` (the logic lives in `hf_ffsleep.pretraining`).

    python trainer/train.py --preset tiny --output-dir runs/tiny --data-dir ../shared/data/tinystories
    torchrun --standalone --nproc_per_node 2 trainer/train.py --preset tiny --output-dir runs/tiny-ddp
"""

import sys

from hf_ffsleep.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
