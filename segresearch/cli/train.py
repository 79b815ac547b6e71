"""``segresearch train``: verl training, whose arguments ``segresearch.rl.train`` defines."""

from __future__ import annotations

import argparse

from segresearch.rl import train


def cmd_train(args: argparse.Namespace) -> int:
    return train.run(args)
