"""kdforge without its trainer: a Distiller in a hand-written PyTorch loop.

Distils a wrn_16_2 teacher into a resnet8 student with Hinton KD plus a FitNet hint on
scikit-learn's digits (no download). The teacher here is trained for a few steps first,
only so that it knows something; in practice you load a trained one with
``create_model(name, pretrained=PATH)``.

    python examples/plain_loop.py --steps 200
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kdforge import Distiller, create_model
from kdforge.data import build_datasets
from kdforge.losses import CrossEntropyLoss, FitNetLoss, KDLoss


def batches(loader: DataLoader, steps: int) -> Iterator:
    """Yield ``steps`` batches, going over ``loader`` as many times as needed."""
    done = 0
    while True:
        for batch in loader:
            if done == steps:
                return
            yield batch
            done += 1


def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    return 100.0 * hits / len(loader.dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    train_set, val_set = build_datasets("digits", size=16)
    train = DataLoader(train_set, batch_size=64, shuffle=True)
    val = DataLoader(val_set, batch_size=256)

    teacher = create_model("wrn_16_2", num_classes=10)
    optimizer = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9)
    for x, y in batches(train, args.steps):
        loss = F.cross_entropy(teacher(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"teacher top-1 {accuracy(teacher, val):.1f}% after {args.steps} steps")

    student = create_model("resnet8", num_classes=10)
    distiller = Distiller(
        teacher,
        student,
        {
            "ce": CrossEntropyLoss(weight=0.1),
            "kd": KDLoss(weight=0.9, temperature=4.0),
            "hint": FitNetLoss("layer2", "block2", weight=1.0),  # connector built by the probe
        },
        example_input=torch.zeros(2, 3, 16, 16),
    )
    params = [p for p in distiller.parameters() if p.requires_grad]  # student + connector
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    distiller.train()  # the teacher stays in eval mode
    for step, (x, y) in enumerate(batches(train, args.steps)):
        _, losses = distiller(x, y)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step}: " + ", ".join(f"{k} {v.item():.4f}" for k, v in losses.items()))
    print(f"student top-1 {accuracy(student, val):.1f}%")


if __name__ == "__main__":
    main()
