"""Regenerate the sample trajectory: eight checkpoints of a tiny MLP trained by SGD at too large a step.

    python sample_checkpoints/make_trajectory.py

The model (16 → 64 → 64 → 4) trains 200 minibatch SGD steps at lr 1.0 on a noisy classification
task (10 % of the labels random, so the loss cannot reach 0), a step size large enough that the
weights keep bouncing around instead of settling. The weights after steps 193 … 200 land in
sample_checkpoints/trajectory/step_193.safetensors … step_200.safetensors:

    altgrad trajectory sample_checkpoints/trajectory/*.safetensors -f e2m1fn -f e4m3fn -f bf16

Deterministic: fixed seed, CPU, one thread; the files are byte-identical on every run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

STEPS, KEEP, BATCH, LR = 200, 8, 32, 1.0


class TinyMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(16, 64)
        self.hidden = torch.nn.Linear(64, 64)
        self.head = torch.nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(torch.relu(self.embed(x)))))


def main(out: Path | None = None) -> None:
    """Train and write the checkpoints into `out` (default: the trajectory/ folder beside this file)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = TinyMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x = torch.randn(1024, 16)
    y = (x[:, :4] * torch.tensor([1.0, 2.0, 3.0, 4.0])).argmax(dim=1)
    noisy = torch.rand(1024) < 0.1
    y = torch.where(noisy, torch.randint(0, 4, (1024,)), y)
    out = Path(__file__).parent / "trajectory" if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for step in range(1, STEPS + 1):
        batch = torch.randint(0, 1024, (BATCH,))
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        if step > STEPS - KEEP:
            tensors = {k: v.detach().clone().contiguous() for k, v in model.named_parameters()}
            save_file(tensors, str(out / f"step_{step}.safetensors"))
            print(f"step {step}: minibatch loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
