"""examples/python/gstallocators_nine.py, written against PyGObject's
GstAllocators, runs on mediamem with only its import line changed; where
the host's PyGObject and GStreamer are there (Debian's /usr/bin/python3
with python3-gi, gir1.2-gst-plugins-base-1.0), the PyGObject version runs
too and both print the same."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "examples/python/gstallocators_nine.py"
MEDIAMEM_IMPORT = "from mediamem import Gst, GstAllocators  # IMPORT"
GI_IMPORT = (
    'import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstAllocators", "1.0"); '
    "from gi.repository import Gst, GstAllocators  # IMPORT"
)
SYSTEM_PYTHON = "/usr/bin/python3"


def run(python, path):
    out = subprocess.run([python, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_the_script_differs_from_pygobject_by_its_import_line_only():
    text = SCRIPT.read_text()
    assert text.splitlines().count(MEDIAMEM_IMPORT) == 1
    tree = ast.parse(text)
    # mediamem appears in the code only as that import: no other import of
    # it, no name or attribute of it
    imports = [
        n for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("mediamem")
        or isinstance(n, ast.Import) and any(a.name.startswith("mediamem") for a in n.names)
    ]
    assert len(imports) == 1 and imports[0].module == "mediamem"
    assert [a.name for a in imports[0].names] == ["Gst", "GstAllocators"]
    assert not [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Name) and n.id == "mediamem"
        or isinstance(n, ast.Attribute) and n.attr == "mediamem"
    ]
    # and the PyGObject line replaces it exactly
    gi_text = text.replace(MEDIAMEM_IMPORT, GI_IMPORT, 1)
    assert "from mediamem" not in gi_text
    ast.parse(gi_text)


def test_the_script_runs_on_mediamem():
    out = run(sys.executable, SCRIPT)
    assert out[-1] == "done"
    assert "fd memory keeps the fd number: True" in out
    assert "dma-buf memory keeps the fd number: True" in out
    assert "mapped: True b'hello'" in out
    # every one of the nine functions was called
    text = SCRIPT.read_text()
    for name in (
        "dmabuf_memory_get_fd", "drm_dumb_memory_export_dmabuf", "drm_dumb_memory_get_handle",
        "fd_memory_get_fd", "is_dmabuf_memory", "is_drm_dumb_memory", "is_fd_memory",
        "is_phys_memory", "phys_memory_get_phys_addr",
    ):
        assert f"GstAllocators.{name}(" in text
    assert any(l.startswith("drm: fd memory: is_drm_dumb_memory=False") for l in out)


def pygobject_available():
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} is missing"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", GI_IMPORT.replace("  # IMPORT", "")],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return (
            "PyGObject with GstAllocators is not installed for /usr/bin/python3 "
            "(apt-get install python3-gi python3-gst-1.0 gir1.2-gst-plugins-base-1.0): "
            + probe.stderr.strip().splitlines()[-1]
        )
    return None


def test_pygobject_prints_the_same(tmp_path):
    if os.environ.get("MEDIAMEM_REQUIRE_DEVICES"):
        pytest.skip("compared on the host; the guest runs the device tests")
    why = pygobject_available()
    if why:
        pytest.skip(why)
    gi_script = tmp_path / "gi_version.py"
    gi_script.write_text(SCRIPT.read_text().replace(MEDIAMEM_IMPORT, GI_IMPORT, 1))
    ours = run(sys.executable, SCRIPT)
    theirs = run(SYSTEM_PYTHON, gi_script)
    assert theirs[-1] == "done"
    # Known differences, none of them in the Python API: the DRM functions
    # are GStreamer 1.24's (lines "drm: ..."; the host has 1.22), and
    # mediamem's fd memory implements is_span where 1.22's falls back to
    # "never spans".
    def comparable(lines):
        return [l for l in lines if not l.startswith("drm:") and not l.startswith("adjacent shares span")]

    assert comparable(ours) == comparable(theirs)
    assert "adjacent shares span: (True, 0)" in ours
    assert "adjacent shares span: (False, 0)" in theirs
