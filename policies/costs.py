"""Price model calls: API tiers per token, private tiers from a rung's monthly cost."""

from __future__ import annotations

from dataclasses import dataclass

from policies.model import Rung

SECONDS_PER_MONTH = 30.4375 * 24 * 3600  # mean Gregorian month


def bought_monthly(rung: Rung) -> float:
    """Return the midpoint of a rung's bought (4-year depreciation) monthly cost."""
    low, high = rung.bought_monthly_usd
    return (low + high) / 2


def capacity_tokens_per_month(rung: Rung) -> float:
    """Return the tokens a rung serves in a month at 100% utilization."""
    return rung.throughput_tokens_per_s * SECONDS_PER_MONTH


def private_call_cost(rung: Rung, tokens: int, *, monthly_usd: float | None = None) -> float:
    """Return the marginal cost of ``tokens`` on a rung running at full utilization."""
    monthly = bought_monthly(rung) if monthly_usd is None else monthly_usd
    return monthly * tokens / capacity_tokens_per_month(rung)


def api_call_cost(
    input_price: float, output_price: float, prompt_tokens: int, completion_tokens: int
) -> float:
    """Return an API call's cost from per-token prices."""
    return input_price * prompt_tokens + output_price * completion_tokens


@dataclass(frozen=True)
class RungEconomics:
    """Summarise what one rung costs against an API-only baseline for the same work."""

    rung: str
    monthly_bought: float
    monthly_rented: float
    utilization: float
    breakeven_utilization_bought: float
    breakeven_utilization_rented: float


def rung_economics(
    name: str, rung: Rung, *, tokens_per_month: float, api_usd_per_token: float
) -> RungEconomics:
    """Return the rung's utilization for this work and where it breaks even with the API.

    A rung at utilization u serves u × capacity tokens; bought at the API's blended price,
    that work would cost u × capacity × price. Break-even is where that equals the rung's
    monthly cost.
    """
    capacity = capacity_tokens_per_month(rung)
    api_value_at_full = capacity * api_usd_per_token
    bought = bought_monthly(rung)

    def breakeven(monthly: float) -> float:
        return monthly / api_value_at_full if api_value_at_full > 0 else float("inf")

    return RungEconomics(
        rung=name,
        monthly_bought=bought,
        monthly_rented=rung.rented_monthly_usd,
        utilization=tokens_per_month / capacity,
        breakeven_utilization_bought=breakeven(bought),
        breakeven_utilization_rented=breakeven(rung.rented_monthly_usd),
    )
