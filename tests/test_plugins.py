"""The plugin manager: registration, validation, broken and third-party plugins."""

import textwrap
import types

import pytest

import fclkit
from fclkit import UnknownComponentError
from fclkit.plugins import build_registry


def _plugin(name, **hooks):
    mod = types.ModuleType(name)
    for hook, classes in hooks.items():
        def impl(register, _classes=classes):
            for cls in _classes:
                register(cls)
        impl.__name__ = hook
        setattr(mod, hook, fclkit.hookimpl(impl))
    return mod


def _strategy(name):
    from conftest import PlainSGD

    return type(f"S_{name}", (PlainSGD,), {"name": name})


def test_builtins_come_through_the_entry_point_group():
    reg = build_registry()
    assert {"fedavg", "isolated"} <= set(reg.names("fusion"))
    assert {"mlp", "cnn"} <= set(reg.names("client_model"))
    assert "digits" in reg.names("benchmark") and "local" in reg.names("engine")
    assert reg.get("fusion", "fedavg").distribution == "fclkit"
    assert not [b for b in reg.broken if b.distribution == "fclkit"], reg.broken


def test_unknown_name_lists_available():
    with pytest.raises(UnknownComponentError) as err:
        build_registry().get("fusion", "nope")
    assert "unknown fusion 'nope'" in str(err.value) and "fedavg" in str(err.value)


def test_extra_plugin_registers_with_its_name():
    reg = build_registry([_plugin("my_plugin", register_strategies=[_strategy("mine")])])
    entry = reg.get("strategy", "mine")
    assert entry.plugin == "my_plugin"


def test_duplicate_name_is_refused_naming_both_plugins():
    reg = build_registry([
        _plugin("first_plugin", register_strategies=[_strategy("same")]),
        _plugin("second_plugin", register_strategies=[_strategy("same")]),
    ])
    assert reg.get("strategy", "same").plugin == "first_plugin"
    (problem,) = [b for b in reg.broken if b.plugin == "second_plugin"]
    assert "first_plugin" in problem.error and "second_plugin" in problem.error


def test_misspelt_hook_is_an_error_naming_plugin_and_hook():
    bad = _plugin("typo_plugin", register_strategys=[_strategy("typo")])
    reg = build_registry([bad])
    (problem,) = [b for b in reg.broken if b.plugin == "typo_plugin"]
    assert "register_strategys" in problem.error and "register_strategies" in problem.error
    assert "typo" not in reg.names("strategy")


@pytest.mark.parametrize("bad_cls,match", [
    (int, "not a subclass"),
    (fclkit.KnowledgeFusion, "a fusion) through register_client_models"),
    (type("NoName", (fclkit.ClientModel,), {"build": lambda *a: None}), "invalid name"),
    (type("Upper", (fclkit.ClientModel,), {"name": "Big", "build": lambda *a: None}),
     "invalid name"),
])
def test_invalid_registrations_are_refused(bad_cls, match):
    reg = build_registry([_plugin("odd_plugin", register_client_models=[bad_cls])])
    (problem,) = [b for b in reg.broken if b.plugin == "odd_plugin"]
    assert match in problem.error


@pytest.fixture
def installed_dists(tmp_path, monkeypatch):
    """Two 'installed' third-party distributions: one working, one that fails to import."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "good_fcl_plugin.py").write_text(textwrap.dedent("""
        import fclkit
        from conftest import PlainSGD

        class GoodStrategy(PlainSGD):
            name = "good"

        @fclkit.hookimpl
        def register_strategies(register):
            register(GoodStrategy)
    """))
    (site / "broken_fcl_plugin.py").write_text("raise ImportError('missing dependency xyz')\n")
    for dist, module in (("fclkit-plugin-good", "good_fcl_plugin"),
                         ("fclkit-plugin-broken", "broken_fcl_plugin")):
        info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(f"[fclkit]\n{module} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_third_party_loads_and_broken_one_is_reported(installed_dists, monkeypatch):
    monkeypatch.delenv("FCLKIT_LOAD_PLUGINS")
    reg = build_registry()
    good = reg.get("strategy", "good")
    assert (good.distribution, good.version) == ("fclkit-plugin-good", "1.2.3")
    (broken,) = [b for b in reg.broken if b.distribution == "fclkit-plugin-broken"]
    assert "missing dependency xyz" in broken.error
    assert "fedavg" in reg.names("fusion")  # the rest keeps working


def test_env_var_turns_third_party_off(installed_dists, monkeypatch):
    monkeypatch.setenv("FCLKIT_LOAD_PLUGINS", "")
    reg = build_registry()
    assert "good" not in reg.names("strategy") and not reg.broken
    assert "fedavg" in reg.names("fusion")


def test_env_var_allow_lists(installed_dists, monkeypatch):
    monkeypatch.setenv("FCLKIT_LOAD_PLUGINS", "fclkit-plugin-good")
    reg = build_registry()
    assert "good" in reg.names("strategy") and not reg.broken
