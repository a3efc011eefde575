"""The command lines the documentation gives, and the ``--set`` overrides that shrink a shipped
config to seconds. Used by test_documented_commands.py and test_run_records.py.

Extracted, in document order:

* every line of the fenced ``bash``/``sh``/``shell``/``console`` (or untagged) blocks of
  README.md and jobs/README.md; one block is one scenario (its lines share a working folder, in
  order, as a reader would type them);
* the usage lines of the header comment of every script in jobs/ (``#   <command>``: a comment
  indented by three or more spaces); one script is one scenario.

Trailing ``# comments`` are cut (``# -> file, file`` is kept apart: the outputs the line
promises). ``[--set k=v ...]`` (an optional part with an example) keeps its example;
``[CONFIG]`` (an optional placeholder) is dropped, so a synopsis runs with the defaults.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = ("README.md", "jobs/README.md")
SHELL_LANGS = {"bash", "sh", "shell", "console", ""}


@dataclass
class DocLine:
    """One documented command line."""

    source: str            # file:line
    command: str           # the command, comment and optional placeholders removed
    promises: list[str] = field(default_factory=list)  # files named after '# ->'


@dataclass
class Scenario:
    """Documented lines that are meant to run one after the other in one folder."""

    name: str
    lines: list[DocLine]


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment): the comment starts at a ``#`` outside quotes that follows a blank."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


_OPTIONAL = re.compile(r"\s+\[([^\[\]]*)\](?=\s|$)")  # a token [ ... ], not ".[dev]"


def _drop_optional(command: str) -> str:
    """``[--set a.b=1 ...]`` -> ``--set a.b=1``; ``[CONFIG]``, ``[--set key=value ...]`` -> ''."""

    def repl(m: re.Match) -> str:
        inner = m.group(1).replace("...", "").strip()
        placeholder = re.search(r"\b[A-Z][A-Z_]+\b", inner) or re.search(r"\bkey=value\b", inner)
        return "" if placeholder or not inner else " " + inner

    return _OPTIONAL.sub(repl, command).strip()


def _promises(comment: str) -> list[str]:
    """Files named by a ``# -> a.h5, b.json (remark)`` comment."""
    if not comment.startswith("->"):
        return []
    names = [t.strip() for t in comment[2:].split("(")[0].split(",")]
    return [t for t in names if re.fullmatch(r"[\w./-]+\.(h5|pt|json|md|yaml)", t)]


def _doc_line(source: str, raw: str) -> DocLine | None:
    command, comment = split_comment(raw)
    command = _drop_optional(command)
    if not command:
        return None
    return DocLine(source, command, _promises(comment))


def markdown_scenarios(rel: str) -> list[Scenario]:
    """One scenario per shell block of the markdown file ``rel``."""
    text = (REPO / rel).read_text().splitlines()
    out: list[Scenario] = []
    in_block, lang, start, lines = False, "", 0, []
    for no, raw in enumerate(text, 1):
        fence = re.match(r"^\s*```\s*(\w*)", raw)
        if fence and not in_block:
            in_block, lang, start, lines = True, fence.group(1), no, []
            continue
        if fence and in_block:
            in_block = False
            if lang in SHELL_LANGS and lines:
                out.append(Scenario(f"{rel}:{start}", lines))
            continue
        if in_block and lang in SHELL_LANGS:
            line = _doc_line(f"{rel}:{no}", raw.strip())
            if line is not None:
                lines.append(line)
    return out


def script_scenarios() -> list[Scenario]:
    """One scenario per script of jobs/ with usage lines in its header comment."""
    out = []
    for path in sorted((REPO / "jobs").glob("*")):
        if path.suffix not in (".sh", ".sbatch"):
            continue
        lines = []
        for no, raw in enumerate(path.read_text().splitlines(), 1):
            if not raw.startswith("#") and not raw.startswith("#!"):
                break  # the header comment ends at the first line of code
            m = re.match(r"^#\s{3,}(\S.*)$", raw)
            if m:
                line = _doc_line(f"jobs/{path.name}:{no}", m.group(1))
                if line is not None:
                    lines.append(line)
        if lines:
            out.append(Scenario(f"jobs/{path.name}", lines))
    return out


def all_scenarios() -> list[Scenario]:
    out = []
    for rel in DOC_FILES:
        out += markdown_scenarios(rel)
    return out + script_scenarios()


# ------------------------------------------------------------------ shrinking a config to seconds

#: per config section, the overrides that make a documented command take seconds; the values
#: keep every code path (several chains, chunked commits, checkpoints, a resumed log, the eval)
SHRINK = {
    "hmc": {"n_chains": 2, "n_therm": 20, "n_traj": 24, "n_steps": 2},
    "flow": {"n_layers": 2, "hidden_channels": "[4]"},
    "train": {"steps": 3, "time_budget": "null", "batch_size": 8, "eval_samples": 64,
              "eval_batch_size": 64, "log_every": 1, "checkpoint_every": 2},
    "sample": {"n_chains": 2, "n_samples": 24, "batch_size": 16},
    "output": {"chunk_rows": 8},
}


def shrink_overrides(config: Path, doc_sets: list[str] | tuple[str, ...] = ()) -> list[str]:
    """``--set`` arguments shrinking the sections ``config`` has (never adding a section).

    A count the documented line sets itself (``doc_sets``, e.g. ``sample.n_samples=8000`` to
    extend a chain) is shrunk by the same factor as the config's own value, rounded up, so the
    line still means "more than the config": shrunk value x (documented / config value)."""
    raw = yaml.safe_load(config.read_text())
    doc = dict(s.split("=", 1) for s in doc_sets if "=" in s)
    args = ["--set", "device=cpu"]
    for section, keys in SHRINK.items():
        if section in raw:
            for k, v in keys.items():
                key = f"{section}.{k}"
                base = (raw.get(section) or {}).get(k)
                if key in doc and isinstance(v, int) and isinstance(base, (int, float)) and base > 0:
                    v = math.ceil(v * float(doc[key]) / base)
                args += ["--set", f"{key}={v}"]
    return args
