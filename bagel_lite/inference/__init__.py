"""Reading text and images into a KV cache, writing text, drawing images, and the one-line API.

``contexts`` (a ``Context`` and reading into it), ``text_generation`` (writing), ``flow`` (flow matching: the
schedule, the Euler step, the one sampling loop), ``denoising`` (BAGEL's guided velocity), ``engine`` (the three
together), ``settings`` (every sampler setting checked in one place), ``progress`` (callbacks and Stop),
``conversation`` (turns as transactions), ``pipeline`` (``generate`` / ``edit`` / ``answer``). Sits on
``loading`` and ``model``.
"""
