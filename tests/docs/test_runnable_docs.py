"""The shell blocks of README.md and docs/*.md run as written (the convention:
docs/getting_started.md, "Runnable docs").

Every ```bash block has a marker on the line above its fence: `<!-- runnable -->`,
`<!-- runnable: ARGS -->` (ARGS appended to each `main.py` command: the documented way to
shorten a training run) or `<!-- needs: WHAT -->` (not run: TPU, GPU, network, ...). The
runnable blocks of one file run in order in one temporary copy of the repository.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NEEDS = {"tpu", "gpu", "cloud", "slurm", "cluster", "download", "dataset", "suite",
         "your-files"}
MARKER = re.compile(r"^<!--\s*(runnable|needs)\s*(?::\s*(.*?))?\s*-->\s*$")
SHELL_FENCE = re.compile(r"^```(bash|sh|shell)\s*$")
COMMAND_START = re.compile(r"^(python3?|pip|gcloud|gsutil|srun|sbatch|bash|cd|export|wget) ")
# Test-only: XLA:CPU's cheap optimisation level (compilation dominates a shortened run).
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@dataclasses.dataclass
class Block:
    path: pathlib.Path
    line: int  # 1-based line of the opening fence
    code: str
    kind: str | None  # 'runnable' | 'needs' | None (no marker)
    arg: str  # the marker's text after ':'

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def shell_blocks(path: pathlib.Path) -> tuple[list[Block], list[int]]:
    """(the shell blocks of `path`, lines of plain ``` blocks whose first line is a command)."""
    lines = path.read_text().splitlines()
    blocks, bare, i = [], [], 0
    while i < len(lines):
        fence = lines[i].strip()
        if not fence.startswith("```"):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
        body = lines[i + 1:end]
        if SHELL_FENCE.match(fence):
            marker = MARKER.match(lines[i - 1].strip()) if i else None
            blocks.append(Block(path, i + 1, "\n".join(body) + "\n",
                                marker.group(1) if marker else None,
                                (marker.group(2) or "") if marker else ""))
        elif fence == "```" and body and COMMAND_START.match(body[0]):
            bare.append(i + 1)
        i = end + 1
    return blocks, bare


def all_blocks() -> list[Block]:
    return [b for path in DOCS for b in shell_blocks(path)[0]]


def join_continuations(code: str) -> str:
    return re.sub(r"\\\n\s*", "", code)


def rewrite(code: str, args: str, tmp: pathlib.Path) -> str:
    """What the test runs for a block (the convention's rewrites)."""
    code = join_continuations(code)
    code = re.sub(r"\bpip3? install[^&;|\n]*?(?=\s*(?:&&|;|\||$))", "true", code,
                  flags=re.M)  # never install
    code = code.replace("/tmp/", f"{tmp}/")
    if args:
        code = "\n".join(f"{line} {args}" if re.search(r"\bmain\.py\b", line) else line
                         for line in code.splitlines()) + "\n"
    return code


# --------------------------------------------------------------------------- the markers


def test_every_shell_block_is_marked():
    unmarked = [b.where() for b in all_blocks() if b.kind is None]
    assert not unmarked, ("shell blocks without <!-- runnable --> or <!-- needs: ... --> "
                          f"(docs/getting_started.md): {unmarked}")


def test_no_command_hides_in_a_plain_block():
    bare = [f"{p.relative_to(ROOT)}:{n}" for p in DOCS for n in shell_blocks(p)[1]]
    assert not bare, f"use ```bash and a marker for these command blocks: {bare}"


def test_needs_markers_name_known_requirements():
    for b in all_blocks():
        if b.kind == "needs":
            what = {w.strip() for w in b.arg.split(",")}
            assert what and what <= NEEDS, f"{b.where()}: needs {what - NEEDS} (known: {NEEDS})"
        elif b.kind == "runnable" and b.arg:
            assert "main.py" in b.code, f"{b.where()}: arguments for a block without main.py"


def test_rewrites(tmp_path):
    code = ("pip install -r requirements.txt && python main.py --config=configs/demo.py \\\n"
            "    --workdir=/tmp/demo\npython -m rankseg_jax.convert --out=/tmp/x\n")
    out = rewrite(code, "--config.train.steps=2", tmp_path)
    assert out.splitlines() == [
        f"true && python main.py --config=configs/demo.py --workdir={tmp_path}/demo "
        "--config.train.steps=2",
        f"python -m rankseg_jax.convert --out={tmp_path}/x"]


def test_marker_parsing(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("<!-- runnable: --config.train.steps=2 -->\n```bash\npython main.py\n```\n"
                   "\n```bash\nls\n```\n<!-- needs: tpu, cloud -->\n```bash\ngcloud x\n```\n"
                   "```\npython main.py --help\n```\n")
    blocks, bare = shell_blocks(doc)
    assert [(b.kind, b.arg) for b in blocks] == [
        ("runnable", "--config.train.steps=2"), (None, ""), ("needs", "tpu, cloud")]
    assert bare == [13]


# --------------------------------------------------------------------------- running them


def _runnable_files() -> list[pathlib.Path]:
    return [p for p in DOCS if any(b.kind == "runnable" for b in shell_blocks(p)[0])]


@pytest.mark.slow
@pytest.mark.parametrize("doc", _runnable_files(), ids=lambda p: p.name)
def test_runnable_blocks_run(doc, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", "runs", ".pytest_cache"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, PYTHONPATH=str(repo), TMPDIR=str(scratch), JAX_PLATFORMS="cpu",
               PATH=os.pathsep.join([str(pathlib.Path(sys.executable).parent),
                                     os.environ.get("PATH", "")]),
               XLA_FLAGS=" ".join(filter(None, [os.environ.get("XLA_FLAGS"), FAST_XLA])),
               # Blocks share compilations (train's evaluation -> eval, predict), through
               # the session's cache (tests/conftest.py) when there is one.
               JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                        str(tmp_path / "jax_cache")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    for block in (b for b in shell_blocks(doc)[0] if b.kind == "runnable"):
        code = rewrite(block.code, block.arg, scratch)
        proc = subprocess.run(["bash", "-e", "-c", code], cwd=repo, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        assert proc.returncode == 0, (f"{block.where()} failed ({proc.returncode}):\n{code}\n"
                                      f"{proc.stdout[-3000:]}")
