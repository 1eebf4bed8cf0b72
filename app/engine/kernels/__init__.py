"""Decoding steps in C for the rounds where PyTorch's operators cost more than the math.

`gpt2.FusedStep`: one row of a GPT-2 model, a whole step in one OpenMP region
(gpt2_step.c), compiled on first use (`build`). The lean step (app/engine/lean.py)
decides when it runs.
"""
