"""The report (``ibnorm report``): ``RESULTS.md``, every ``runs.csv`` and the figures, rebuilt from the committed run files.

Nothing here trains or measures: it reads ``results/<area>/runs/*.json`` (written by :mod:`ibnorm.lab.reproduce`)
and applies the rules fixed in advance. Output is a pure function of those files, so a clean clone rebuilds
``RESULTS.md`` and the CSVs byte for byte (a test checks it).

Rules (stated in ``RESULTS.md`` too):
- a norm is compared with its family's base norm seed by seed; the 95% Student-t interval of the mean
  difference decides "better"/"worse" only when it excludes 0 (:mod:`ibnorm.lab.stats`);
- the largest loss rise of a run is the largest amount by which the mean training loss of 10 steps rises above
  its minimum over the preceding 100 steps: a spike measure for claim 4.

One module per section of the page, over :mod:`.common` (reading, paired statistics, figure helpers) and
:mod:`ibnorm.lab.stats`; :mod:`.page` puts the sections together. Nothing here trains or measures.
"""
from .ablations import ablation_section, evidenced_default
from .claims import claims_section
from .common import AREAS, load_runs, max_loss_rise, versus
from .learnable import learned_compression_lines, normal_contraction
from .main_table import forest_range, main_section
from .page import build_report
from .posthoc import posthoc_section
from .protocol import status_lines
from .readme import verdict_paragraph, write_verdict
from .confirmatory import confirmatory_section
from .tuning import DYT_DIAGNOSIS, tuning_section

__all__ = ["AREAS", "DYT_DIAGNOSIS", "ablation_section", "build_report", "claims_section", "confirmatory_section",
           "evidenced_default",
           "forest_range", "learned_compression_lines", "load_runs", "main_section", "max_loss_rise",
           "normal_contraction", "posthoc_section", "status_lines", "tuning_section", "verdict_paragraph", "versus",
           "write_verdict"]
