"""Test `cibot capacity`: KV cache against published figures, plans, --check and the CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from bot.cli import main
from bot.kernel.errors import ConfigError
from policies import capacity
from policies.capacity import Request
from policies.loading import default_policy_text, load_policy, parse_yaml

MODELS = capacity.packaged_models()
QWEN_FP8 = "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"

# Published KV cache per token, bf16. DeepSeek's "Insights into DeepSeek-V3: Scaling
# Challenges and Reflections on Hardware for AI Architectures" (ISCA 2025,
# https://arxiv.org/abs/2505.09343), table 1: DeepSeek-V3 (MLA) 70.272 KB, Qwen-2.5 72B
# (GQA) 327.680 KB, LLaMA-3.1 405B (GQA) 516.096 KB per token. The two GQA models are
# added through an operator models file, as an operator would add them.
PUBLISHED = {"DeepSeek-V3": 70_272, "Qwen2.5-72B": 327_680, "Llama-3.1-405B": 516_096}
OPERATOR_MODELS = """\
models:
  Qwen2.5-72B:
    # https://huggingface.co/Qwen/Qwen2.5-72B-Instruct/blob/main/config.json
    match: [Qwen/Qwen2.5-72B]
    params_b: 72.7
    active_params_b: 72.7
    layers: 80
    attention: gqa
    kv_heads: 8
    head_dim: 128
    max_context: 32768
  Llama-3.1-405B:
    # https://huggingface.co/meta-llama/Llama-3.1-405B-Instruct/blob/main/config.json
    match: [meta-llama/Llama-3.1-405B]
    params_b: 405.9
    active_params_b: 405.9
    layers: 126
    attention: gqa
    kv_heads: 8
    head_dim: 128
    max_context: 131072
"""
README_MID = """
tiers:
  mid:
    models: [hosted_vllm/Qwen/Qwen3-235B-A22B-Instruct-2507-FP8]
    private: true
    api_base: http://gpu-2:8000/v1
    context_window: 65536
    max_concurrency: 32
    rung: 2xH200
"""


def request(model: str, gpus: int, context: int, concurrency: int = 8) -> Request:
    """Describe a model on some H200s at the default memory settings."""
    _, facts = capacity.find_model(model, MODELS)
    return Request(model, gpus, capacity.quant_of(model, facts), context, concurrency)


@pytest.mark.parametrize("key", ["DeepSeek-V3", "Qwen2.5-72B", "Llama-3.1-405B"])
def test_kv_per_token_matches_published_figures(key: str) -> None:
    models = {**MODELS, **capacity.parse_models(OPERATOR_MODELS, source="extra.yaml")}
    figure = capacity.kv_bytes_per_token(models[key])
    assert abs(figure - PUBLISHED[key]) / PUBLISHED[key] < 0.10


def test_kv_per_token_from_the_configs() -> None:
    """Qwen3-235B-A22B: 94 x 2 x 4 x 128 x 2; MLA models: 61 x (512 + 64) x 2; fp8 halves."""
    assert capacity.kv_bytes_per_token(MODELS["Qwen3-235B-A22B"]) == 192_512
    assert capacity.kv_bytes_per_token(MODELS["Kimi-K2"]) == 70_272
    assert capacity.kv_bytes_per_token(MODELS["gpt-oss-120b"], kv_bytes=1) == 36_864


def test_gpt_oss_weights_match_the_model_card_checkpoint() -> None:
    """OpenAI's model card: the MXFP4 checkpoint of gpt-oss-120b is 60.8 GiB."""
    mxfp4 = capacity.weight_bytes(MODELS["gpt-oss-120b"], "mxfp4")
    assert abs(mxfp4 / 2**30 - 60.8) < 0.5
    assert capacity.weight_bytes(MODELS["gpt-oss-120b"], "bf16") == pytest.approx(233.66e9)


def test_sliding_window_layers_hold_only_their_window() -> None:
    facts = MODELS["gpt-oss-120b"]
    long = capacity.kv_bytes_per_sequence(facts, 131_072, tp=1, pp=1, kv_bytes=2)
    full = 18 * 2048 * 131_072 + 18 * 2048 * 128  # 18 full layers, 18 windowed
    assert long == full
    assert long < capacity.kv_bytes_per_token(facts) * 131_072 * 0.51


def test_qwen3_fp8_on_two_h200s_leaves_about_30_gb() -> None:
    result = capacity.plan(request(QWEN_FP8, 2, 65_536, 32), MODELS)
    assert 25e9 < result.kv_total < 32e9
    assert 130_000 < result.tokens < 170_000
    assert result.sequences == 2 and result.verdict == "fits"


def test_kimi_k2_does_not_fit_eight_h200s_at_128k_but_serves_on_sixteen() -> None:
    eight = capacity.plan(request("moonshotai/Kimi-K2-Instruct", 8, 131_072), MODELS)
    assert eight.weights > 1e12
    assert eight.verdict == "does not fit"
    sixteen = capacity.plan(replace(eight.request, gpus=16), MODELS)
    assert sixteen.verdict == "serves"
    assert capacity.fewest_gpus(eight.request, MODELS) == 16


def test_mla_latent_is_replicated_on_every_tensor_parallel_rank() -> None:
    result = capacity.plan(request("deepseek-ai/DeepSeek-V3.1", 8, 131_072), MODELS)
    assert result.sequence_bytes == 70_272 * 131_072
    assert result.verdict == "fits" and 1 <= result.sequences < 8


def test_advice_figures_serve_when_applied() -> None:
    result = capacity.plan(request(QWEN_FP8, 2, 65_536, 32), MODELS)
    context = capacity.largest_context(result.request, MODELS)
    assert capacity.plan(replace(result.request, context=context), MODELS).verdict == "serves"
    more = replace(result.request, context=context + 1024)
    assert capacity.plan(more, MODELS).verdict != "serves"


def readme_policy(tmp_path: Path) -> Path:
    """Write the default policy with `mid` made private on 2xH200, as the README once showed
    it: 32 sequences of 64k, which the rung cannot hold."""
    data = parse_yaml(default_policy_text(), source="default.yaml")
    data["tiers"]["mid"] = yaml.safe_load(README_MID)["tiers"]["mid"]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_check_flags_the_readme_private_mid_tier(tmp_path: Path) -> None:
    policy = load_policy(readme_policy(tmp_path))
    checks = capacity.check_policy(policy, MODELS, request=request(QWEN_FP8, 1, 1))
    mid = next(item for item in checks if item.tier == "mid")
    assert mid.plan is not None and mid.plan.sequences == 2
    assert any("max_concurrency 32 at context_window 65,536" in p for p in mid.problems)
    assert "lower max_concurrency to 2" in mid.advice


def test_check_passes_a_tier_its_rung_serves(tmp_path: Path) -> None:
    data = parse_yaml(default_policy_text(), source="default.yaml")
    data["tiers"]["local"].update(context_window=32768, max_concurrency=16)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    [local] = capacity.check_policy(load_policy(path), MODELS, request=request(QWEN_FP8, 1, 1))
    assert local.problems == () and local.plan is not None and local.plan.verdict == "serves"
    assert cli(capsys=None, argv=["--check", "--policy", str(path)])[0] == 0


def cli(capsys: pytest.CaptureFixture[str] | None, argv: list[str]) -> tuple[int, str, str]:
    """Run `cibot capacity` in process; return its exit code, stdout and stderr."""
    code = main(["capacity", *argv])
    if capsys is None:
        return code, "", ""
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_check_exits_1_and_says_what_to_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, ["--check", "--policy", str(readme_policy(tmp_path))])
    assert code == 1
    assert "tiers.mid on rung 2xH200" in out
    assert "change   lower max_concurrency to 2" in out
    assert "tiers.local on rung 1xH200" in out  # 64 x 131,072 tokens is 13 sequences' worth


def test_cli_prints_the_plan_and_vllm_command(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", QWEN_FP8, "--gpus", "2", "--context", "65536", "--concurrency", "2"]
    code, out, _ = cli(capsys, [*argv, "--kv-cache-dtype", "fp8"])
    assert code == 0
    assert "verdict       serves: 4 concurrent 65,536-token sequences" in out
    command = out[out.index("vllm serve") :].replace("\\\n", "").split()
    assert command[:3] == ["vllm", "serve", QWEN_FP8]
    flags = parse_flags(command[3:])
    assert "--enable-expert-parallel" in flags
    assert flags["--tensor-parallel-size"] == "2"
    assert flags["--max-model-len"] == "65536"
    assert flags["--gpu-memory-utilization"] == "0.90"
    assert flags["--kv-cache-dtype"] == "fp8"
    assert flags["--max-num-seqs"] == "2"
    assert "--quantization" not in flags  # the FP8 checkpoint carries its own config


def parse_flags(words: list[str]) -> dict[str, str]:
    """Map each --flag to its value, or to "" when the next word is another flag."""
    flags: dict[str, str] = {}
    for index, word in enumerate(words):
        if word.startswith("--"):
            following = words[index + 1] if index + 1 < len(words) else "--"
            flags[word] = "" if following.startswith("--") else following
    return flags


def test_cli_adds_online_fp8_and_yarn_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", "Qwen/Qwen3-235B-A22B", "--gpus", "4", "--quant", "fp8"]
    code, out, _ = cli(capsys, [*argv, "--context", "131072", "--concurrency", "1"])
    assert code == 0
    assert "--quantization fp8" in out
    assert '"rope_type": "yarn", "factor": 4.0' in out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--gpus", "2"], "give --model and --gpus, or --check"),
        (["--model", "acme/unknown-7b", "--gpus", "1"], "no facts for model"),
        (["--model", QWEN_FP8, "--gpus", "two"], "--gpus 'two': not a number"),
        (["--model", QWEN_FP8, "--gpus", "3"], "--gpus 3"),
        (["--model", QWEN_FP8, "--gpus", "2", "--quant", "fp4"], "--quant 'fp4'"),
        (["--model", "openai/gpt-oss-120b", "--gpus", "1", "--context", "200000"], "131072"),
        (["--check", "--models", "missing.yaml"], "cannot read the models file"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, argv)
    assert code == 2 and out == ""
    assert err.startswith("cibot capacity: ") and err.count("\n") == 1, err
    assert words in err


def test_a_malformed_models_file_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  x: {match: [a/x], params_b: 1, layers: 2, attention: gqa}\n")
    with pytest.raises(ConfigError, match="x"):
        capacity.parse_models(bad.read_text(), source=str(bad))


def test_the_readmes_private_mid_tier_is_one_its_rung_serves(tmp_path: Path) -> None:
    """The 2xH200 tier the README tells operators to paste passes `cibot capacity --check`."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("Then make `mid` private in your policy:", 1)[1]
    snippet = block.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = parse_yaml(default_policy_text(), source="default.yaml")
    data["tiers"]["mid"] = yaml.safe_load(snippet)["tiers"]["mid"]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    checks = capacity.check_policy(load_policy(path), MODELS, request=request(QWEN_FP8, 1, 1))
    mid = next(item for item in checks if item.tier == "mid")
    assert mid.problems == () and mid.plan is not None and mid.plan.verdict == "serves"
