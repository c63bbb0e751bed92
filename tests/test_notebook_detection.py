"""Who reads the messages: a notebook kernel's shell, not a process that only imported ipykernel."""

from __future__ import annotations

import subprocess
import sys

import nbformat
from nbclient import NotebookClient


def test_importing_ipykernel_does_not_make_a_terminal_program_a_notebook():
    # nbclient, a test session or a tool may import ipykernel without running inside a kernel: messages
    # must still name flags (--port), and the progress bar must still print lines, not redraw widgets.
    code = (
        "import ipykernel, IPython\n"
        "from anima_lora_flow.errors import current_audience, in_notebook_kernel\n"
        "print(in_notebook_kernel(), current_audience())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PATH": ""})
    assert out.stdout.split() == ["False", "cli"]


def test_a_notebook_kernel_is_recognised():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from anima_lora_flow.errors import current_audience, in_notebook_kernel\n"
        "print(in_notebook_kernel(), current_audience())"
    )])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    assert notebook.cells[0].outputs[0]["text"].split() == ["True", "notebook"]
