"""The progress bar shows the epoch's running losses at every step."""

import torch

from kdforge.distiller import Distiller
from kdforge.engine.hooks import HookBase, ProgressHook
from kdforge.engine.trainer import Trainer
from kdforge.losses import CrossEntropyLoss
from kdforge.models import create_model


class BarReader(HookBase):
    """After each step (and after the progress hook), what the bar would draw, and the
    running means it should show."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, float]]] = []

    def after_step(self) -> None:
        bar = self.trainer.hook(ProgressHook).bar
        self.seen.append((bar.postfix, dict(self.trainer.meter.means)))


def test_the_bar_follows_every_step_of_an_epoch_shorter_than_log_every():
    torch.manual_seed(0)
    distiller = Distiller(None, create_model("resnet8", num_classes=4), {"ce": CrossEntropyLoss()})
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    data = [(torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2,))) for _ in range(4)]
    reader = BarReader()
    Trainer(distiller, optimizer, scheduler, data, 1, hooks=[ProgressHook(), reader]).fit()
    assert len(reader.seen) == 4  # the former default, every 20 steps, drew step 1's only
    for postfix, means in reader.seen:
        assert f"ce={means['ce']:.4f}" in postfix
    assert len({postfix.split(",")[0] for postfix, _ in reader.seen}) == 4  # all different
