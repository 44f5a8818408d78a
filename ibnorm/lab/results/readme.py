"""The README's verdict paragraph, written by ``ibnorm report`` from the same decisions as RESULTS.md, so that the
front page cannot drift from the runs as the sweep commits more of them."""
from __future__ import annotations

import textwrap
from pathlib import Path

from ...atomic import atomic_write_text
from .. import reproduce as R
from ..tasks import task_kind
from .decisive import Decision, _p

START = "<!-- verdict: written by `ibnorm report` from the committed runs; do not edit by hand -->"
END = "<!-- /verdict -->"


def _effect(d: Decision, model: str) -> str:
    """The mean paired difference in the family's unit: accuracy points for vision, nats/byte for the LMs."""
    if task_kind(model).name == "vision":
        return f"{100 * d.p95.mean:+.1f} accuracy points"
    return f"{d.p95.mean:+.3f} nats/byte"


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def verdict_paragraph(claim1: str, main: dict[tuple, Decision], confirm: dict[tuple, Decision],
                      complete: bool) -> str:
    """Claim 1's verdict, the confirmatory test family by family, and the main table's significant comparisons.
    ``main`` and ``confirm``: (model, norm) -> decision; ``complete``: every planned run is in."""
    text = [f"**Today's verdict** (small models, one CPU thread per run): the paper's claim 1, that IBNorm outperforms "
            f"the base norm on every family, is **{claim1}**."]
    if confirm:
        by_verdict: dict[str, list[str]] = {}
        for (model, norm), d in confirm.items():
            by_verdict.setdefault(d.verdict, []).append(
                f"{model} (`{norm}`, {_effect(d, model)}, Holm p {_p(d.p_adjusted)})")
        text.append(f"In the pre-registered confirmatory test ({len(R.CONFIRM_SEEDS)} paired seeds, Holm over the "
                    f"{len(R.FAMILIES)} families) it is " + "; ".join(
                        f"{verdict} on {_listed(where)}" for verdict, where in sorted(by_verdict.items())) + ".")
    ops = {k: d for k, d in main.items() if k[1] in R.IB_OPS}
    if ops:
        decided = [f"{model} {norm} {d.verdict} ({_effect(d, model)}, p {_p(d.p_adjusted)})"
                   for (model, norm), d in sorted(ops.items()) if d.verdict in ("better", "worse")]
        rest = len(ops) - len(decided)
        others = f"; the other {rest} {'is' if rest == 1 else 'are'} equivalent or inconclusive" if rest else ""
        text.append(f"In the exploratory main table (the ops at strength {R.REFERENCE_STRENGTH:g}, Holm over its "
                    f"{len(ops)} op × family comparisons): "
                    + ("; ".join(decided) + others if decided else "no op is better or worse") + ".")
    text.append("Base norms: BatchNorm on resnet-mini, LayerNorm on vit-mini and gpt2-mini, RMSNorm on llama-mini. "
                + ("Every planned run is in; " if complete else "The decisive sweep is still running; ")
                + "[RESULTS.md](RESULTS.md) gives every claim's verdict and the tables behind it.")
    # wrapped as the README is (120 columns); breaks fall between words, never inside a `code` span without spaces
    return textwrap.fill(" ".join(text), width=118, break_long_words=False, break_on_hyphens=False)


def verdict_block(readme: Path) -> tuple[str, int, int]:
    """The README's text and where its verdict block's markers are; a clear error when it has none."""
    text = readme.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"--readme: {readme} has no verdict block; it needs the lines {START!r} and {END!r}")
    return text, start, end


def write_verdict(readme: Path, paragraph: str) -> bool:
    """Replace the text between the README's verdict markers with ``paragraph``; return whether it changed."""
    text, start, end = verdict_block(readme)
    new = text[:start + len(START)] + "\n" + paragraph + "\n" + text[end:]
    if new != text:
        atomic_write_text(readme, new)
    return new != text
