"""The vectorised trainer is G ordinary training runs done at once."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from memscore.engine.datasets import load_longtail, load_mnist1d
from memscore.engine.ensemble import (
    AugmentStream,
    BatchStream,
    GroupBatches,
    augment_images,
    make_recipe,
    train_ensemble,
)
from memscore.engine.reference import train_single
from memscore.engine.subsets import subset_indices, subset_masks


@pytest.fixture(scope="module")
def small_mnist1d():
    return load_mnist1d(num_samples=600)


@pytest.fixture(scope="module")
def small_images():
    """1×16×16 images: large enough (pad = 16 // 8 = 2 px) that the resnet recipe augments."""
    return load_longtail(n_train=120, n_test=40, subgroups_per_class=1)


# (arch, data fixture, recipe overrides): the image cases train with augmentation
CASES = {
    "mlp": ("mlp", "small_mnist1d", dict(min_steps=40, batch_size=32)),
    "cnn1d": ("cnn1d", "small_mnist1d", dict(min_steps=40, batch_size=32)),
    "resnet-augment": ("resnet", "small_images", dict(min_steps=8, batch_size=16)),
    "resnet-augment-flip": ("resnet", "small_images", dict(min_steps=8, batch_size=16, flip=True)),
}


def case(request, name):
    arch, data, overrides = CASES[name]
    return request.getfixturevalue(data), arch, replace(make_recipe(arch), epochs=0, **overrides)


@pytest.mark.parametrize("name", list(CASES))
def test_g_member_run_equals_g_single_model_runs(request, name):
    """Tolerance: 2e-3 on true-class probabilities after 40 AdamW steps (float32 reductions are
    ordered differently in batched kernels), and identical 0/1 predictions except at most one
    example per model whose two top classes are that close."""
    ds, arch, recipe = case(request, name)
    ids = [3, 7, 8]
    out = train_ensemble(ds, arch, ids, 0.7, seed=5, recipe=recipe, device="cpu")
    for g, k in enumerate(ids):
        single = train_single(ds, arch, k, 0.7, seed=5, recipe=recipe)
        np.testing.assert_array_equal(out.trace.masks[g], single["mask"])
        np.testing.assert_allclose(out.trace.train_prob[g], single["train_prob"], atol=2e-3)
        np.testing.assert_allclose(out.trace.test_prob[g], single["test_prob"], atol=2e-3)
        assert (out.trace.train_correct[g] != single["train_correct"]).sum() <= 1
        assert (out.trace.test_correct[g] != single["test_correct"]).sum() <= 1


@pytest.mark.parametrize("name", ["mlp", "resnet-augment-flip"])
def test_a_model_is_the_same_whichever_shard_trains_it(request, name):
    """Model 2 in shard [0..3] and in shard [2, 5]: the same up to float rounding (1e-4)."""
    ds, arch, recipe = case(request, name)
    a = train_ensemble(ds, arch, [0, 1, 2, 3], 0.7, seed=1, recipe=recipe, device="cpu").trace
    b = train_ensemble(ds, arch, [2, 5], 0.7, seed=1, recipe=recipe, device="cpu").trace
    np.testing.assert_allclose(a.train_prob[2], b.train_prob[0], atol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "resnet-augment", "resnet-augment-flip"])
def test_traces_do_not_depend_on_group_size(request, name):
    """All at once, two at a time, one at a time: the same models up to float rounding (1e-3:
    batched kernels order float32 sums by group size; after the recipe's steps that reached
    2e-4 on an AMD EPYC, under 1e-4 on the Intel machines before)."""
    ds, arch, recipe = case(request, name)
    ids = [4, 0, 9]
    traces = [
        train_ensemble(ds, arch, ids, 0.5, seed=2, recipe=recipe, device="cpu", group_size=g).trace for g in (3, 2, 1)
    ]
    for t in traces[1:]:
        np.testing.assert_array_equal(t.masks, traces[0].masks)
        np.testing.assert_allclose(t.train_prob, traces[0].train_prob, atol=1e-3)
        np.testing.assert_allclose(t.test_prob, traces[0].test_prob, atol=1e-3)


def test_a_group_that_runs_out_of_memory_is_retried_in_halves_with_the_same_result(request, monkeypatch):
    """A device that holds at most 2 models at once: the shard of 5 asked for in one group is
    trained 2, 2 and 1 at a time after one failed try (every later group at the smaller size),
    and its trace equals the one trained 5 at a time by a device with room."""
    from memscore.engine import ensemble

    ds, arch, recipe = case(request, "mlp")
    ids = [6, 1, 4, 3, 0]
    roomy = train_ensemble(ds, arch, ids, 0.5, seed=3, recipe=recipe, device="cpu", group_size=5).trace
    real, tried = ensemble._train_group, []

    def small_device(ds, arch, model_ids, *a, **kw):
        tried.append(len(model_ids))
        if len(model_ids) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(ds, arch, model_ids, *a, **kw)

    monkeypatch.setattr(ensemble, "_train_group", small_device)
    seen = []
    out = train_ensemble(
        ds, arch, ids, 0.5, seed=3, recipe=recipe, device="cpu", group_size=5, progress=lambda d, t: seen.append((d, t))
    ).trace
    assert tried == [5, 3, 2, 2, 1]  # 5 fails, 3 fails, then 2 + 2 + 1
    assert out.meta["oom_splits"] == 2 and out.meta["group_size"] == 2
    np.testing.assert_array_equal(out.model_ids, ids)
    np.testing.assert_array_equal(out.masks, roomy.masks)
    np.testing.assert_allclose(out.train_prob, roomy.train_prob, atol=1e-3)
    np.testing.assert_allclose(out.test_prob, roomy.test_prob, atol=1e-3)
    steps = seen[-1][1]
    assert seen[-1][0] == steps and all(0 <= d <= steps for d, _ in seen)  # the whole shard's progress, to the end


def test_an_error_that_is_not_out_of_memory_is_not_retried(request, monkeypatch):
    from memscore.engine import ensemble

    ds, arch, recipe = case(request, "mlp")
    calls = []

    def broken(*a, **kw):
        calls.append(1)
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(ensemble, "_train_group", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        train_ensemble(ds, arch, [0, 1, 2, 3], 0.5, seed=3, recipe=recipe, device="cpu", group_size=4)
    assert len(calls) == 1

    def no_room(*a, **kw):  # not even one model fits: the error reaches the caller
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(ensemble, "_train_group", no_room)
    with pytest.raises(torch.OutOfMemoryError):
        train_ensemble(ds, arch, [0, 1], 0.5, seed=3, recipe=recipe, device="cpu", group_size=2)


def test_the_automatic_group_fits_the_free_memory(small_images):
    """cost.group_memory's estimate decides: all the models with room to spare, fewer when
    memory is short, never fewer than one; on the CPU at most CPU_GROUP_SIZE."""
    from memscore.engine.cost import DatasetFacts, group_memory
    from memscore.engine.ensemble import CPU_GROUP_SIZE, MEMORY_SAFETY, fitting_group_size

    ds = small_images
    facts = DatasetFacts(ds.n_train, ds.n_test, ds.num_classes, ds.kind, ds.feature_shape)
    fixed, per_model = group_memory("resnet", facts, 16, 256)
    cpu = torch.device("cpu")
    assert fitting_group_size(ds, "resnet", 16, 256, (), cpu, cap=500, free=1 << 50) == 500
    room_for_7 = int((fixed + 7.5 * per_model) / MEMORY_SAFETY)
    assert fitting_group_size(ds, "resnet", 16, 256, (), cpu, cap=500, free=room_for_7) == 7
    assert fitting_group_size(ds, "resnet", 16, 256, (), cpu, cap=500, free=fixed) == 1
    # adversarial searches hold a larger batch per model: fewer fit
    assert fitting_group_size(ds, "resnet", 16, 256, ("adversarial",), cpu, cap=500, free=room_for_7) < 7
    # this machine, automatically: the CPU's default group (the small models fit many times over)
    recipe = replace(make_recipe("resnet"), epochs=0, min_steps=2, batch_size=16)
    out = train_ensemble(ds, "resnet", list(range(CPU_GROUP_SIZE + 1)), 0.5, seed=0, recipe=recipe, device="cpu")
    assert out.trace.meta["group_size"] == CPU_GROUP_SIZE and out.trace.meta["oom_splits"] == 0


def test_resnet_recipe_on_16px_images_trains_with_augmentation(request):
    """The image cases above do exercise augmentation: switching it off changes the models."""
    ds, arch, recipe = case(request, "resnet-augment-flip")
    on = train_ensemble(ds, arch, [0, 1], 0.5, seed=2, recipe=recipe, device="cpu").trace
    off = train_ensemble(ds, arch, [0, 1], 0.5, seed=2, recipe=replace(recipe, augment=False), device="cpu").trace
    assert np.abs(on.train_prob - off.train_prob).max() > 1e-2


def test_augment_stream_of_model_k_depends_only_on_seed_and_k():
    """However many steps are drawn at a time (the trainer: 64, the plain loop: 1)."""
    whole = AugmentStream(batch_size=5, pad=2, flip=True, seed=0, k=3).next(70)
    stream = AugmentStream(batch_size=5, pad=2, flip=True, seed=0, k=3)
    stepwise = torch.cat([stream.next(1) for _ in range(70)])
    assert torch.equal(whole, stepwise)
    assert whole[..., :2].min() == 0 and whole[..., :2].max() == 4  # translations -2..2 px
    assert set(whole[..., 2].unique().tolist()) == {0, 1}  # some flipped, some not
    assert not torch.equal(whole, AugmentStream(5, 2, True, seed=0, k=4).next(70))
    assert not torch.equal(whole, AugmentStream(5, 2, True, seed=1, k=3).next(70))
    assert AugmentStream(5, 2, False, seed=0, k=3).next(70)[..., 2].eq(0).all()


def test_a_model_sees_the_same_augmented_batches_whatever_group_it_is_in(small_images):
    recipe = replace(make_recipe("resnet"), flip=True)
    ds, ratio, seed, steps = small_images, 0.5, 7, 70
    subsets = {k: subset_indices(ds.n_train, ratio, seed, k) for k in (1, 5, 8)}
    alone = GroupBatches(ds, [subsets[5]], [5], 16, seed, recipe, torch.device("cpu"), steps)
    group = GroupBatches(ds, [subsets[k] for k in (1, 5, 8)], [1, 5, 8], 16, seed, recipe, torch.device("cpu"), steps)
    first = alone(0)[0][0]
    assert torch.equal(first, group(0)[0][1])
    for step in range(1, steps):  # past the first 64-step block too
        (xa, ya), (xg, yg) = alone(step), group(step)
        assert torch.equal(xa[0], xg[1]) and torch.equal(ya[0], yg[1])
    plain = torch.from_numpy(ds.x_train)[BatchStream(subsets[5], 16, seed, 5).next(1)[0]]
    assert not torch.equal(first, plain)  # the batch was augmented


def test_augment_images_translates_with_reflect_padding_and_flips():
    x = torch.arange(2 * 3 * 6 * 7, dtype=torch.float32).view(2, 3, 6, 7)
    pad = 2
    xp = F.pad(x, (pad,) * 4, mode="reflect")
    aug = torch.tensor([[pad, pad, 0], [pad, pad, 1]])  # centred: identity, flip
    assert torch.equal(augment_images(x, aug, pad), torch.stack([x[0], x[1].flip(-1)]))
    aug = torch.tensor([[0, 4, 0], [3, 1, 1]])
    want = torch.stack([xp[0, :, 0:6, 4:11], xp[1, :, 3:9, 1:8].flip(-1)])  # translate, then flip
    assert torch.equal(augment_images(x, aug, pad), want)


def test_same_seed_gives_identical_traces_on_cpu(small_mnist1d):
    recipe = replace(make_recipe("cnn1d"), epochs=0, min_steps=20)
    a = train_ensemble(small_mnist1d, "cnn1d", [0, 1], 0.7, seed=9, recipe=recipe, device="cpu").trace
    b = train_ensemble(small_mnist1d, "cnn1d", [0, 1], 0.7, seed=9, recipe=recipe, device="cpu").trace
    np.testing.assert_array_equal(a.train_prob, b.train_prob)
    np.testing.assert_array_equal(a.test_correct, b.test_correct)


def test_subsets_have_size_round_rn_and_depend_only_on_seed_and_k():
    n = 101
    m = subset_masks(n, 0.7, seed=3, model_ids=[0, 1, 2])
    assert (m.sum(1) == round(0.7 * n)).all()
    np.testing.assert_array_equal(m[1], subset_masks(n, 0.7, 3, [1])[0])
    assert not np.array_equal(m[0], m[1])
    assert not np.array_equal(subset_indices(n, 0.7, 3, 0), subset_indices(n, 0.7, 4, 0))


def test_balanced_plan_pairs_complementary_halves_so_every_example_is_in_half_the_models():
    for n in (10, 11):  # odd n: the even member of a pair has the extra example
        masks = subset_masks(n, 0.5, seed=3, model_ids=range(8), plan="balanced")
        assert (masks[0::2] ^ masks[1::2]).all()  # each pair splits the examples
        assert (masks.sum(0) == 4).all()
        assert (masks.sum(1) == [(n + 1) // 2 if k % 2 == 0 else n // 2 for k in range(8)]).all()
        assert len({tuple(r) for r in masks[0::2]}) == 4  # the pairs differ
    # model k's subset depends only on (seed, k), whatever else is drawn
    np.testing.assert_array_equal(
        subset_indices(11, 0.5, 3, 5, plan="balanced"), np.nonzero(subset_masks(11, 0.5, 3, [5], "balanced")[0])[0]
    )
    with pytest.raises(ValueError, match="unknown subset plan"):
        subset_indices(10, 0.5, 0, 0, plan="stratified")


def test_batch_stream_visits_every_subset_example_once_per_epoch():
    subset = np.arange(10, 30)
    stream = BatchStream(subset, batch_size=6, seed=0, k=0)
    first = torch.cat([stream.next(2).flatten(), stream.next(1).flatten()])  # 18 of the 20
    rest = stream.next(1).flatten()[:2]
    assert sorted(torch.cat([first, rest]).tolist()) == list(range(10, 30))


def test_default_recipe_fits_training_subsets_including_flipped_labels():
    """The paper's regime: in-sample accuracy near 100%, noisy labels included."""
    ds = load_mnist1d(num_samples=1000)
    rng = np.random.default_rng(0)
    flipped = rng.choice(ds.n_train, 80, replace=False)
    ds.y_train[flipped] = (ds.y_train[flipped] + rng.integers(1, 10, 80)) % 10
    tr = train_ensemble(ds, "cnn1d", [0, 1], 0.7, seed=0, recipe=make_recipe("cnn1d"), device="cpu").trace
    in_acc = (tr.train_correct & tr.masks).sum() / tr.masks.sum()
    assert in_acc >= 0.99
    flip_mask = np.zeros(ds.n_train, bool)
    flip_mask[flipped] = True
    assert tr.train_correct[tr.masks & flip_mask[None]].mean() >= 0.95


def test_trace_keeps_margins_predictions_and_heldout_distributions(small_mnist1d):
    """Format 2: the true-class margin is log p − log(1 − p) of the model's softmax (no float32
    saturation), the predicted class agrees with the 0/1 correctness, and the held-out sums add
    the softmax rows of exactly the members that did not train on each example; the group sums
    split them by jackknife group and membership."""
    ds = small_mnist1d
    recipe = replace(make_recipe("mlp"), epochs=0, min_steps=60, batch_size=32)
    out = train_ensemble(ds, "mlp", [0, 1, 2, 3], 0.5, seed=2, recipe=recipe, device="cpu", keep_weights=True)
    t = out.trace
    assert (t.train_pred == ds.y_train[None, :]).tolist() == t.train_correct.tolist()
    assert (t.test_pred == ds.y_test[None, :]).tolist() == t.test_correct.tolist()
    from torch.func import functional_call

    from memscore.engine.ensemble import init_model

    logits = []  # the members' logits, recomputed from their kept weights
    for g in range(4):
        net = init_model("mlp", ds, 2, g)
        state = {k: v[g] for k, v in out.weights.items()}
        logits.append(functional_call(net, state, (torch.from_numpy(ds.x_train),)).detach().double())
    logits = torch.stack(logits)  # (G, n, C)
    logp = logits.log_softmax(-1)
    y = torch.from_numpy(ds.y_train).long()
    lp_y = logp.gather(-1, y.expand(4, -1).unsqueeze(-1)).squeeze(-1)
    expected = (lp_y - torch.log1p(-lp_y.exp().clamp(max=1 - 1e-15))).numpy()
    finite = np.abs(expected) < 30  # beyond that float64's 1 − p has too few digits to compare
    np.testing.assert_allclose(t.train_margin[finite], expected[finite], atol=2e-3, rtol=1e-3)
    held = torch.einsum("gnc,gn->nc", logp.exp(), torch.from_numpy(~t.masks).double()).numpy()
    np.testing.assert_allclose(t.heldout_prob_sum, held, atol=2e-4)
    # per jackknife group (model id mod 8; here members 0..3 are groups 0..3), the sums the
    # prototypicality metrics are made of (engine/prototypes.py)
    p, inside = logp.exp().numpy(), t.masks[..., None]
    np.testing.assert_allclose(t.group_prob_in[:4], np.where(inside, p, 0), atol=2e-4)
    np.testing.assert_allclose(t.group_prob_out[:4], np.where(inside, 0, p), atol=2e-4)
    np.testing.assert_allclose(t.group_entropy[:4], -(p * np.log(np.maximum(p, 1e-300))).sum(-1), atol=2e-3)
    np.testing.assert_allclose(t.group_maxprob[:4], p.max(-1), atol=2e-4)
    assert not t.group_prob_in[4:].any() and not t.group_entropy[4:].any()


def test_adversarial_distances_do_not_depend_on_the_group_a_model_trains_in(small_mnist1d):
    """The opt-in adversarial fields: per model and training example, the same (up to the
    bisection's resolution, eps_max / 256) whether the model trains with others or alone; absent
    unless asked for."""
    ds = small_mnist1d
    recipe = replace(make_recipe("mlp"), epochs=0, min_steps=40, batch_size=32)
    run = dict(seed=4, recipe=recipe, device="cpu", metrics=("adversarial",))
    together = train_ensemble(ds, "mlp", [1, 2, 3], 0.5, group_size=3, **run).trace
    alone = train_ensemble(ds, "mlp", [1, 2, 3], 0.5, group_size=1, **run).trace
    for field in ("adv_l2", "adv_linf"):
        eps = together.meta["adv_eps_max"][field[4:]]
        d = getattr(together, field)
        assert d.shape == (3, ds.n_train) and (d > 0).all() and (d <= eps).all()
        assert np.mean(np.abs(d - getattr(alone, field)) <= eps / 128) > 0.99, field
    assert train_ensemble(ds, "mlp", [1], 0.5, seed=4, recipe=recipe, device="cpu").trace.adv_l2 is None


def test_snapshots_do_not_depend_on_the_group_and_survive_the_trace_format(small_mnist1d):
    """The `dynamics` fields: per snapshot (one per epoch, at most MAX_SNAPSHOTS), member and
    example, the training correctness; the critical flags of the CSR sample at every snapshot
    and of every example at the last one (the sample's are the same search)."""
    from memscore.engine.dynamics import snapshot_steps
    from memscore.engine.traces import Trace

    ds = small_mnist1d
    recipe = replace(make_recipe("mlp"), epochs=6, min_steps=0, batch_size=32)
    run = dict(seed=4, recipe=recipe, device="cpu", metrics=("dynamics",))
    together = train_ensemble(ds, "mlp", [1, 2, 3], 0.5, group_size=3, **run).trace
    alone = train_ensemble(ds, "mlp", [1, 2, 3], 0.5, group_size=1, **run).trace
    S, sample = 6, np.asarray(together.meta["csr_sample"])
    assert together.snap_correct.shape == (S, 3, ds.n_train) and together.meta["snapshot_epochs"] == [1, 2, 3, 4, 5, 6]
    assert together.snap_critical.shape == (S, 3, len(sample))
    np.testing.assert_array_equal(together.snap_critical[-1], together.critical_final[:, sample])
    assert np.mean(together.snap_correct[-1] == together.train_correct) > 0.999  # the last is the trained model
    for field in ("snap_correct", "snap_critical", "critical_final"):
        assert np.mean(getattr(together, field) == getattr(alone, field)) > 0.99, field
    again = Trace.from_bytes(together.to_bytes())
    for field in ("snap_correct", "snap_critical", "critical_final"):
        np.testing.assert_array_equal(getattr(again, field), getattr(together, field))
    assert snapshot_steps(4400, 44)[-1] == 4400 and len(snapshot_steps(4400, 44)) == 20
    assert snapshot_steps(100, 44) == [44, 88, 100]


def test_fused_adamw_and_channels_last_train_the_same_models(request):
    """Execution options (step_options.Speed) change how a step runs, not what a model is: the
    default fused AdamW, the unfused one, channels-last images."""
    from memscore.engine.ensemble import Speed

    ds, arch, recipe = case(request, "resnet-augment")
    ids = [2, 5]
    runs = [
        train_ensemble(ds, arch, ids, 0.5, seed=4, recipe=recipe, device="cpu", speed=s).trace
        for s in (Speed(), Speed(fused=False), Speed(channels_last=True))
    ]
    for t in runs[1:]:
        np.testing.assert_allclose(t.train_prob, runs[0].train_prob, atol=1e-3)
        np.testing.assert_allclose(t.test_prob, runs[0].test_prob, atol=1e-3)


def test_a_step_that_fails_to_compile_runs_eager_and_says_why(request, monkeypatch):
    from memscore.engine import ensemble
    from memscore.engine.ensemble import Speed

    def cannot_compile(fn, **kw):
        def compiled(*a):
            raise RuntimeError("InductorError: no C++ compiler")

        return compiled

    monkeypatch.setattr(ensemble.torch, "compile", cannot_compile)
    monkeypatch.setattr(ensemble, "_COMPILED", {})  # compiled steps are cached per process
    ds, arch, recipe = case(request, "mlp")
    eager = train_ensemble(ds, arch, [1, 2], 0.5, seed=4, recipe=recipe, device="cpu").trace
    out = train_ensemble(ds, arch, [1, 2], 0.5, seed=4, recipe=recipe, device="cpu", speed=Speed(compile=True)).trace
    assert "no C++ compiler" in out.meta["compile_error"]
    np.testing.assert_allclose(out.train_prob, eager.train_prob, atol=1e-6)


def test_a_model_stops_once_it_fits_its_subset_at_the_same_step_in_any_group(small_mnist1d):
    """Recipe.stop_when_fit: each model stops at the step the plain loop stops it (one epoch of
    batches wholly fit), with the same weights, whatever group it trains in; the group ends
    when its last model stops, long before the schedule's end here."""
    recipe = replace(make_recipe("mlp"), epochs=0, min_steps=600, batch_size=32, stop_when_fit=True)
    ids = [0, 3, 5]
    together = train_ensemble(small_mnist1d, "mlp", ids, 0.5, seed=2, recipe=recipe, device="cpu", group_size=3).trace
    alone = train_ensemble(small_mnist1d, "mlp", ids, 0.5, seed=2, recipe=recipe, device="cpu", group_size=1).trace
    stops = together.meta["fit_stop_steps"]
    assert alone.meta["fit_stop_steps"] == stops and max(stops) < 600
    assert len(set(stops)) > 1  # models fit at different steps: the early ones were held
    np.testing.assert_allclose(together.train_prob, alone.train_prob, atol=1e-3)
    for g, k in enumerate(ids):
        single = train_single(small_mnist1d, "mlp", k, 0.5, seed=2, recipe=recipe)
        assert single["steps"] == stops[g]
        np.testing.assert_allclose(together.train_prob[g], single["train_prob"], atol=2e-3)
    # fit: in-sample accuracy of every model is (almost) perfect when it stops
    assert (together.train_correct & together.masks).sum(1).min() >= 0.98 * together.masks.sum(1).min()
