"""The stubs match the module, and help() has something to read."""

import ast
import inspect
import pathlib
import pydoc

import mediamem
from mediamem import Gst, GstAllocators, _mediamem

STUB = pathlib.Path(mediamem.__file__).with_name("_mediamem.pyi")


def stub_names():
    tree = ast.parse(STUB.read_text())
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names[node.name] = (
                {n.name for n in node.body if isinstance(n, ast.FunctionDef)},
                {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)},
            )
        elif isinstance(node, ast.FunctionDef):
            names[node.name] = None
        elif isinstance(node, ast.AnnAssign):
            names[node.target.id] = None
    return names


def public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


def test_stubs_name_everything_the_module_has_and_nothing_more():
    stubs = stub_names()
    module = public(_mediamem) | {"__version__"}
    assert module - {"Mapping"} <= set(stubs) | {"__version__"}, module - set(stubs)
    for name, members in stubs.items():
        if name.startswith("_") and name != "__version__":
            continue
        assert hasattr(_mediamem, name), f"stub names {name}, the module has none"
        if members:
            methods, attributes = members  # attributes may be per instance
            cls = getattr(_mediamem, name)
            for m in methods - {"__init__", "__buffer__"}:
                assert hasattr(cls, m), f"{name}.{m} is in the stub only"
            inherited = set().union(*(public(b) for b in cls.__mro__[1:]))
            missing = public(cls) - methods - attributes - inherited
            assert not missing, f"{name}: not in the stub: {missing}"


def test_everything_public_has_a_docstring():
    for modname, mod in (("mediamem", mediamem), ("Gst", Gst), ("GstAllocators", GstAllocators)):
        assert mod.__doc__
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.isclass(obj) or callable(obj):
                assert obj.__doc__, f"{modname}.{name}"
    for cls in (
        mediamem.Memory, mediamem.MapInfo, mediamem.Allocator, mediamem.FdAllocator,
        mediamem.DmaBufAllocator, mediamem.DRMDumbAllocator, mediamem.MemoryPool,
        mediamem.Sender, mediamem.Receiver,
    ):
        for name in public(cls):
            assert getattr(cls, name).__doc__, f"{cls.__name__}.{name}"


def test_help_reads_well():
    text = pydoc.render_doc(GstAllocators, renderer=pydoc.plaintext)
    for name in ("fd_memory_get_fd", "is_dmabuf_memory", "phys_memory_get_phys_addr", "FdAllocator"):
        assert name in text
    text = pydoc.render_doc(mediamem.Memory, renderer=pydoc.plaintext)
    assert "map(self, /, flags)" in text or "map(flags)" in text or "map(" in text
    assert "memoryview" in text
