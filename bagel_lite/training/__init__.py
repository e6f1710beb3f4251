"""Packed sequences and BAGEL's two losses, the optimiser step, the EMA, and the CPU path.

``packing`` (``PackedSequence``, ``packed_loss``), ``optimization`` (cosine schedule, one optimiser step, thread
count), ``ema`` (the moving average of the weights), ``precision`` (bf16 only on CPUs that have it natively).
Sits on ``inference`` (flow matching's timesteps and noise), ``loading`` and ``model``.
"""
