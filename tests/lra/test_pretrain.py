"""Self-pretraining (lra/pretrain.py): the objectives, the CLI for every mixer and task type, and
exactly which weights carry over to fine-tuning."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import lrm
from lra.cli import main as lra_main
from lra.data import fixtures
from lra.init_from import load_encoder
from lra.lightning_cli import LRACLI
from lra.module import LRAModule
from lra.objective import IGNORE
from lra.pretrain import PretrainCLI, PretrainModule

ROOT = Path(__file__).parents[2]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--model.warmup_steps", "1", "--checkpoint.every_n_train_steps", "2",
         "--trainer.log_every_n_steps", "1"]
TINY = ["--model.model.d_model", "32", "--model.model.n_layers", "1"]
# task type -> (data module, data args from the fixtures, model args)
TASK_TYPES = {
    "classify": ("lra.data.ListOpsDataModule", "listops", []),  # causal: next token
    "retrieval": ("lra.data.AANDataModule", "retrieval", ["--model.model.bidirectional", "true"]),
    "pixel": ("lra.data.PathfinderDataModule", "pathfinder",
              ["--model.model.bidirectional", "true", "--model.model.encoder", "linear"]),
}
ENCODER = ("embed.", "landmarks.", "blocks.", "norm.")
# mixers that refuse a bidirectional model (landmark tokens summarise the block before them):
# they pretrain causally on every task type
CAUSAL_ONLY = {"landmark"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, dict]:
    return fixtures.write_all(tmp_path_factory.mktemp("fixtures"))


def _task_args(data: dict, kind: str, mixer: str | None = None) -> list[str]:
    cls, task, model = TASK_TYPES[kind]
    if mixer in CAUSAL_ONLY:
        model = [m if m != "true" or model[i - 1] != "--model.model.bidirectional" else "false"
                 for i, m in enumerate(model)]
    args = ["--data", cls]
    for k, v in data[task].items():
        args += [f"--data.init_args.{k}", str(v)]
    return args + model


def _hints(data: dict, kind: str, mixer: str | None = None) -> tuple[lrm.ModelConfig, dict]:
    import lra.data as D

    cls, task, _ = TASK_TYPES[kind]
    model = _task_args(data, kind, mixer)[2 + 2 * len(data[task]):]
    dm = getattr(D, cls.rsplit(".", 1)[1])(**data[task])
    cfg = {"d_model": 32, "n_layers": 1}
    for flag, value in zip(model[::2], model[1::2], strict=True):
        key = flag.rsplit(".", 1)[1]
        cfg[key] = value == "true" if value in ("true", "false") else value
    return cfg, dm.model_hints()


def _encoder(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and k[len(prefix):].startswith(ENCODER)}


# ----------------------------------------------------------------------- every mixer x task


@pytest.mark.parametrize("kind", list(TASK_TYPES))
@pytest.mark.parametrize("mixer", lrm.available())
def test_pretrain_then_fit_every_mixer_and_task_type(data, kind, mixer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*_task_args(data, kind, mixer), *TINY, "--model.model.mixer", mixer, *QUIET]
    lra_main(["pretrain", *args, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"])
    run = tmp_path / "runs" / "pretrain" / "version_0"
    assert "val/acc" in (run / "metrics.csv").read_text()
    ckpt_path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    objective = "causal" if kind == "classify" or mixer in CAUSAL_ONLY else "masked"
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["objective"] == objective

    # exactly the encoder carries: every embed/blocks/norm weight, equal to the checkpoint's;
    # the head keeps the value it had before loading
    cfg, hints = _hints(data, kind, mixer)
    torch.manual_seed(0)
    fresh = LRAModule(model={**cfg, "mixer": mixer}, hints=hints)
    torch.manual_seed(0)
    module = LRAModule(model={**cfg, "mixer": mixer}, hints=hints, init_from=str(ckpt_path))
    module.trainer = pl.Trainer(logger=False, enable_checkpointing=False)
    module.setup("fit")
    mine, pre = module.model.state_dict(), _encoder(ckpt["state_dict"], "model.")
    assert set(_encoder(mine)) == set(pre)
    assert set(mine) - set(pre) == {k for k in mine if k.startswith("head.")}
    for k, v in pre.items():
        assert torch.equal(mine[k], v), k
    changed = [k for k, v in pre.items() if not torch.equal(fresh.model.state_dict()[k], v)]
    assert changed, "the pretraining checkpoint equals a fresh model: nothing was trained"
    for k, v in fresh.model.head.state_dict().items():
        assert torch.equal(module.model.head.state_dict()[k], v), f"head.{k} was overwritten"

    lra_main(["fit", *args, "--trainer.max_steps", "2", "--model.init_from", str(ckpt_path)])
    fit = torch.load(tmp_path / "runs" / "lra" / "version_0" / "checkpoints" / "last.ckpt",
                     weights_only=True)
    assert fit["global_step"] == 2 and fit["hyper_parameters"]["init_from"] == str(ckpt_path)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "pretrain").rglob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_pretrain_recipes_keep_the_fine_tuning_encoder(path):
    """A recipe composed between the task and the model config parses, and leaves the model
    exactly as the fine-tuning run (task + model config) builds it."""
    quick = path.parent.name == "quick"
    task = ROOT / "configs" / "lra" / ("quick" if quick else "") / path.name
    model = ROOT / "configs" / "model" / "s4d.yaml"
    pre = PretrainCLI(PretrainModule, None, subclass_mode_data=True, run=False,
                      args=["--config", str(task), "--config", str(path), "--config", str(model)])
    fit = LRACLI(LRAModule, None, subclass_mode_data=True, run=False,
                 args=["--config", str(task), "--config", str(model)])
    assert pre.config.model.model == fit.config.model.model
    assert pre.config.model.min_lr_ratio == 1.0  # the paper's constant schedule
    assert pre.config.data == fit.config.data


# ------------------------------------------------------------------------ carrying over


def test_init_from_refuses_another_mixer_or_width(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lra_main(["pretrain", *_task_args(data, "classify"), *TINY, *QUIET,
              "--trainer.max_steps", "1"])
    ckpt = tmp_path / "runs" / "pretrain" / "version_0" / "checkpoints" / "last.ckpt"
    cfg, hints = _hints(data, "classify")
    for other, what in (({"mixer": "s4d"}, "mixer"), ({"d_model": 48}, "d_model"),
                        ({"n_layers": 2}, "n_layers")):
        model = LRAModule(model={**cfg, **other}, hints=hints).model
        with pytest.raises(ValueError, match=what):
            load_encoder(model, ckpt)
    # a different head, pooling or dropout is fine: only the encoder must match
    model = LRAModule(model={**cfg, "dropout": 0.1}, hints=hints).model
    assert load_encoder(model, ckpt)
    with pytest.raises(FileNotFoundError, match="lra pretrain"):
        load_encoder(model, tmp_path / "missing.ckpt")


def test_init_from_refuses_a_bare_state_dict_of_another_shape(tmp_path):
    a = lrm.LRModel(lrm.ModelConfig(d_model=16, n_layers=1, vocab_size=20, n_classes=3))
    b = lrm.LRModel(lrm.ModelConfig(d_model=8, n_layers=1, vocab_size=20, n_classes=3))
    torch.save({"state_dict": {"model." + k: v for k, v in a.state_dict().items()}},
               tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="shapes"):
        load_encoder(b, tmp_path / "a.ckpt")


def test_resumed_pretraining_equals_an_unbroken_run(data, tmp_path, monkeypatch):
    """The masks are drawn from the saved RNG stream: a resumed run ends where an unbroken one
    does, and appends to the same run folder's metrics. A constant learning rate after warmup
    (the paper's schedule) lets the first leg stop early with the same learning rates."""
    monkeypatch.chdir(tmp_path)
    # one loader worker: the worker fetches ahead of training, and the resume must not count
    # the batches it fetched but training never used
    args = [*_task_args(data, "pixel"), *TINY, *QUIET, "--model.min_lr_ratio", "1.0",
            "--data.init_args.num_workers", "1"]
    lra_main(["pretrain", *args, "--trainer.max_steps", "6", "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path / "a")])
    lra_main(["pretrain", *args, "--trainer.max_steps", "4"])
    run = tmp_path / "runs" / "pretrain" / "version_0"
    before = (run / "metrics.csv").read_text()
    lra_main(["pretrain", "--config", str(run / "config.yaml"), "--trainer.max_steps", "6",
              "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    after = (run / "metrics.csv").read_text()
    assert after.startswith(before.rstrip("\n")) and len(after) > len(before)
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


# ---------------------------------------------------------------------------- objectives


def _module(**kw) -> PretrainModule:
    torch.manual_seed(0)
    cfg = {"d_model": 16, "n_layers": 2, "vocab_size": 12, "n_classes": 3, **kw.pop("cfg", {})}
    return PretrainModule(model=cfg, **kw)


def _batch(B: int = 3, L: int = 9, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([L, L - 3, 4])[:B]
    x = torch.randint(1, 12, (B, L), generator=g)
    x[torch.arange(L)[None] >= lengths[:, None]] = 0
    return {"inputs": x, "lengths": lengths, "targets": torch.tensor([0, 1, 2])[:B]}


def test_causal_objective_predicts_the_next_valid_token():
    m = _module()
    batch = _batch()
    logits, targets = m(batch)
    x, n = batch["inputs"], batch["lengths"]
    assert logits.shape == (*x.shape, 12) and m.objective == "causal"
    for b in range(3):
        want = torch.full((9,), IGNORE)
        want[: n[b] - 1] = x[b, 1 : n[b]]
        assert torch.equal(targets[b], want)
    # no label is read: other labels, the same loss
    other = dict(batch, targets=torch.tensor([2, 2, 0]))
    logits2, targets2 = m(other)
    assert torch.equal(logits2, logits) and torch.equal(targets2, targets)


def test_masked_objective_scores_and_hides_only_masked_positions():
    m = _module(cfg={"bidirectional": True}, mask_prob=0.3)
    assert m.objective == "masked"
    batch = _batch(L=400)
    torch.manual_seed(5)
    logits, targets = m(batch)
    x, n = batch["inputs"], batch["lengths"]
    masked = targets != IGNORE
    valid = torch.arange(400)[None] < n[:, None]
    assert not (masked & ~valid).any(), "padding was masked"
    assert torch.equal(targets[masked], x[masked])
    frac = masked.sum() / valid.sum()
    assert 0.25 < frac < 0.35, frac
    # the masked tokens are hidden from the model: change them, the logits do not move
    y = torch.where(masked, (x % 11) + 1, x)
    torch.manual_seed(5)
    logits2, targets2 = m(dict(batch, inputs=y))
    assert torch.equal(targets2 != IGNORE, masked)
    assert torch.allclose(logits, logits2, atol=1e-6)
    # ...but an unmasked token is seen
    z = x.clone()
    z[0, (~masked[0]).nonzero()[0, 0]] = 1 + (z[0, (~masked[0]).nonzero()[0, 0]] % 11)
    torch.manual_seed(5)
    assert not torch.allclose(m(dict(batch, inputs=z))[0], logits)


def test_every_sequence_gets_a_masked_position():
    m = _module(cfg={"bidirectional": True}, mask_prob=0.01)
    batch = _batch(B=3, L=5)
    for seed in range(20):
        torch.manual_seed(seed)
        _, targets = m(batch)
        assert ((targets != IGNORE).sum(1) >= 1).all()


def test_pixel_targets_are_intensity_classes_with_the_linear_encoder():
    m = _module(cfg={"vocab_size": 256, "encoder": "linear"})
    x = torch.randint(0, 256, (2, 16))
    logits, targets = m({"inputs": x, "lengths": torch.tensor([16, 16])})
    assert logits.shape == (2, 16, 256) and torch.equal(targets[:, :-1], x[:, 1:])


def test_retrieval_pretrains_each_document():
    m = _module(cfg={"bidirectional": True, "head": "retrieval"})
    a, b = _batch(seed=1), _batch(seed=2)
    batch = {**a, "inputs2": b["inputs"], "lengths2": b["lengths"]}
    torch.manual_seed(0)
    logits, targets = m(batch)
    assert logits.shape[0] == 6
    masked = targets != IGNORE
    assert torch.equal(targets[3:][masked[3:]], b["inputs"][masked[3:]])


def test_bad_options_say_what_to_do():
    with pytest.raises(ValueError, match="masked"):
        _module(cfg={"bidirectional": True}, objective="causal")
    with pytest.raises(ValueError, match="objective"):
        _module(objective="mlm")
    with pytest.raises(ValueError, match="mask_prob"):
        _module(mask_prob=0.0)


def test_pretraining_head_is_not_the_task_head():
    m = _module(cfg={"head": "retrieval"})
    names = {k for k, _ in m.model.named_parameters()}
    assert {"head.proj.weight", "head.mask_vector"} <= names
    assert m.model.head.proj.out_features == 12  # a prediction over the vocabulary
