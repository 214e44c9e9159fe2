"""Models come from one name table: the built-ins plus plugins of the `vsearch.models` entry-point
group.

The test model test-tiny is one such plugin (tests/plugins/vsearch_test_models, installed by
`make test`), so it is not a name vsearch itself knows.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

from vsearch.embedders import load_embedder, registered_models, registry
from vsearch.errors import ModelError

PACKAGE = Path(__file__).resolve().parent.parent / "vsearch"


@pytest.fixture
def plugins(monkeypatch, tmp_path):
    """Install fake plugins: {module name: source}; returns a function that rebuilds the table with
    them."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_registry", None)

    def install(modules: dict[str, str]) -> registry.ModelRegistry:
        eps = []
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
            eps.append(
                EntryPoint(
                    name=name.replace("_", "-"), value=name, group=registry.ENTRY_POINT_GROUP
                )
            )
        monkeypatch.setattr(registry, "_plugin_entry_points", lambda: eps)
        monkeypatch.setattr(registry, "_registry", None)
        return registry.registry()

    yield install
    # monkeypatch restores the real table's absence; the next use reloads it
    registry._registry = None


CONSTANT_PLUGIN = """
import numpy as np

class Constant:
    name = "constant"; dim = 4; fingerprint = "constant:v1"; supports_text = False
    input_size = 8; precision = "fp32"
    def __init__(self, spec): self.name = spec
    def embed_images(self, images):
        return np.tile(np.array([[1, 0, 0, 0]], dtype=np.float32), (len(images), 1))

def register_models(register):
    register("constant", lambda spec, pretrained=None, *, precision="auto": Constant(spec),
             help="every image is the same vector")
"""


def test_test_tiny_comes_from_the_test_plugin_not_from_vsearch():
    tiny = [e for e in registered_models() if e.name == "test-tiny"]
    assert len(tiny) == 1 and tiny[0].source.startswith("plugin")
    assert {"clip", "hf-hub", "efficientnet-lite0"} <= {
        e.name for e in registered_models() if e.source == "vsearch"
    }
    mentions = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "test-tiny" in p.read_text(encoding="utf-8")
    ]
    assert mentions == [], f"vsearch itself still names the test model: {mentions}"


def test_a_plugin_adds_a_model_by_name(plugins):
    table = plugins({"vsearch_constant": CONSTANT_PLUGIN})
    assert "constant" in table.names() and "clip" in table.names()
    emb = load_embedder("constant")
    assert emb.name == "constant"
    np.testing.assert_array_equal(emb.embed_images([None, None]), [[1, 0, 0, 0], [1, 0, 0, 0]])
    # options reach the factory
    assert load_embedder("constant:anything").name == "constant:anything"


def test_unknown_name_lists_every_registered_model_and_broken_plugins(plugins):
    plugins(
        {
            "vsearch_constant": CONSTANT_PLUGIN,
            "vsearch_broken": "import no_such_module_anywhere\n",
            "vsearch_greedy": "def register_models(register):\n    register('clip', lambda *a, "
            "**k: None)\n",
        }
    )
    with pytest.raises(ModelError) as err:
        load_embedder("resnet-9000")
    msg = str(err.value)
    for name in (
        "'clip'",
        "'hf-hub'",
        "'efficientnet-lite0'",
        "'constant' (every image is the same vector)",
    ):
        assert name in msg
    assert "vsearch_broken" in msg and "no_such_module_anywhere" in msg
    assert "vsearch_greedy" in msg and "'clip'" in msg and "already registered by vsearch" in msg
    # the plugin that tried to take "clip" changed nothing: clip is still the built-in
    assert registry.lookup("clip").source == "vsearch"


def test_registered_names_must_be_plain_words():
    table = registry.ModelRegistry()
    with pytest.raises(ModelError, match="without ':'"):
        table.register("my:model", lambda *a, **k: None)
    with pytest.raises(ModelError, match="not callable"):
        table.register("my-model", "not a function")


def test_a_cli_subprocess_sees_the_installed_plugin_model(tmp_path):
    """The entry point is installed, not patched in: a fresh interpreter finds test-tiny too."""
    code = (
        "from vsearch.embedders import load_embedder; e = load_embedder('test-tiny', "
        "precision='fp32'); print(e.name, e.dim)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["test-tiny", "32"]
