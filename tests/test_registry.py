"""Entry-point registry behaviours on synthetic distributions (nothing installed)."""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest

from facecoreset_plugin import PluginRegistry, load
from facecoreset_plugin.errors import PluginLoadError, UnknownPluginError

GROUP = "facecoreset.aggregators"


def _dist(root, name, entries, version="1.0"):
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}\n")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _module(root, name, body):
    (root / f"{name}.py").write_text(textwrap.dedent(body))


GOOD = """
from facecoreset_plugin import Aggregator
class Summer(Aggregator):
    name = "summer"
    def aggregate(self, features, norms, mask, media, faceness):
        return (features * mask[..., None]).sum(1)
"""


@pytest.fixture
def plugin_root(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("fcs_test_")]:
        del sys.modules[mod]


def test_listing_imports_nothing_and_load_imports(plugin_root):
    _module(plugin_root, "fcs_test_good", GOOD)
    _dist(plugin_root, "goodpkg", {"summer": "fcs_test_good:Summer"})
    reg = PluginRegistry(GROUP, path=[str(plugin_root)])
    assert reg.names() == ["summer"]
    info = reg.entries()["summer"]
    assert (info.distribution, info.version, info.target) == ("goodpkg", "1.0", "fcs_test_good:Summer")
    assert "fcs_test_good" not in sys.modules
    cls = reg.load("summer")
    assert cls.__name__ == "Summer" and "fcs_test_good" in sys.modules
    assert load(cls).name == "summer"


def test_unknown_name_lists_available_and_how_to_install(plugin_root):
    _module(plugin_root, "fcs_test_good", GOOD)
    _dist(plugin_root, "goodpkg", {"summer": "fcs_test_good:Summer", "other": "fcs_test_good:Summer"})
    reg = PluginRegistry(GROUP, path=[str(plugin_root)])
    with pytest.raises(UnknownPluginError) as err:
        reg.load("sumer")
    msg = str(err.value)
    assert "'sumer'" in msg and "other, summer" in msg and GROUP in msg and "install" in msg


def test_broken_import_raises_chained_error_naming_plugin_and_distribution(plugin_root):
    _module(plugin_root, "fcs_test_good", GOOD)
    _module(plugin_root, "fcs_test_broken", "import does_not_exist_anywhere_42\n")
    _dist(plugin_root, "goodpkg", {"summer": "fcs_test_good:Summer"})
    _dist(plugin_root, "brokenpkg", {"broken": "fcs_test_broken:Thing"}, version="0.3")
    reg = PluginRegistry(GROUP, path=[str(plugin_root)])
    assert reg.names() == ["broken", "summer"]
    with pytest.raises(PluginLoadError) as err:
        reg.load("broken")
    assert "'broken'" in str(err.value) and "brokenpkg 0.3" in str(err.value)
    assert isinstance(err.value.__cause__, ModuleNotFoundError)
    assert reg.load("summer").__name__ == "Summer"  # the others still work


def test_missing_module_warns_at_listing_and_others_work(plugin_root):
    _module(plugin_root, "fcs_test_good", GOOD)
    _dist(plugin_root, "goodpkg", {"summer": "fcs_test_good:Summer"})
    _dist(plugin_root, "ghostpkg", {"ghost": "fcs_test_ghost_module:Ghost"})
    reg = PluginRegistry(GROUP, path=[str(plugin_root)])
    with pytest.warns(UserWarning, match=r"'ghost'.*ghostpkg.*cannot be found"):
        names = reg.names()
    assert names == ["summer"]


def test_malformed_declaration_warns(plugin_root):
    _module(plugin_root, "fcs_test_good", GOOD)
    _dist(plugin_root, "goodpkg", {"summer": "fcs_test_good:Summer", "bad": "not a valid :: spec"})
    reg = PluginRegistry(GROUP, path=[str(plugin_root)])
    with pytest.warns(UserWarning, match="malformed"):
        assert "summer" in reg.names()


def test_duplicate_names_warn_and_builtin_wins(plugin_root):
    _module(plugin_root, "fcs_test_good", GOOD)
    _module(plugin_root, "fcs_test_other", GOOD.replace("Summer", "Other"))
    _dist(plugin_root, "aaa_thirdparty", {"summer": "fcs_test_other:Other"})
    _dist(plugin_root, "facecoreset", {"summer": "fcs_test_good:Summer"})
    reg = PluginRegistry(GROUP, path=[str(plugin_root)])
    with pytest.warns(UserWarning, match=r"2 plugins are registered as 'summer'.*using fcs_test_good:Summer from facecoreset"):
        entries = reg.entries()
    assert entries["summer"].distribution == "facecoreset"
    assert reg.load("summer").__name__ == "Summer"


def test_listing_is_cached_until_refresh(plugin_root):
    _module(plugin_root, "fcs_test_good", GOOD)
    _dist(plugin_root, "goodpkg", {"summer": "fcs_test_good:Summer"})
    reg = PluginRegistry(GROUP, path=[str(plugin_root)])
    assert reg.names() == ["summer"]
    _dist(plugin_root, "laterpkg", {"later": "fcs_test_good:Summer"})
    assert reg.names() == ["summer"]
    assert reg.names(refresh=True) == ["later", "summer"]


def test_builtin_registries_list_the_documented_names():
    from facecoreset_plugin import available

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the project's own declarations are clean
        assert {"mean", "quality_weighted", "media_fusion", "coreset_attention", "coreset_fps"} <= set(available("aggregators"))
        assert {"ir_18", "ir_50", "ir_101", "timm"} <= set(available("backbones"))
        assert {"ijbb", "ijbc", "synthetic"} <= set(available("protocols"))
    with pytest.raises(UnknownPluginError, match="valid kinds"):
        available("aggregator")
