"""Size a vLLM deployment: weights, KV cache and concurrent sequences per H200 rung.

Pure policy arithmetic: model facts (policies/models.yaml) and a rung's GPUs in, a plan
out. The memory model follows vLLM's: each GPU gives `gpu_memory_utilization` of its
memory to vLLM; the weights (split evenly over the GPUs), a stated activation and overhead
allowance, and what is left is the KV cache. Simplifications, each stated where it is made:
weights split exactly evenly, KV block rounding and prefix-cache sharing ignored, and a
sliding-window layer holds just its window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from typing import Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from bot.kernel.errors import ConfigError, InputError
from policies.loading import parse_yaml, validation_message
from policies.model import Frozen, Policy

Quant = Literal["bf16", "fp8", "int4", "mxfp4"]
QUANTS: tuple[str, ...] = ("bf16", "fp8", "int4", "mxfp4")
KvDtype = Literal["auto", "fp8"]

# H200 memory as nvidia-smi reports it: 143,771 MiB = 150,754,820,096 bytes (140.4 GiB).
# NVIDIA's "141 GB" is close to GiB; 8 GPUs hold 1.206e12 bytes by this count.
H200_BYTES = 143_771 * 2**20
# Like vLLM's --gpu-memory-utilization default.
DEFAULT_UTILIZATION = 0.90
# Per GPU: peak activations of a prefill chunk, CUDA graphs, NCCL buffers and allocator
# slack. vLLM profiles this at start-up; 4 GiB is what it typically reserves on an H200
# for these models at the default batch token budget. Override with --overhead-gib.
DEFAULT_OVERHEAD_BYTES = 4 * 2**30
# A rung "serves" when it holds the requested concurrency at the requested context; with
# none requested, this many sequences: the Tier default for max_concurrency, since a CI
# bot answers bursts of pushes and fewer slots queue them.
MIN_CONCURRENCY = 8
# Bits per weight. MXFP4 and group-wise int4 (AWQ/GPTQ, group 32 or 128 with a scale)
# both carry about a quarter bit of scales; FP8 block scales (one fp32 per 128x128) are
# under 0.01% and left out.
BITS: Mapping[str, float] = {"bf16": 16.0, "fp8": 8.0, "int4": 4.25, "mxfp4": 4.25}
KV_BYTES: Mapping[str, int] = {"auto": 2, "fp8": 1}  # auto is the model's bf16
# GPUs per node; beyond it a rung pipelines whole nodes (tensor parallel stays in a node).
NODE_GPUS = 8
GPU_STEPS: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32)


class ModelFacts(Frozen):
    """Hold what sizing needs about one model, as its config.json publishes it."""

    match: tuple[str, ...] = Field(min_length=1)
    params_b: float = Field(gt=0)
    active_params_b: float = Field(gt=0)
    bf16_params_b: float = Field(default=0.0, ge=0)
    layers: int = Field(ge=1)
    attention: Literal["gqa", "mla"]
    kv_heads: int | None = Field(default=None, ge=1)
    head_dim: int | None = Field(default=None, ge=1)
    kv_lora_rank: int | None = Field(default=None, ge=1)
    rope_dim: int | None = Field(default=None, ge=0)
    sliding_window: int | None = Field(default=None, ge=1)
    sliding_layers: int = Field(default=0, ge=0)
    native: Quant = "bf16"
    max_context: int = Field(ge=1)
    yarn_context: int | None = None
    vllm_flags: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check_shape(self) -> ModelFacts:
        """Require the attention fields the chosen kind needs, and consistent counts."""
        if self.attention == "gqa" and (self.kv_heads is None or self.head_dim is None):
            raise ValueError("gqa attention needs kv_heads and head_dim")
        if self.attention == "mla" and (self.kv_lora_rank is None or self.rope_dim is None):
            raise ValueError("mla attention needs kv_lora_rank and rope_dim")
        if self.sliding_layers > self.layers:
            raise ValueError("sliding_layers cannot exceed layers")
        if self.sliding_layers and self.sliding_window is None:
            raise ValueError("sliding_layers needs sliding_window")
        if self.active_params_b > self.params_b or self.bf16_params_b > self.params_b:
            raise ValueError("active_params_b and bf16_params_b cannot exceed params_b")
        if self.yarn_context is not None and self.yarn_context < self.max_context:
            raise ValueError("yarn_context cannot be below max_context")
        return self

    @property
    def longest_context(self) -> int:
        """Return the longest context the model serves, with rope scaling if documented."""
        return self.yarn_context or self.max_context


_CATALOGUE = TypeAdapter(dict[str, ModelFacts])


def parse_models(text: str, *, source: str) -> dict[str, ModelFacts]:
    """Parse a models file (`models: {name: facts}`), or raise ConfigError naming the key."""
    data = parse_yaml(text, source=source)
    unknown = sorted(set(data) - {"models"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r}: a models file has only `models`",
            key=unknown[0],
            source=source,
        )
    try:
        return _CATALOGUE.validate_python(data.get("models") or {})
    except ValidationError as exc:
        key, message = validation_message(exc, source=source)
        raise ConfigError(message, key=f"models.{key}", source=source) from exc


def packaged_models() -> dict[str, ModelFacts]:
    """Return the model facts shipped with cibot (policies/models.yaml)."""
    text = resources.files("policies").joinpath("models.yaml").read_text(encoding="utf-8")
    return parse_models(text, source="policies/models.yaml")


def find_model(name: str, models: Mapping[str, ModelFacts]) -> tuple[str, ModelFacts]:
    """Return the entry for a model id or entry name; the longest matching prefix wins."""
    wanted = name.lower().removeprefix("hosted_vllm/")
    best: tuple[int, str] | None = None
    for key, facts in models.items():
        for prefix in (key, *facts.match):
            if wanted.startswith(prefix.lower()) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), key)
    if best is None:
        raise InputError(
            f"no facts for model {name!r}: add it to a models file and pass --models FILE "
            f"(known: {', '.join(sorted(models))})"
        )
    return best[1], models[best[1]]


def quant_of(name: str, facts: ModelFacts) -> Quant:
    """Infer a checkpoint's precision from its id (…-FP8, …-AWQ), else the model's native."""
    lowered = name.lower()
    if "fp8" in lowered:
        return "fp8"
    if any(tag in lowered for tag in ("awq", "gptq", "int4", "w4a16")):
        return "int4"
    return facts.native


def weight_bytes(facts: ModelFacts, quant: Quant) -> float:
    """Return the weights' bytes at a precision; bf16_params_b stay bf16 in every format."""
    quantised = (facts.params_b - facts.bf16_params_b) * 1e9
    return facts.bf16_params_b * 1e9 * 2 + quantised * BITS[quant] / 8


def kv_bytes_per_token(facts: ModelFacts, *, kv_bytes: int = 2) -> int:
    """Return one token's KV cache over all layers, as model cards and papers count it.

    GQA: layers x 2 (K and V) x kv_heads x head_dim x bytes. MLA: layers x (kv_lora_rank +
    rope_dim) x bytes, the one latent vector and decoupled RoPE key that MLA caches.
    Sliding-window layers are counted as full here; kv_bytes_per_sequence accounts for them.
    """
    return facts.layers * _layer_token_bytes(facts, tp=1, kv_bytes=kv_bytes)


def _layer_token_bytes(facts: ModelFacts, *, tp: int, kv_bytes: int) -> int:
    """Return one token's KV cache in one layer on one tensor-parallel rank.

    vLLM shards GQA KV heads over the ranks and replicates them when there are more ranks
    than heads; the MLA latent is shared by every head, so each rank caches all of it.
    """
    if facts.attention == "mla":
        return (facts.kv_lora_rank or 0) * kv_bytes + (facts.rope_dim or 0) * kv_bytes
    heads = max(1, (facts.kv_heads or 1) // tp)
    return 2 * heads * (facts.head_dim or 0) * kv_bytes


def kv_bytes_per_sequence(
    facts: ModelFacts, context: int, *, tp: int, pp: int, kv_bytes: int
) -> int:
    """Return one GPU's KV cache for one sequence of `context` tokens.

    Each pipeline stage holds 1/pp of the layers. A sliding-window layer keeps only its
    window (vLLM's hybrid allocator frees the rest; the prefill chunk in flight is ignored).
    """
    per_token = _layer_token_bytes(facts, tp=tp, kv_bytes=kv_bytes)
    full = facts.layers - facts.sliding_layers
    window = min(context, facts.sliding_window or context)
    total = per_token * (full * context + facts.sliding_layers * window)
    return math.ceil(total / pp)


@dataclass(frozen=True)
class Request:
    """Name what to size: a model on some GPUs at a context and concurrency."""

    model: str
    gpus: int
    quant: Quant
    context: int
    concurrency: int = MIN_CONCURRENCY
    kv_dtype: KvDtype = "auto"
    utilization: float = DEFAULT_UTILIZATION
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES
    gpu_bytes: int = H200_BYTES


@dataclass(frozen=True)
class Plan:
    """Hold the sizing of one request and its verdict."""

    request: Request
    key: str
    facts: ModelFacts
    tp: int
    pp: int
    weights: float  # bytes, all GPUs
    budget_per_gpu: float  # bytes vLLM may use on each GPU
    kv_per_gpu: float  # bytes left for KV cache on each GPU
    sequence_bytes: int  # one sequence at the context, on one GPU
    sequences: int  # concurrent sequences at the context
    verdict: Literal["does not fit", "fits", "serves"]
    reason: str

    @property
    def kv_total(self) -> float:
        """Return the KV cache bytes over all GPUs."""
        return max(0.0, self.kv_per_gpu) * self.request.gpus

    @property
    def tokens(self) -> int:
        """Return how many tokens of context the KV cache holds at the requested context."""
        if self.kv_per_gpu <= 0:
            return 0
        return int(self.kv_per_gpu / self.sequence_bytes * self.request.context)


def parallelism(gpus: int) -> tuple[int, int]:
    """Split GPUs into tensor parallel (within a node) and pipeline parallel (nodes)."""
    if gpus <= NODE_GPUS and gpus & (gpus - 1) == 0:
        return gpus, 1
    if gpus > NODE_GPUS and gpus % NODE_GPUS == 0:
        return NODE_GPUS, gpus // NODE_GPUS
    raise InputError(
        f"--gpus {gpus}: use 1, 2, 4 or 8 GPUs in a node, or a multiple of 8 across nodes"
    )


def plan(request: Request, models: Mapping[str, ModelFacts]) -> Plan:
    """Size a request: what the weights leave for KV cache and how many sequences fit."""
    key, facts = find_model(request.model, models)
    _check_request(request, facts)
    tp, pp = parallelism(request.gpus)
    weights = weight_bytes(facts, request.quant)
    budget = request.gpu_bytes * request.utilization
    kv_per_gpu = budget - weights / request.gpus - request.overhead_bytes
    kv_bytes = KV_BYTES[request.kv_dtype]
    sequence = kv_bytes_per_sequence(facts, request.context, tp=tp, pp=pp, kv_bytes=kv_bytes)
    sequences = int(kv_per_gpu // sequence) if kv_per_gpu > 0 else 0
    verdict, reason = _verdict(request, weights, budget, sequences)
    return Plan(
        request, key, facts, tp, pp, weights, budget, kv_per_gpu, sequence, sequences,
        verdict, reason,
    )  # fmt: skip


def _check_request(request: Request, facts: ModelFacts) -> None:
    """Refuse a request the model or the hardware cannot describe."""
    if request.gpus < 1:
        raise InputError(f"--gpus {request.gpus}: need at least one GPU")
    if not 0 < request.utilization <= 1:
        raise InputError(f"--gpu-memory-utilization {request.utilization}: use (0, 1]")
    if request.concurrency < 1:
        raise InputError(f"--concurrency {request.concurrency}: need at least one sequence")
    if not 1 <= request.context <= facts.longest_context:
        raise InputError(
            f"--context {request.context}: {request.model} serves 1 to "
            f"{facts.longest_context} tokens"
        )


def _verdict(
    request: Request, weights: float, budget: float, sequences: int
) -> tuple[Literal["does not fit", "fits", "serves"], str]:
    """Say whether the rung fails to load, only fits, or serves the requested load."""
    per_gpu = weights / request.gpus + request.overhead_bytes
    if per_gpu > budget:
        return "does not fit", (
            f"weights and overhead take {gb(per_gpu)} per GPU, over the {gb(budget)} "
            f"vLLM may use at {request.utilization:.2f}"
        )
    if sequences == 0:
        return "does not fit", f"the KV cache cannot hold one {request.context:,}-token sequence"
    if sequences < request.concurrency:
        return "fits", (
            f"{sequences} concurrent {request.context:,}-token sequences, "
            f"short of {request.concurrency}"
        )
    return "serves", f"{sequences} concurrent {request.context:,}-token sequences"


def gb(value: float) -> str:
    """Format bytes as decimal gigabytes."""
    return f"{value / 1e9:,.1f} GB"


def largest_context(request: Request, models: Mapping[str, ModelFacts]) -> int:
    """Return the longest context (a multiple of 1024) at which the concurrency fits, or 0."""
    low, high = 0, request.context // 1024
    while low < high:
        middle = (low + high + 1) // 2
        if plan(replace(request, context=middle * 1024), models).verdict == "serves":
            low = middle
        else:
            high = middle - 1
    return low * 1024


def fewest_gpus(request: Request, models: Mapping[str, ModelFacts]) -> int | None:
    """Return the fewest GPUs (in GPU_STEPS) that serve the request, or None."""
    for gpus in GPU_STEPS:
        if plan(replace(request, gpus=gpus), models).verdict == "serves":
            return gpus
    return None


def advice(result: Plan, models: Mapping[str, ModelFacts]) -> list[str]:
    """List the changes, any one of which moves a plan towards serving its request."""
    if result.verdict == "serves":
        return []
    request = result.request
    lines: list[str] = []
    if result.sequences:
        lines.append(f"lower max_concurrency to {result.sequences}")
    context = largest_context(request, models)
    if context:
        lines.append(f"lower context_window to {context:,} to keep {request.concurrency} sequences")
    if request.kv_dtype == "auto":
        fp8 = plan(replace(request, kv_dtype="fp8"), models)
        lines.append(f"serve an fp8 KV cache: {fp8.sequences} sequences ({fp8.verdict})")
    gpus = fewest_gpus(request, models)
    if gpus is not None and gpus != request.gpus:
        lines.append(f"serve it on {gpus} GPUs")
    return lines


def vllm_command(result: Plan) -> str:
    """Return the `vllm serve` command for a plan, one flag group per line."""
    request, facts = result.request, result.facts
    name = request.model.removeprefix("hosted_vllm/")
    if name.lower() == result.key.lower():
        name = facts.match[0]
    flags = [f"--tensor-parallel-size {result.tp}"]
    if result.pp > 1:
        flags.append(f"--pipeline-parallel-size {result.pp}")
    if request.gpus > 1 and facts.active_params_b < facts.params_b:
        flags.append("--enable-expert-parallel")
    seqs = request.concurrency if result.verdict == "serves" else max(1, result.sequences)
    flags += [
        f"--max-model-len {request.context}",
        f"--gpu-memory-utilization {request.utilization:.2f}",
        f"--max-num-seqs {seqs}",
    ]
    flags += _precision_flags(request, facts, name)
    if request.context > facts.max_context:
        flags.append(_yarn_flag(facts))
    flags += facts.vllm_flags
    return " \\\n  ".join([f"vllm serve {name}", *flags])


def _precision_flags(request: Request, facts: ModelFacts, name: str) -> list[str]:
    """Return --kv-cache-dtype and --quantization as vLLM spells them.

    A quantised checkpoint carries its own quantization_config, which vLLM reads; only
    FP8 can be applied at load time to a bf16 checkpoint (vLLM's online dynamic FP8).
    """
    flags = ["--kv-cache-dtype fp8"] if request.kv_dtype == "fp8" else []
    if request.quant == "fp8" and quant_of(name, facts) == "bf16":
        flags.append("--quantization fp8")
    return flags


def _yarn_flag(facts: ModelFacts) -> str:
    """Return the rope-scaling override that stretches the native context with YaRN."""
    factor = (facts.yarn_context or facts.max_context) / facts.max_context
    scaling = (
        f'{{"rope_scaling": {{"rope_type": "yarn", "factor": {factor:.1f}, '
        f'"original_max_position_embeddings": {facts.max_context}}}}}'
    )
    return f"--hf-overrides '{scaling}'"


def checkpoint_note(result: Plan) -> str | None:
    """Say which checkpoint to download when the precision asked for is not the model id's."""
    request = result.request
    served = quant_of(request.model, result.facts)
    if request.quant == served or (request.quant == "fp8" and served == "bf16"):
        return None
    return (
        f"{request.model} ships {served}; serve a {request.quant} checkpoint of it "
        "(vLLM reads the quantization from its config)"
    )


@dataclass(frozen=True)
class TierCheck:
    """Hold what one private tier asks of its rung and what the rung can do."""

    tier: str
    rung: str
    plan: Plan | None
    problems: tuple[str, ...]
    advice: tuple[str, ...]


def check_policy(
    policy: Policy, models: Mapping[str, ModelFacts], *, request: Request
) -> list[TierCheck]:
    """Compare every private tier that names a rung with what that rung can serve.

    `request` carries the memory settings (utilisation, overhead, KV dtype); the model,
    GPUs, context and concurrency come from the tier and its rung.
    """
    checks: list[TierCheck] = []
    for name in policy.private_tiers():
        tier = policy.tiers[name]
        if tier.rung is not None:
            checks.append(_check_tier(policy, name, models, request))
    return checks


def _check_tier(
    policy: Policy, name: str, models: Mapping[str, ModelFacts], base: Request
) -> TierCheck:
    """Size one private tier on its rung and list what is wrong with its settings."""
    tier = policy.tiers[name]
    rung_name = tier.rung or ""
    rung = policy.rungs[rung_name]
    model = tier.models[0].removeprefix("hosted_vllm/")
    problems = list(_model_mismatch(name, model, rung.model))
    try:
        key, facts = find_model(model, models)
    except InputError as exc:
        return TierCheck(name, rung_name, None, (*problems, str(exc)), ())
    context = min(tier.context_window, facts.longest_context)
    if tier.context_window > facts.longest_context:
        problems.append(
            f"context_window {tier.context_window:,} is over {key}'s "
            f"{facts.longest_context:,}: lower it to {facts.longest_context:,}"
        )
    request = replace(
        base, model=model, gpus=rung.gpus, quant=quant_of(model, facts), context=context,
        concurrency=tier.max_concurrency,
    )  # fmt: skip
    result = plan(request, models)
    if result.verdict != "serves":
        problems.append(
            f"max_concurrency {tier.max_concurrency} at context_window {context:,}: "
            f"{result.verdict}: {result.reason}"
        )
    return TierCheck(name, rung_name, result, tuple(problems), tuple(advice(result, models)))


def _model_mismatch(tier: str, model: str, rung_model: str) -> Iterable[str]:
    """Yield a problem when a tier serves a different model than its rung names."""
    if model.lower() != rung_model.removeprefix("hosted_vllm/").lower():
        yield f"tiers.{tier} serves {model} but its rung names {rung_model}: make them agree"
