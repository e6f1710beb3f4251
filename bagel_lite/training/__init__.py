"""Packed sequences and BAGEL's two losses, the step under accelerate (DDP, FSDP2), fine-tuning, memory planning.

``packing`` (``PackedSequence``, ``packed_loss``), ``trainer`` (the step under accelerate on one process or many,
FSDP2 sharding, the sharded EMA, atomic resumable states), ``data`` (hand-written JSONL data, mixed by weights,
packed to a token budget), ``finetune`` (the command for official-layout folders), ``planner`` (memory per GPU
before the first step), ``optimization`` (cosine schedule, one optimiser step, thread count), ``ema`` (the moving
average of the weights), ``precision`` (bf16 only on CPUs that have it natively).
Sits on ``inference`` (flow matching's timesteps and noise), ``loading`` and ``model``.
"""
