"""The IPython/Jupyter magics (%memit, %%memit, %mprun) in a real IPython InteractiveShell and in a
real Jupyter kernel (ipykernel, driven by nbclient through a small notebook). Both run in fresh
processes; the tests skip when IPython, ipykernel or nbclient are not installed."""

import os
import subprocess
import sys
import textwrap

import pytest

SHELL_PROGRAM = r'''
import json, os, sys, tempfile
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

shell = InteractiveShell.instance()
out = {}
def cell(name, source):
    with capture_output() as captured:
        result = shell.run_cell(source)
    out[name] = {"stdout": captured.stdout, "error": repr(result.error_in_exec or result.error_before_exec)}

cell("load", "%load_ext memsleuth")
cell("memit", "%memit big = b'x' * (60 * 2 ** 20)")
cell("memit_cell", "%%memit n = 50 * 2 ** 20\nkept = bytearray(n)\nkept[:] = b'y' * n\n")
cell("define", """
def build(n):
    data = b'z' * n
    small = [0] * 10
    return len(data)

def driver():
    return build(30 * 2 ** 20)
""")
cell("mprun", "%mprun -f build driver()")
cell("mprun_missing", "%mprun -f nosuch driver()")
cell("memit_object", "r = %memit -o -q x = [0] * 10**6\nprint('tracked', r.tracked_peak > 7_000_000)")
cell("restored", "print('restored', build.__name__, type(build).__name__)")
print(json.dumps(out))
'''


def _needs(*modules):
    for module in modules:
        pytest.importorskip(module, reason=f"{module} is a test-only dependency (.ci/run installs it)")


def test_magics_in_an_ipython_shell(tmp_path):
    _needs("IPython")
    proc = subprocess.run([sys.executable, "-c", SHELL_PROGRAM], capture_output=True, text=True, cwd=str(tmp_path),
                          timeout=300, env={**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")})
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("load", "memit", "memit_cell", "define", "mprun", "memit_object", "restored"):
        assert out[name]["error"] == "None", (name, out[name])
    memit = out["memit"]["stdout"]
    assert memit.startswith("peak memory: ") and ", increment: " in memit and ", tracked peak: " in memit, memit
    increment = float(memit.split("increment: ")[1].split()[0])
    tracked = float(memit.split("tracked peak: ")[1].split()[0])
    assert increment >= 55 and tracked >= 59.9, memit
    cell_increment = float(out["memit_cell"]["stdout"].split("increment: ")[1].split()[0])
    assert cell_increment >= 45, out["memit_cell"]  # the setup line's 0 B is not measured, the body's 50 MiB is
    table = out["mprun"]["stdout"]
    assert "function: build" in table and "Line Contents" in table, table
    row = [line for line in table.splitlines() if "data = b'z' * n" in line][0]
    assert "30.0 MiB" in row, row  # the exact Allocated column
    assert "could not find function 'nosuch'" in out["mprun_missing"]["error"] or \
        "could not find function 'nosuch'" in out["mprun_missing"]["stdout"], out["mprun_missing"]
    assert "tracked True" in out["memit_object"]["stdout"], out["memit_object"]
    assert "restored build function" in out["restored"]["stdout"]  # the name is the function again


NOTEBOOK_CELLS = [
    "%load_ext memsleuth",
    "%memit block = bytearray(40 * 2 ** 20); block[:] = b'q' * len(block)",
    textwrap.dedent("""
        def fill(n):
            values = list(range(n))
            return sum(values)
    """),
    "%mprun -f fill fill(10 ** 6)",
]


def test_magics_in_a_jupyter_kernel(tmp_path):
    _needs("IPython", "ipykernel", "nbclient", "nbformat")
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in NOTEBOOK_CELLS]
    # "python3" is ipykernel's own kernelspec: this interpreter, where memsleuth is installed.
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    def text(index):
        return "".join(o.get("text", "") for o in notebook.cells[index].outputs if o["output_type"] == "stream")

    memit = text(1)
    assert memit.startswith("peak memory: ") and "tracked peak: " in memit, memit
    assert float(memit.split("increment: ")[1].split()[0]) >= 35, memit
    table = text(3)
    assert "function: fill" in table, table
    row = [line for line in table.splitlines() if "values = list(range(n))" in line][0]
    fields = row.split()
    assert fields[5] == "1", row  # one occurrence
    assert float(fields[6]) >= 30 and fields[7] == "MiB", row  # Allocated: a million ints and their list


def test_load_ext_memory_profiler_under_run(tmp_path):
    _needs("IPython")
    program = tmp_path / "shell.py"
    program.write_text(textwrap.dedent("""
        from IPython.core.interactiveshell import InteractiveShell
        from IPython.utils.capture import capture_output

        shell = InteractiveShell.instance()
        with capture_output() as captured:
            shell.run_cell("%load_ext memory_profiler")
            result = shell.run_cell("%memit data = [0] * 10 ** 6")
        print("MEMIT", captured.stdout.strip(), result.success)
    """))
    binary = os.path.join(os.path.dirname(sys.executable), "memsleuth")
    proc = subprocess.run([binary, "run", "-q", str(program)], capture_output=True, text=True, cwd=str(tmp_path),
                          timeout=300, env={**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")})
    assert proc.returncode == 0, proc.stderr
    line = [l for l in proc.stdout.splitlines() if l.startswith("MEMIT")][0]
    assert "peak memory: " in line and "tracked peak: " in line and line.endswith("True"), line
