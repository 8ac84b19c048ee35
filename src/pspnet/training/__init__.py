"""Training a PSPNet (Zhao et al. 2017, Sec. 4): the paper's schedule and parameter groups, the data
order and augmentation, exact resume (checkpoint and RNG state), DDP, logging and the loop.

Uses ``models``, ``data``, ``metrics`` and ``inference`` (validation), never ``cli``.
"""
