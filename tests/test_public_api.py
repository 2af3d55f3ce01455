"""The public API: every exported name resolves, and ``import mafl_graph`` stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mafl_graph


def test_every_exported_name_resolves_to_where_it_lives() -> None:
    assert sorted(mafl_graph.__all__) == sorted(mafl_graph._EXPORTS)
    for name in mafl_graph.__all__:
        value = getattr(mafl_graph, name)
        assert getattr(value, "__name__", name) == name, name
    assert set(mafl_graph.__all__) <= set(dir(mafl_graph))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        mafl_graph.no_such_name  # noqa: B018


def test_importing_the_package_imports_none_of_the_heavy_libraries() -> None:
    heavy = ["torch", "transformers", "datasets", "sympy", "langgraph", "langchain_core"]
    code = (
        "import sys, json, mafl_graph; "
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_the_command_line_help_imports_none_of_the_heavy_libraries() -> None:
    heavy = ["torch", "transformers", "datasets", "sympy", "peft"]
    code = (
        "import sys, json\n"
        "from mafl_graph.cli import app\n"
        "for args in (['--help'], ['loop', '--help'], ['tune', '--help'], ['experts', '--help'],\n"
        "             ['svf', '--help'], ['svf', 'train', '--help']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, (args, exit.code)\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_hosted_providers_and_langsmith_come_with_a_plain_install() -> None:
    from importlib.metadata import requires

    core = {
        r.split(">")[0].split("<")[0].split("[")[0].strip()
        for r in requires("mafl-graph") or []
        if "extra ==" not in r
    }
    wanted = {"langgraph", "langchain-core", "langchain-google-genai", "openai", "langsmith"}
    assert wanted | {"datasets", "sympy", "pydantic", "langchain-openai"} <= core
    assert not {"torch", "transformers", "peft"} & core
