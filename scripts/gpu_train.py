"""``melanoma-triage train`` on a GPU machine that has Keras and a GPU backend but not the service.

A GPU machine lent for a training run has JAX and PyTorch, not TensorFlow, Celery or the
database drivers. The trainer needs none of those: it is plain Keras (``keras.ops``; the
augmentation runs inside the training step), so it runs there under ``KERAS_BACKEND=jax``.
This script is exactly the ``train`` command's options and code (``worker.training.cli``),
without the rest of the command line's imports; the command recorded in model.json reads
``melanoma-triage train ...`` as if typed there.

    KERAS_BACKEND=jax python scripts/gpu_train.py --data /tmp/data --out runs/x --loso ...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import typer

    from worker.training.cli import train_command

    args = sys.argv[1:]
    sys.argv = ["melanoma-triage", "train", *args]  # what model.json records as the command
    app = typer.Typer(add_completion=False)
    app.command()(train_command)
    typer.main.get_command(app).main(args=args, prog_name="melanoma-triage train")


if __name__ == "__main__":
    main()
