"""SVF: decomposition and its cache, experts (init, save, load, checks), and putting experts
into a model, whole or one per batch row. Fast tests use a tiny random Llama; ``integration``
ones use the embedded SmolLM2 (its last two layers' MLPs, decomposed into a temporary cache).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
import weakref

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mafl_graph.svf import (  # noqa: E402
    DEFAULT_TARGETS,
    SVFExpert,
    decompose,
    merged_weights,
    mixed_experts,
    use_expert,
)
from mafl_graph.svf import decomposition as svf_decomposition  # noqa: E402
from mafl_graph.svf.expert import CONFIG_FILE, EXPERT_FILE  # noqa: E402

METHODS = ("factors", "correction", "merged")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these models are small, and on a machine whose cores are busy
    several threads wait on each other (a 135M forward of 4 short rows: 2 s, not 0.1 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_llama(seed: int = 0, intermediate: int = 48, layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny(tmp_path):
    model = tiny_llama()
    return model, decompose(model, cache_dir=tmp_path, progress=False)


# ------------------------------------------------------------------ decomposition (fast)


def test_decomposition_reconstructs_the_weights(tiny):
    model, decomposition = tiny
    assert len(decomposition.names) == 9  # 3 layers x gate, up, down
    assert decomposition.targets == tuple(sorted(DEFAULT_TARGETS))
    for name in decomposition.names:
        weight = model.get_submodule(name).weight
        out, inp = weight.shape
        k = min(out, inp)
        u, s, v = decomposition.u[name], decomposition.s[name], decomposition.v[name]
        assert (u.shape, s.shape, v.shape) == ((out, k), (k,), (inp, k))
        assert torch.all(s[:-1] >= s[1:])
        assert torch.allclose(decomposition.weight(name), weight, atol=1e-6)


def test_layer_subset_and_other_targets(tmp_path):
    model = tiny_llama()
    last_two = decompose(model, layers=range(-2, 0), cache_dir=tmp_path, progress=False)
    assert last_two.layers == (1, 2)
    assert {n.split(".")[2] for n in last_two.names} == {"1", "2"}
    attention = decompose(
        model, targets=["q_proj", "o_proj"], layers=[0], cache_dir=tmp_path, progress=False
    )
    assert attention.names == ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.o_proj")
    assert attention.fingerprint != last_two.fingerprint
    assert len(list((tmp_path / "svf").glob("*.safetensors"))) == 2


def test_unknown_targets_and_layers_are_refused(tmp_path):
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"named 'qkv_proj'.*down_proj, gate_proj, k_proj"):
        decompose(model, targets=["gate_proj", "qkv_proj"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"Layer 3 is out of range: the model has 3 layers"):
        decompose(model, layers=[3], cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"'lm_head' has no module in layers"):
        decompose(model, targets=["lm_head"], layers=[0], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="non-empty list"):
        decompose(model, targets="gate_proj", cache_dir=tmp_path)


def test_a_corrupt_cache_file_is_computed_again(tmp_path, caplog):
    model = tiny_llama(seed=5)
    first = decompose(model, cache_dir=tmp_path, progress=False)
    path, s = first.path, dict(first.s)
    assert path is not None and path.parent == tmp_path / "svf"
    del first
    gc.collect()
    path.write_bytes(path.read_bytes()[:1000])
    again = decompose(model, cache_dir=tmp_path, progress=False)
    assert "unreadable SVD cache" in caplog.text
    assert all(torch.equal(again.s[n], s[n]) for n in s)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging file left


# ---------------------------------------------------------------------- experts (fast)


def test_expert_init_statistics_and_seeding(tiny):
    _, decomposition = tiny
    state = torch.get_rng_state()
    expert = SVFExpert.init(decomposition, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # its own generator
    z = torch.cat([t.detach() for t in expert.parameters()])
    assert z.numel() == sum(min(shape) for shape in decomposition.shapes.values())
    assert abs(z.mean().item() - 0.1) < 0.003 and abs(z.std().item() - 0.01) < 0.003
    assert all(t.requires_grad and t.dtype == torch.float32 for t in expert.parameters())
    same, other = SVFExpert.init(decomposition, seed=3), SVFExpert.init(decomposition, seed=4)
    assert all(torch.equal(same.z[n], expert.z[n]) for n in expert.names)
    assert not torch.equal(other.z[expert.names[0]], expert.z[expert.names[0]])
    assert expert.settings["init"] == {"seed": 3, "mean": 0.1, "std": 0.01}
    assert not expert.is_identity() and SVFExpert.identity(decomposition).is_identity()


def test_multipliers_keep_the_sum_of_singular_values(tiny):
    _, decomposition = tiny
    expert = SVFExpert.init(decomposition, std=1.0)
    for name in expert.names:
        s = decomposition.s[name]
        kept = (s * expert.multipliers(name, s)).sum()
        assert torch.allclose(kept, s.sum())


def test_save_and_load_round_trip(tiny, tmp_path):
    _, decomposition = tiny
    expert = SVFExpert.init(decomposition, seed=1, settings={"lr": 2e-3, "task": "arithmetic"})
    folder = expert.save(tmp_path / "expert")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, EXPERT_FILE]
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["base"] == {"name": "LlamaForCausalLM", "fingerprint": decomposition.fingerprint}
    assert config["shapes"]["model.layers.0.mlp.down_proj"] == [32, 48]
    loaded = SVFExpert.load(folder, decomposition)
    assert all(torch.equal(loaded.z[n], expert.z[n].detach()) for n in expert.names)
    assert loaded.settings == expert.settings and loaded.layers == expert.layers
    assert all(t.requires_grad for t in loaded.parameters())
    assert SVFExpert.load(folder / EXPERT_FILE).names == expert.names  # a file in it works too
    expert.settings["when"] = object()
    with pytest.raises(ValueError, match="settings must be JSON-serialisable"):
        expert.save(tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_an_expert_for_another_model_or_targets_is_refused(tiny, tmp_path):
    _, decomposition = tiny
    folder = SVFExpert.init(decomposition).save(tmp_path / "expert")
    wider = decompose(tiny_llama(intermediate=64), cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"gate_proj is \(48, 32\) but the base's is \(64, 32\)"):
        SVFExpert.load(folder, wider)
    attention = decompose(tiny_llama(), targets=["q_proj"], cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"targets \['down_proj', 'gate_proj', 'up_proj'\]"):
        SVFExpert.load(folder, attention)
    other = decompose(tiny_llama(seed=1), cache_dir=tmp_path, progress=False)
    with pytest.raises(
        ValueError, match=r"made for base 'LlamaForCausalLM' \(weights [0-9a-f]{12}"
    ):
        SVFExpert.load(folder, other)


def test_a_corrupt_or_incomplete_expert_is_refused(tiny, tmp_path):
    _, decomposition = tiny
    folder = SVFExpert.init(decomposition).save(tmp_path / "expert")
    weights, config = folder / EXPERT_FILE, folder / CONFIG_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is truncated or corrupt"):
        SVFExpert.load(folder)
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="is truncated or corrupt"):
        SVFExpert.load(folder)
    weights.write_bytes(data)
    saved = json.loads(config.read_text())
    config.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable or corrupt"):
        SVFExpert.load(folder)
    saved["shapes"]["model.layers.0.mlp.up_proj"] = [48, 40]
    config.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="up_proj should have 40 values"):
        SVFExpert.load(folder)
    config.unlink()
    with pytest.raises(ValueError, match="is not an SVF expert: it has no svf_config.json"):
        SVFExpert.load(folder)
    with pytest.raises(FileNotFoundError, match="No SVF expert at"):
        SVFExpert.load(tmp_path / "missing")


def test_use_expert_refuses_a_model_of_other_shapes(tiny):
    _, decomposition = tiny
    expert = SVFExpert.init(decomposition)
    other = tiny_llama(intermediate=64)
    with (
        pytest.raises(ValueError, match=r"should be Linear \(48, 32\), found Linear \(64, 32\)"),
        use_expert(other, decomposition, expert),
    ):
        pass


def test_merged_weights_of_a_constant_z_are_the_base_weights(tiny):
    model, decomposition = tiny
    for value in (-2.0, 0.1, 3.0):
        weights = merged_weights(decomposition, SVFExpert.identity(decomposition, value=value))
        for name, weight in weights.items():
            assert torch.allclose(weight, model.get_submodule(name).weight, atol=1e-6)


def test_importing_svf_does_not_import_torch():
    code = "import sys, mafl_graph.svf; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# ---------------------------------------------------------- the embedded model (integration)


@pytest.fixture(scope="module")
def smol(engine, tmp_path_factory):
    """A fresh view of the embedded model's weights (never the engine's own modules, which
    hold the LoRA adapters other tests loaded), and the decomposition of its last two layers'
    MLPs in a temporary cache."""
    from mafl_graph.local.loading import prepare_model_dir, shared_base

    model = shared_base(prepare_model_dir("smollm2"), "float32")
    start = time.perf_counter()
    decomposition = decompose(
        model, layers=range(-2, 0), cache_dir=tmp_path_factory.mktemp("svf"), progress=False
    )
    print(f"SmolLM2 decomposition, 6 matrices: {time.perf_counter() - start:.2f} s")
    prompts = [
        "What is 7 plus 5? Answer:",
        "Name a bright colour, please.",
        "Two times three is equal to",
        "Say hello to my friend Ana.",
    ]
    ids = torch.tensor([engine.tokenizer(p)["input_ids"][:6] for p in prompts])  # no padding
    with torch.no_grad():
        base = model(ids).logits
    return model, decomposition, ids, base


@pytest.mark.integration
def test_cached_decomposition_loads_fast_and_equal(smol, monkeypatch):
    model, decomposition, _, _ = smol
    root = decomposition.path.parent.parent
    start = time.perf_counter()
    assert decompose(model, layers=range(-2, 0), cache_dir=root) is decomposition
    held = time.perf_counter() - start
    # Forget the in-process copy (the fixture holds it) so that the file is read.
    monkeypatch.setattr(svf_decomposition, "_memo", weakref.WeakValueDictionary())
    start = time.perf_counter()
    again = decompose(model, layers=range(-2, 0), cache_dir=root)
    seconds = time.perf_counter() - start
    print(f"cached decomposition: {seconds:.3f} s from disk, {held:.3f} s in process")
    assert again is not decomposition and again.path == decomposition.path
    assert seconds < 1.0
    for name in decomposition.names:
        for part in ("u", "s", "v"):
            assert torch.equal(getattr(again, part)[name], getattr(decomposition, part)[name])


@pytest.mark.integration
def test_a_constant_z_gives_the_base_logits(smol):
    model, decomposition, ids, base = smol
    for value in (0.1, 4.0):
        with (
            torch.no_grad(),
            use_expert(model, decomposition, SVFExpert.identity(decomposition, value=value)),
        ):
            logits = model(ids).logits
        assert torch.allclose(logits, base, atol=2e-3), (logits - base).abs().max()


@pytest.mark.integration
def test_an_expert_applied_then_removed_restores_the_base_exactly(smol):
    model, decomposition, ids, base = smol
    expert = SVFExpert.init(decomposition, seed=1, std=1.0)
    name = decomposition.names[0]
    original = model.get_submodule(name).weight
    with torch.no_grad(), use_expert(model, decomposition, expert) as weights:
        assert torch.equal(model.state_dict()[f"{name}.weight"], weights[name])
        logits = model(ids).logits
    assert (logits - base).abs().max() > 0.1  # the expert changed something
    assert model.get_submodule(name).weight is original
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base)


@pytest.mark.integration
@pytest.mark.parametrize("method", METHODS)
def test_mixed_batch_rows_match_their_expert_alone(smol, method):
    model, decomposition, ids, base = smol
    first = SVFExpert.init(decomposition, seed=1, std=1.0)
    second = SVFExpert.init(decomposition, seed=2, std=1.0)
    rows = [first, None, second, first]
    with torch.no_grad():
        alone = {}
        for expert in (first, second):
            with use_expert(model, decomposition, expert):
                alone[id(expert)] = model(ids).logits
        with mixed_experts(model, decomposition, rows, method=method):
            mixed = model(ids).logits
            with pytest.raises(ValueError, match="batch of 2 rows but mixed_experts was given 4"):
                model(ids[:2])
    for i, expert in enumerate(rows):
        want = base[i] if expert is None else alone[id(expert)][i]
        assert torch.allclose(mixed[i], want, atol=2e-3), (i, (mixed[i] - want).abs().max())
    if method == "correction":
        assert torch.equal(mixed[1], base[1])  # a zero correction, bit for bit
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base)  # forwards restored


@pytest.mark.integration
@pytest.mark.parametrize("method", ["use_expert", *METHODS])
def test_gradients_flow_to_z_only(smol, method):
    model, decomposition, ids, _ = smol
    first, second = SVFExpert.init(decomposition, seed=1), SVFExpert.init(decomposition, seed=2)
    if method == "use_expert":
        experts, context = [first], use_expert(model, decomposition, first)
    else:
        experts = [first, second]
        context = mixed_experts(model, decomposition, [first, None, second, None], method=method)
    with context:
        logits = model(ids).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    for expert in experts:
        for z in expert.parameters():
            assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    tensors = [*decomposition.u.values(), *decomposition.s.values(), *decomposition.v.values()]
    assert all(t.grad is None and not t.requires_grad for t in tensors)


def test_a_bfloat16_model_takes_experts_in_its_own_dtype(tmp_path):
    model = tiny_llama().to(torch.bfloat16)
    decomposition = decompose(model, cache_dir=tmp_path, progress=False)
    expert = SVFExpert.init(decomposition, std=1.0)
    ids = torch.arange(12).view(2, 6)
    with torch.no_grad():
        base = model(ids).logits
        with use_expert(model, decomposition, SVFExpert.identity(decomposition)) as weights:
            assert all(w.dtype == torch.bfloat16 for w in weights.values())
            same = model(ids).logits
        with use_expert(model, decomposition, expert):
            alone = model(ids).logits
        changed = (alone - base).abs().max().item()
        assert changed > 0.01
        for method in METHODS:
            with mixed_experts(model, decomposition, [None, expert], method=method):
                mixed = model(ids).logits
            assert mixed.dtype == torch.bfloat16
            assert torch.allclose(mixed[0], base[0], atol=changed / 5), method
            assert torch.allclose(mixed[1], alone[1], atol=changed / 5), method
    assert torch.allclose(same, base, atol=changed / 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_cuda_model_takes_experts_on_its_device(tmp_path):
    model = tiny_llama().cuda()
    decomposition = decompose(model, cache_dir=tmp_path, progress=False)  # factors on the CPU
    expert = SVFExpert.init(decomposition, std=1.0)
    ids = torch.arange(12, device="cuda").view(2, 6)
    with use_expert(model, decomposition, expert) as weights:
        assert all(w.device.type == "cuda" for w in weights.values())
        alone = model(ids).logits
    for method in METHODS:
        with mixed_experts(model, decomposition, [None, expert], method=method):
            mixed = model(ids).logits
        assert torch.allclose(mixed[1], alone[1].detach(), atol=1e-4), method
    mixed[1].sum().backward()
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in expert.parameters())
