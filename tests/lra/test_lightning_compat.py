"""The private Lightning methods lra overrides or calls (lra/lightning_compat.py) still exist
with the parameters the overrides were written for, and Lightning still calls the overridden
ones where the hooks built on them assume. A failure here after an upgrade of Lightning means:
adapt lra/lightning_compat.py."""

from __future__ import annotations

import inspect
import warnings
from types import SimpleNamespace

import lightning
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from lra import lightning_compat as compat
from lra.lightning_cli import LRACLI, Checkpoint, ProgressBar


def _params(cls: type, name: str) -> tuple[str, ...]:
    fn = inspect.getattr_static(cls, name)
    return tuple(p for p in inspect.signature(fn).parameters if p != "self")


@pytest.mark.parametrize(("cls", "name", "params"),
                         [*compat.PRIVATE_OVERRIDES, *compat.PRIVATE_USES],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_private_names_exist_with_the_parameters_written_for(cls, name, params):
    if params is None:  # an attribute, set on instances
        ckpt = ModelCheckpoint(every_n_train_steps=3)
        assert hasattr(ckpt, name), f"{cls.__name__}.{name} is gone"
        return
    assert hasattr(cls, name), (f"{cls.__name__}.{name} is gone in Lightning "
                                f"{lightning.__version__} (lra.lightning_compat was written for "
                                f"{compat.WRITTEN_FOR})")
    assert _params(cls, name) == params


def test_the_version_written_for_is_named():
    major, minor = compat.WRITTEN_FOR.split(".")
    assert major.isdigit() and minor.isdigit()
    assert compat.WRITTEN_FOR in compat.__doc__


def test_every_override_of_a_private_method_lives_in_lightning_compat():
    import lra.lightning_cli as cli

    for _, obj in inspect.getmembers(cli, inspect.isclass):
        if obj.__module__ != cli.__name__:
            continue
        for base in obj.__mro__[1:]:
            if not base.__module__.startswith("lightning"):
                continue
            own = [n for n in vars(obj) if n.startswith("_") and not n.startswith("__")
                   and n in vars(base) and callable(vars(obj)[n])]
            assert not own, f"{obj.__name__} overrides private {base.__name__}.{own}"


def test_the_cli_calls_the_checkpoint_read_before_instantiating():
    # before_checkpoint_is_read runs inside _parse_ckpt_path, which must still come after
    # parsing and before the classes (model, data, trainer) are built
    src = inspect.getsource(LightningCLI.__init__)
    assert src.index("self.parse_arguments(") < src.index("self._parse_ckpt_path()") < \
        src.index("self.instantiate_classes()")
    assert "self._instantiate_trainer(" in inspect.getsource(LightningCLI.instantiate_trainer)
    assert issubclass(LRACLI, compat.HookedCLI)


def test_instantiate_trainer_receives_what_adjust_trainer_returns():
    seen = {}

    class Probe(compat.HookedCLI):
        def __init__(self):  # no parsing: only the two hooks are under test
            self.trainer_defaults = {}

        def adjust_trainer(self, config, callbacks):
            return {**config, "max_steps": 7}, [*callbacks, "extra"]

    def fake(self, config, callbacks):
        seen.update(config=config, callbacks=callbacks)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LightningCLI, "_instantiate_trainer", fake)
        Probe()._instantiate_trainer({"max_steps": 1}, [])
    assert seen == {"config": {"max_steps": 7}, "callbacks": ["extra"]}


def test_a_resuming_checkpoint_does_not_warn_about_its_own_folder(tmp_path):
    (tmp_path / "last.ckpt").write_text("x")
    assert "__warn_if_dir_not_empty" in inspect.getsource(ModelCheckpoint.setup)
    with pytest.warns(UserWarning, match="exists and is not empty"):
        ModelCheckpoint(dirpath=tmp_path)._ModelCheckpoint__warn_if_dir_not_empty(tmp_path)
    ckpt = Checkpoint(dirpath=tmp_path)
    ckpt.resuming = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt._ModelCheckpoint__warn_if_dir_not_empty(tmp_path)


def test_the_progress_bar_describes_the_step_limit():
    src = inspect.getsource(RichProgressBar)
    assert "self._get_train_description(" in src
    bar = ProgressBar()
    trainer = SimpleNamespace(max_epochs=-1, max_steps=300)
    bar._trainer = trainer
    assert bar._get_train_description(4) == "Epoch 4 (stops at step 300)"
    trainer.max_epochs, trainer.max_steps = 10, -1
    assert bar._get_train_description(4).startswith("Epoch 4/9")
