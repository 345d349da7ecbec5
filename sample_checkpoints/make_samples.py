"""Regenerate the sample checkpoints: a tiny two-layer MLP classifier trained one real AdamW step.

    python sample_checkpoints/make_samples.py

Deterministic: fixed seed, CPU, one thread; the files are byte-identical on every run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from altgrad_cli.io.capture import capture_step


class TinyMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(32, 128)
        self.norm = torch.nn.LayerNorm(128)
        self.hidden = torch.nn.Linear(128, 128)
        self.head = torch.nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.norm(torch.relu(self.embed(x))))))


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = TinyMLP()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.randn(256, 32)
    y = (x[:, :10] * torch.arange(1, 11)).argmax(dim=1)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    with capture_step(model, Path(__file__).parent):
        optimizer.step()
    print(f"wrote sample checkpoints (loss {loss.item():.4f})")


if __name__ == "__main__":
    main()
