"""Video encoders: shapes, input scaling, frozen BatchNorm, checkpointing equivalence,
meta / fake-tensor builds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmark_loader import load_benchmark
from lofi.errors import OptionError
from lofi.models.encoders import ENCODERS, build_encoder

POLICIES = ("none", "block", "blocks:1", "blocks:5", "chunk:1", "chunk:2", "offload")


def _clips(b=1, tr=2, f=2, sr=32, seed=0, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, tr, f, 3, sr, sr), generator=g, dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.to(dtype) / 255.0


def _train_step(encoder, clips):
    """Forward, a loss that weighs every output differently, backward; returns
    (output, grads by name, buffers by name)."""
    encoder.train()
    encoder.zero_grad(set_to_none=True)
    out = encoder(clips)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters()}
    buffers = {n: b.clone() for n, b in encoder.named_buffers()}
    return out.detach(), grads, buffers


def _assert_same(run_a, run_b, atol=1e-9):
    out_a, grads_a, bufs_a = run_a
    out_b, grads_b, bufs_b = run_b
    assert torch.allclose(out_a, out_b, atol=atol, rtol=1e-7)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=atol, rtol=1e-7), name
    for name in bufs_a:
        assert torch.allclose(bufs_a[name].double(), bufs_b[name].double(), atol=atol), name


@pytest.mark.parametrize("name, channels", [("tsm_r18", 512), ("tsm_r34", 512), ("tsm_r50", 2048), ("r2plus1d_18", 512)])
def test_output_shape_uint8_and_float(name, channels):
    torch.manual_seed(0)
    encoder = build_encoder(name).eval()
    assert encoder.out_channels == channels and encoder.name == name
    assert not any(k.startswith("fc.") for k in encoder.state_dict())
    with torch.no_grad():
        from_uint8 = encoder(_clips(b=2, tr=3))
        from_float = encoder(_clips(b=2, tr=3, dtype=torch.float32))
    assert from_uint8.shape == (2, channels, 3)
    # same values up to float32 rounding of two scaling orders (x/255 before or inside)
    assert torch.allclose(from_uint8, from_float, rtol=1e-4, atol=1e-5 * from_float.abs().max().item())


@pytest.mark.parametrize("name", ["tsm_r18", "r2plus1d_18"])
@pytest.mark.parametrize("tr, f", [(1, 3), (3, 1), (1, 1)])
def test_single_snippet_and_single_frame(name, tr, f):
    encoder = build_encoder(name).eval()
    with torch.no_grad():
        out = encoder(_clips(b=2, tr=tr, f=f))
    assert out.shape == (2, 512, tr)
    assert torch.isfinite(out).all()


def test_snippets_are_encoded_independently_and_frames_interact():
    torch.manual_seed(0)
    encoder = build_encoder("tsm_r18", dtype=torch.float64).eval()
    x = _clips(tr=3, f=3, dtype=torch.float64)
    with torch.no_grad():
        out = encoder(x)
        y = x.clone()
        y[0, 1, 2] = 1.0 - y[0, 1, 2]  # last frame of snippet 1
        changed = encoder(y)
        # snippets 0 and 2 are untouched, snippet 1 changes
        assert torch.equal(changed[..., 0], out[..., 0]) and torch.equal(changed[..., 2], out[..., 2])
        assert not torch.allclose(changed[..., 1], out[..., 1])
        # a mean of independent frame features would not depend on the frame order;
        # the temporal shift makes it depend
        reversed_frames = encoder(x.flip(2))
    assert not torch.allclose(reversed_frames, out)


def test_rejects_wrong_input_layout():
    encoder = build_encoder("tsm_r18")
    with pytest.raises(ValueError, match=r"\(B, TR, F, 3, SR, SR\)"):
        encoder(torch.zeros(1, 2, 3, 32, 32, dtype=torch.uint8))


def test_unknown_encoder_and_bad_policy_are_option_errors():
    with pytest.raises(OptionError, match="tsm_r18, tsm_r34, tsm_r50, r2plus1d_18"):
        build_encoder("tsm_r101")
    encoder = build_encoder("tsm_r18", device="meta")
    assert encoder.grad_checkpointing == "none"
    for bad in ("chunk:0", "chunk", "blocks", "chunk:x"):
        with pytest.raises(OptionError, match="chunk:K"):
            encoder.set_grad_checkpointing(bad)
    encoder.set_grad_checkpointing("chunk:4")
    assert encoder.grad_checkpointing == "chunk:4"
    for bad in ("blocks:0", "blocks:x", "blocks:"):
        with pytest.raises(OptionError, match="blocks:N"):
            encoder.set_grad_checkpointing(bad)
    with pytest.raises(OptionError, match=r"blocks:99: tsm_r18 has 8 residual blocks, so N must be 1 to 8, got 99"):
        encoder.set_grad_checkpointing("blocks:99")
    assert encoder.grad_checkpointing == "chunk:4"  # a refused policy changes nothing
    encoder.set_grad_checkpointing("blocks:8")  # every block: the same segments as `block`
    assert encoder.checkpointed_blocks == encoder.block_names()


def test_blocks_checkpoints_the_most_memory_per_flop_first(monkeypatch):
    from lofi.models import encoders
    from lofi.models.encoders import block_costs, checkpoint_order

    costs = block_costs("tsm_r50")
    assert len(costs) == 16 and all(c.saved_bytes > 0 and c.flops > 0 for c in costs)
    order = checkpoint_order("tsm_r50")
    ratios = [costs[i].bytes_per_flop for i in order]
    assert sorted(order) == list(range(16)) and ratios == sorted(ratios, reverse=True)
    encoder = build_encoder("tsm_r50", device="meta")
    encoder.set_grad_checkpointing("blocks:5")
    expected = tuple(encoder.block_names()[i] for i in sorted(order[:5]))
    assert encoder.checkpointed_blocks == expected
    names = {block: name for name, block in encoder.named_modules()}
    segments, run_segment = [], encoders.run_segment

    def spy(fn, scope, *args):
        segments.append(names[scope])
        return run_segment(fn, scope, *args)

    monkeypatch.setattr(encoders, "run_segment", spy)
    encoder(torch.empty(1, 2, 2, 3, 64, 64, dtype=torch.uint8, device="meta"))
    assert tuple(segments) == expected  # the blocks that ran as segments, in forward order
    encoder.set_grad_checkpointing("none")
    assert encoder.checkpointed_blocks == ()


def test_frozen_bn_keeps_running_stats_and_trains_affine():
    encoder = build_encoder("tsm_r18")
    before = {n: b.clone() for n, b in encoder.named_buffers()}
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    encoder.train()
    assert encoder.training and not encoder.bn1.training and not encoder.layer4[1].bn2.training
    encoder(_clips()).sum().backward()
    assert encoder.bn1.weight.grad is not None and encoder.bn1.weight.grad.abs().sum() > 0
    weight_before = encoder.bn1.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(encoder.bn1.weight, weight_before)
    for name, buffer in encoder.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_unfrozen_bn_updates_running_stats():
    encoder = build_encoder("tsm_r18", freeze_bn=False).train()
    mean_before = encoder.bn1.running_mean.clone()
    encoder(_clips())
    assert encoder.bn1.training and encoder.bn1.num_batches_tracked.item() == 1
    assert not torch.equal(encoder.bn1.running_mean, mean_before)


@pytest.fixture(scope="module")
def tsm_r18_double():
    torch.manual_seed(0)
    return build_encoder("tsm_r18", dtype=torch.float64)


@pytest.mark.parametrize("policy", POLICIES[1:])
def test_checkpointing_is_equivalent_with_frozen_bn(tsm_r18_double, policy):
    clips = _clips(b=1, tr=3, f=2)  # 3 snippets: chunk:2 leaves a chunk of one
    reference = _train_step(copy.deepcopy(tsm_r18_double), clips)
    encoder = copy.deepcopy(tsm_r18_double)
    encoder.set_grad_checkpointing(policy)
    _assert_same(_train_step(encoder, clips), reference)
    for name, buffer in tsm_r18_double.named_buffers():  # running stats never moved
        assert torch.equal(reference[2][name], buffer), name


@pytest.mark.parametrize("policy", ["block", "blocks:6"])  # blocks:6 checkpoints layer3.0 (the order: positional for R18)
def test_block_checkpointing_updates_unfrozen_bn_once(policy):
    torch.manual_seed(0)
    base = build_encoder("tsm_r18", freeze_bn=False, dtype=torch.float64)
    clips = _clips(b=2, tr=2, f=2)
    reference = _train_step(copy.deepcopy(base), clips)
    encoder = copy.deepcopy(base)
    encoder.set_grad_checkpointing(policy)
    assert "layer3.0" in encoder.checkpointed_blocks
    run = _train_step(encoder, clips)
    _assert_same(run, reference)
    assert run[2]["layer3.0.bn1.num_batches_tracked"].item() == 1
    assert not torch.equal(run[2]["layer3.0.bn1.running_mean"], base.layer3[0].bn1.running_mean)


def test_offload_with_unfrozen_bn_is_none_exactly():
    # save_on_cpu only moves saved tensors: same outputs, gradients and one BN update
    torch.manual_seed(0)
    base = build_encoder("tsm_r18", freeze_bn=False, dtype=torch.float64)
    clips = _clips(b=2, tr=2, f=2)
    reference = _train_step(copy.deepcopy(base), clips)
    encoder = copy.deepcopy(base)
    encoder.set_grad_checkpointing("offload+head")  # the head's suffix is no concern of the encoder's
    run = _train_step(encoder, clips)
    _assert_same(run, reference)
    assert run[2]["layer3.0.bn1.num_batches_tracked"].item() == 1


def test_offload_packs_every_block_and_only_blocks():
    calls = []

    class Counting(torch.autograd.graph.saved_tensors_hooks):
        def __init__(self):
            super().__init__(lambda t: (calls.append(t.shape), t)[1], lambda t: t)

    encoder = build_encoder("tsm_r18")
    encoder.set_grad_checkpointing("offload")
    encoder.offload_context = Counting
    encoder(_clips(b=1, tr=2, f=2)).sum().backward()
    assert calls and (1 * 2 * 2, 64, 8, 8) in calls  # layer1's input (stem output, 32x32 -> 8x8) is saved
    assert (1 * 2 * 2, 64, 16, 16) not in calls  # the stem's own saved tensors stay on the device
    calls.clear()
    with torch.no_grad():
        encoder(_clips(b=1, tr=2, f=2))
    assert not calls


def test_chunk_with_unfrozen_bn_updates_once_per_chunk():
    torch.manual_seed(0)
    encoder = build_encoder("tsm_r18", freeze_bn=False)
    encoder.set_grad_checkpointing("chunk:2")
    out, _, buffers = _train_step(encoder, _clips(b=1, tr=3))  # chunks of 2 and 1 snippets
    assert out.shape == (1, 512, 3)
    assert buffers["bn1.num_batches_tracked"].item() == 2  # ghost batches, not doubled by recompute


def test_chunking_without_autograd_matches():
    torch.manual_seed(0)
    encoder = build_encoder("tsm_r18", dtype=torch.float64).eval()
    clips = _clips(b=2, tr=3)
    with torch.no_grad():
        plain = encoder(clips)
        encoder.set_grad_checkpointing("chunk:2")
        chunked = encoder(clips)
    assert torch.allclose(plain, chunked, atol=1e-10)


def test_r2plus1d_checkpointing_is_equivalent():
    torch.manual_seed(0)
    base = build_encoder("r2plus1d_18", dtype=torch.float64)
    clips = _clips(b=1, tr=2, f=2)
    reference = _train_step(copy.deepcopy(base), clips)
    assert reference[0].shape == (1, 512, 2)
    for policy in ("block", "blocks:3", "chunk:1"):
        encoder = copy.deepcopy(base)
        encoder.set_grad_checkpointing(policy)
        _assert_same(_train_step(encoder, clips), reference)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_builds_on_meta_device(name):
    encoder = build_encoder(name, device="meta", dtype=torch.bfloat16)
    params = list(encoder.parameters())
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in params)
    out = encoder(torch.empty(1, 2, 8, 3, 224, 224, dtype=torch.uint8, device="meta"))
    assert out.shape == (1, encoder.out_channels, 2) and out.is_meta
    encoder.set_grad_checkpointing("chunk:1")  # checkpointed backward on meta tensors too
    encoder(torch.empty(1, 2, 2, 3, 64, 64, dtype=torch.uint8, device="meta")).sum().backward()
    assert all(p.grad is not None and p.grad.is_meta and p.grad.shape == p.shape for p in params)


@pytest.mark.parametrize("name, policy", [("tsm_r18", "none"), ("tsm_r18", "block"), ("tsm_r50", "chunk:2")])
def test_traces_under_fake_tensor_mode(name, policy):
    with FakeTensorMode():
        encoder = build_encoder(name)
        encoder.set_grad_checkpointing(policy)
        out = encoder(torch.empty(2, 4, 8, 3, 112, 112, dtype=torch.uint8))
        out.sum().backward()
        assert out.shape == (2, encoder.out_channels, 4)
        last = encoder.layer4[-1].conv2.weight
        assert last.grad is not None and last.grad.shape == last.shape


def test_checkpointing_benchmark_rows():
    bench = load_benchmark("checkpointing")
    size = bench.StepSize(batch=1, tr=2, frames=4, sr=112)  # large enough for activations to make the peak
    rows = bench.measure_policies("tsm_r18", size, ("none", "blocks:2", "block", "chunk:1"), repeats=1, warmup=0)
    assert [row["policy"] for row in rows] == ["none", "blocks:2", "block", "chunk:1"]
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 0 and rows[1]["cpu_median_s"] > 0
    rows = bench.add_estimates(rows)
    memory = [row["activation_bytes"] for row in rows]
    assert rows[0]["memory_ratio"] == 1.0 and memory[0] > memory[1] > memory[2] > 0  # none > blocks:2 > block
    assert bench.render_table(rows, threads=1).row_count == 4
    assert "frontier none < blocks:2 < block: estimated memory monotone" in bench.frontier(rows)


def test_partial_bn_is_tsm_partialbn():
    """TSM `partialBN`: the first BN trains (statistics and affine); every other BN keeps
    its statistics and its affine parameters frozen, through any later train() call."""
    encoder = build_encoder("tsm_r18", bn_mode="partial")
    norms = encoder.batchnorms()
    assert norms[0] is encoder.bn1 and encoder.bn_mode == "partial" and encoder.freeze_bn
    encoder.eval().train()
    assert encoder.bn1.training and encoder.bn1.weight.requires_grad
    assert all(not m.training and not m.weight.requires_grad and not m.bias.requires_grad for m in norms[1:])
    before = {n: b.clone() for n, b in encoder.named_buffers()}
    frozen_affine = {n: p.detach().clone() for n, p in encoder.named_parameters() if not p.requires_grad}
    assert len(frozen_affine) == 2 * (len(norms) - 1)
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.1)
    encoder(_clips()).sum().backward()
    optimizer.step()
    assert not torch.equal(encoder.bn1.running_mean, before["bn1.running_mean"])
    for name, buffer in encoder.named_buffers():
        if not name.startswith("bn1."):
            assert torch.equal(buffer, before[name]), name
    for name, parameter in encoder.named_parameters():
        if name in frozen_affine:
            assert parameter.grad is None and torch.equal(parameter, frozen_affine[name]), name
    assert not torch.equal(encoder.layer1[0].conv1.weight.grad, torch.zeros_like(encoder.layer1[0].conv1.weight))


def test_bn_modes_switch_and_reject_unknown():
    encoder = build_encoder("tsm_r18", bn_mode="partial")
    encoder.set_bn_mode("frozen")
    assert all(m.weight.requires_grad and not m.training for m in encoder.batchnorms())
    encoder.set_bn_mode("train")
    assert all(m.training for m in encoder.batchnorms()) and not encoder.freeze_bn
    with pytest.raises(OptionError, match="unknown BatchNorm mode 'half'"):
        encoder.set_bn_mode("half")
