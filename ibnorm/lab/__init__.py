"""ibnorm.lab: the experiment suite built on the library (``pip install 'ibnorm[lab]'``).

Offline data (:mod:`.data`), model presets (:mod:`.models`), the two task kinds (:mod:`.tasks`), one
training run (:mod:`.train`), grids of runs (:mod:`.sweep`) and their tables (:mod:`.report`), information
analysis (:mod:`.info`), benchmarks (:mod:`.bench`) and the ``ibnorm`` command (:mod:`.cli`). The library
(``ibnorm``) never imports this package.
"""
