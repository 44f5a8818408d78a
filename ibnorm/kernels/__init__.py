"""The kernels behind :mod:`ibnorm.functional`. Each computes the definition (:mod:`ibnorm.reference`) with
a hand-derived backward that saves only the input and per-group statistics, as ``nn.LayerNorm`` does:

- :mod:`ibnorm.kernels.autograd`: one ``torch.autograd.Function`` for every grouping, in plain PyTorch ops
  (``impl="autograd"``); the backward's derivation is in ``docs/method.md``;
- :mod:`ibnorm.kernels.cpu`: C++/OpenMP kernels for last-dimension groups (layer, RMS and group grouping) and
  for channels (batch grouping), built on first use with ``torch.utils.cpp_extension`` (``impl="cpu"``);
- :mod:`ibnorm.kernels.triton_rows`: Triton kernels for the same groups on CUDA (``impl="triton"``),
  imported only when a CUDA tensor arrives.

The op formulas all come from :mod:`ibnorm.ops`; the compiled kernels take an op by its ``code``, and are
``torch.library`` custom ops, so ``torch.compile(fullgraph=True)`` and ``torch.export`` trace them.
This package imports none of its modules: :mod:`ibnorm.functional` imports what it dispatches to.
"""
