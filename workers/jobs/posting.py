"""Share what every job's post needs: safe text from untrusted input and the common footer."""

from __future__ import annotations

import re
from typing import Any

from policies.routing import Decision

MAX_CELL_CHARS = 300
HIDDEN = re.compile(r"<!--.*?(-->|$)", re.DOTALL)
MENTION = re.compile(r"(?<![\w`])@(?=[A-Za-z0-9])")

FOOTER_TEMPLATE = """\
{human}<sub>Written by `{model}` on the **{tier}** tier · cost ${cost:.4f}{fallbacks} · \
why this tier: {reasons}</sub>
{budget}
<sub>Was this {noun} useful? React with 👍 or 👎: your votes steer which tier does this work.</sub>"""
HUMAN_NOTE = "🧑‍💻 **A human reviewer is asked to check this change** ({why}).\n\n"
BUDGET_NOTE = (
    "<sub>💸 This month's external-model budget is spent, so this ran on the private model.</sub>"
)
DEFAULT_REASON = "the default tier for this task"


def untrusted(text: str, tag: str) -> str:
    """Remove any copy of the delimiter from untrusted text, so it cannot close the block."""
    return text.replace(f"untrusted-{tag}", "untrusted")


def clean(value: Any) -> str:
    """Make model text safe to post: no hidden comments (or fake markers), no @-pings."""
    text = HIDDEN.sub("", str(value)).strip()
    return MENTION.sub("@\u200b", text)


def cell(value: Any, limit: int = MAX_CELL_CHARS) -> str:
    """Make text fit one Markdown table cell."""
    text = clean(value).replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    return text[:limit] + ("…" if len(text) > limit else "")


def reasons_line(decision: Decision) -> str:
    """Say in one line why the decision's tier was chosen."""
    reasons = "; ".join(f"`{r.trigger}`: {cell(r.evidence, 160)}" for r in decision.reasons)
    return reasons or DEFAULT_REASON


def footer(decision: Decision, completion: Any, cost_usd: float, *, noun: str) -> str:
    """Render the tier, model, cost, reasons, human and budget notes, and the 👍/👎 invitation."""
    fallbacks = int(getattr(completion, "fallbacks", 0))
    human = [r.evidence for r in decision.reasons if r.trigger == "human_review"]
    return FOOTER_TEMPLATE.format(
        human=HUMAN_NOTE.format(why=cell(human[0]) if human else "policy")
        if decision.human_review
        else "",
        model=completion.model,
        tier=completion.tier,
        cost=cost_usd,
        fallbacks=f" · {fallbacks} fallback{'s' if fallbacks != 1 else ''}" if fallbacks else "",
        reasons=reasons_line(decision),
        budget=BUDGET_NOTE if "over_budget" in getattr(completion, "fallback_reasons", ()) else "",
        noun=noun,
    )
