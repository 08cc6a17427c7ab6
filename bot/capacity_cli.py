"""Run ``cibot capacity``: size a model on H200s, or check the policy's private tiers."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar, cast

from bot.kernel.errors import ConfigError, InputError
from bot.kernel.settings import Settings
from policies import capacity
from policies.capacity import ModelFacts, Plan, Request, TierCheck, gb
from policies.loading import load_policy

SUMMARY = """\
{model} on {gpus} x H200: {quant} weights, {kv} KV cache, {context:,}-token context
  GPU memory    {gpu} each (143,771 MiB, as nvidia-smi reports an H200); vLLM takes \
{utilization:.2f}: {budget}
  weights       {weights} in all, {weights_gpu} per GPU  (bf16 {bf16}, fp8 {fp8}, \
int4/mxfp4 {int4})
  overhead      {overhead} per GPU for activations, CUDA graphs and NCCL (--overhead-gib)
  KV cache      {kv_gpu} per GPU{kv_all}
  KV per token  {per_token:,} bytes over all layers; {per_token_gpu:,} on each GPU{shape}
  holds         {tokens:,} tokens: {sequences} sequences of {context:,}
  verdict       {verdict}: {reason}"""
CHECK_LINE = "tiers.{tier} on rung {rung}: {status}"
NOTHING_TO_CHECK = "no private tier names a rung: nothing to check"
T = TypeVar("T", int, float)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``cibot capacity``."""
    parser.add_argument("--model", help="a Hugging Face model id, e.g. openai/gpt-oss-120b")
    parser.add_argument("--gpus", help="H200s in the rung: 1, 2, 4, 8, or a multiple of 8")
    parser.add_argument("--quant", help="weights: bf16, fp8, int4 or mxfp4 (default: the id's)")
    parser.add_argument("--context", help="tokens per sequence (default: the model's native)")
    parser.add_argument(
        "--concurrency",
        help=f"sequences that must fit at --context (default {capacity.MIN_CONCURRENCY})",
    )
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto (bf16) or fp8")
    parser.add_argument(
        "--gpu-memory-utilization",
        default=str(capacity.DEFAULT_UTILIZATION),
        help="share of each GPU's memory vLLM takes (default 0.90, as vLLM's)",
    )
    parser.add_argument(
        "--overhead-gib",
        default=str(capacity.DEFAULT_OVERHEAD_BYTES / 2**30),
        help="per-GPU allowance for activations, CUDA graphs and NCCL (default 4)",
    )
    parser.add_argument("--models", help="a YAML file of more model facts (models.yaml shape)")
    parser.add_argument("--check", action="store_true", help="check the policy's private tiers")
    parser.add_argument("--policy", help="operator policy YAML (default: CIBOT_POLICY or built-in)")


def run(args: argparse.Namespace) -> int:
    """Print one plan and its vllm command, or check the policy; 1 when a check fails."""
    models = load_models(args.models)
    base = base_request(args)
    if args.check:
        return check(args, models, base)
    if not args.model or not args.gpus:
        raise InputError("give --model and --gpus, or --check")
    result = capacity.plan(model_request(args, models, base), models)
    print(render(result))
    print()
    print(capacity.vllm_command(result))
    return 0


def load_models(path: str | None) -> dict[str, ModelFacts]:
    """Return the packaged model facts with an operator's file laid over them."""
    models = capacity.packaged_models()
    if path is None:
        return models
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the models file ({exc.strerror})") from exc
    return {**models, **capacity.parse_models(text, source=path)}


def _number(value: str, flag: str, kind: Callable[[str], T]) -> T:
    """Convert a flag's text to a number, or raise InputError naming the flag."""
    try:
        return kind(value)
    except ValueError as exc:
        raise InputError(f"{flag} {value!r}: not a number") from exc


def _choice(value: str, flag: str, choices: tuple[str, ...]) -> str:
    """Return a flag's value when it is one of the choices, else raise InputError."""
    if value not in choices:
        raise InputError(f"{flag} {value!r}: use one of {', '.join(choices)}")
    return value


def base_request(args: argparse.Namespace) -> Request:
    """Build the memory settings every plan in this run shares."""
    return Request(
        model="",
        gpus=1,
        quant="bf16",
        context=1,
        kv_dtype=cast(
            capacity.KvDtype, _choice(args.kv_cache_dtype, "--kv-cache-dtype", ("auto", "fp8"))
        ),
        utilization=_number(args.gpu_memory_utilization, "--gpu-memory-utilization", float),
        overhead_bytes=int(_number(args.overhead_gib, "--overhead-gib", float) * 2**30),
    )


def model_request(
    args: argparse.Namespace, models: Mapping[str, ModelFacts], base: Request
) -> Request:
    """Build the request the flags describe, with the model's defaults filled in."""
    _, facts = capacity.find_model(args.model, models)
    quant = capacity.quant_of(args.model, facts)
    if args.quant is not None:
        quant = cast(capacity.Quant, _choice(args.quant, "--quant", capacity.QUANTS))
    context = facts.max_context
    if args.context is not None:
        context = _number(args.context, "--context", int)
    concurrency = capacity.MIN_CONCURRENCY
    if args.concurrency is not None:
        concurrency = _number(args.concurrency, "--concurrency", int)
    gpus = _number(args.gpus, "--gpus", int)
    return Request(
        args.model, gpus, quant, context, concurrency, base.kv_dtype, base.utilization,
        base.overhead_bytes,
    )  # fmt: skip


def render(result: Plan) -> str:
    """Explain a plan: memory, weights, KV cache, sequences, verdict and what to change."""
    request, facts = result.request, result.facts
    per_token_gpu = result.sequence_bytes // request.context
    lines = [
        SUMMARY.format(
            model=request.model,
            gpus=request.gpus,
            quant=request.quant,
            kv="bf16" if request.kv_dtype == "auto" else "fp8",
            context=request.context,
            gpu=gb(request.gpu_bytes),
            utilization=request.utilization,
            budget=gb(result.budget_per_gpu),
            weights=gb(result.weights),
            weights_gpu=gb(result.weights / request.gpus),
            bf16=gb(capacity.weight_bytes(facts, "bf16")),
            fp8=gb(capacity.weight_bytes(facts, "fp8")),
            int4=gb(capacity.weight_bytes(facts, "int4")),
            overhead=gb(request.overhead_bytes),
            kv_gpu=gb(max(0.0, result.kv_per_gpu)),
            kv_all=_kv_all(result),
            per_token=capacity.kv_bytes_per_token(
                facts, kv_bytes=capacity.KV_BYTES[request.kv_dtype]
            ),
            per_token_gpu=per_token_gpu,
            shape=_shape(result),
            tokens=result.tokens,
            sequences=result.sequences,
            verdict=result.verdict,
            reason=result.reason,
        )
    ]
    note = capacity.checkpoint_note(result)
    if note:
        lines.append(f"  note          {note}")
    lines.extend(f"  to serve it   {line}" for line in capacity.advice(result, _models(result)))
    return "\n".join(lines)


def _models(result: Plan) -> dict[str, ModelFacts]:
    """Return a catalogue holding just the plan's model, for the advice's re-plans."""
    return {result.key: result.facts}


def _kv_all(result: Plan) -> str:
    """Say how the KV cache adds up over the GPUs: shared, or copied on every rank."""
    if result.request.gpus == 1:
        return ""
    if result.facts.attention == "mla" and result.tp > 1:
        return f" (the MLA latent is copied on each of {result.tp} tensor-parallel ranks)"
    return f", {gb(result.kv_total)} in all"


def _shape(result: Plan) -> str:
    """Say how the per-GPU figure follows from the model's attention."""
    facts = result.facts
    if facts.sliding_layers:
        return (
            f" ({facts.layers - facts.sliding_layers} full layers; {facts.sliding_layers} "
            f"keep a {facts.sliding_window}-token window)"
        )
    return ""


def check(args: argparse.Namespace, models: Mapping[str, ModelFacts], base: Request) -> int:
    """Check every private tier against its rung; print what to change; 1 on a problem."""
    settings = Settings.from_env()
    path = Path(args.policy) if args.policy else settings.policy_path
    policy = load_policy(path, overrides=settings.tier_overrides)
    checks = capacity.check_policy(policy, models, request=base)
    if not checks:
        print(NOTHING_TO_CHECK)
        return 0
    print("\n\n".join(render_check(item) for item in checks))
    return 1 if any(item.problems for item in checks) else 0


def render_check(item: TierCheck) -> str:
    """Explain one tier's check: its problems, the changes that fix them, the command."""
    status = "ok" if not item.problems else f"{len(item.problems)} problem(s)"
    lines = [CHECK_LINE.format(tier=item.tier, rung=item.rung, status=status)]
    lines.extend(f"  problem  {problem}" for problem in item.problems)
    lines.extend(f"  change   {change}" for change in item.advice)
    if item.plan is not None:
        result = item.plan
        lines.append(
            f"  sizing   {gb(result.weights)} of weights, {gb(max(0.0, result.kv_per_gpu))} "
            f"of KV cache per GPU, {result.tokens:,} tokens"
        )
        lines.append("  " + capacity.vllm_command(result).replace("\n", "\n  "))
    return "\n".join(lines)
