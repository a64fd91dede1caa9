"""The configuration reference, generated: `python -m rankseg_jax.config.reference`.

Written to docs/configs.md: `python -m rankseg_jax.config.reference > docs/configs.md`.
Everything comes from the code, so the page cannot drift (`tests/docs/test_configs_reference.py`
regenerates it and compares):
  * every option of `schema.base_config()` with its default (the value, not the source text)
    and its comment in `schema.py`: the comment on the assignment's line(s), preceded by the
    comment block directly above it (a block above a `ConfigDict()` describes the section);
  * every `configs/*.py`: the first paragraph of its docstring, the variant flags it accepts
    (with their defaults, as its `get_config` declares them) and the options it sets to
    something other than the schema default.
An option of `base_config()` that the source scan cannot find raises, so a new option
written in an unusual way fails the test instead of vanishing from the page.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import pathlib
import re
import sys
import tokenize

import ml_collections as mlc

from rankseg_jax.config import schema, variants

SECTION_RULE = "-----"  # `# ----- model` separator comments are not descriptions


def _comments(source: str) -> tuple[dict[int, str], set[int]]:
    """({line: comment text}, lines holding nothing but a comment)."""
    comments, alone = {}, set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            comments[line] = tok.string.lstrip("#").strip()
            if not tok.line[:tok.start[1]].strip():
                alone.add(line)
    return comments, alone


def _block_above(line: int, comments: dict[int, str], alone: set[int]) -> list[str]:
    """The comment-only lines directly above `line` (no blank line between), in order."""
    block = []
    line -= 1
    while line in alone:
        block.append(comments[line])
        line -= 1
    return [] if any(SECTION_RULE in c for c in block) else block[::-1]


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """`m.vit` -> 'model.vit' (aliases: local name -> dotted section; 'c' is the root)."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        parent = _dotted(node.value, aliases)
        if parent is not None:
            return f"{parent}.{node.attr}" if parent else node.attr
    return None


def schema_comments() -> tuple[dict[str, str], dict[str, str]]:
    """({option: comment}, {section: comment}) from the source of `schema.base_config`."""
    source = inspect.getsource(schema)
    comments, alone = _comments(source)
    func = next(n for n in ast.parse(source).body
                if isinstance(n, ast.FunctionDef) and n.name == "base_config")
    body = [n for n in func.body if isinstance(n, ast.Assign)]
    aliases = {body[0].targets[0].id: ""}  # `c = mlc.ConfigDict()`: the root
    options, sections = {}, {}
    for stmt in body[1:]:
        names = [_dotted(t, aliases) for t in stmt.targets]
        lines = range(stmt.lineno, stmt.end_lineno + 1)
        text = " ".join(_block_above(stmt.lineno, comments, alone)
                        + [comments[n] for n in lines if n in comments and n not in alone])
        is_section = isinstance(stmt.value, ast.Call) and ast.unparse(stmt.value.func).endswith(
            "ConfigDict")
        if is_section:  # `c.model = m = mlc.ConfigDict()`: m is 'model' from here on
            dotted = next(n for n in names if n)
            for t in stmt.targets:
                if isinstance(t, ast.Name):
                    aliases[t.id] = dotted
            sections[dotted] = text
        else:
            for n in names:
                if n:
                    options[n] = text
    return options, sections


def enum_choices() -> dict[str, tuple]:
    """{option: choices} of the enumerated options, from `validation.py`'s `choice(...)`
    calls (the only place that enforces them)."""
    from rankseg_jax.config import validation

    found = re.findall(r"choice\([^,]+,\s*schema\.(\w+),\s*\"([\w.]+)\"\)",
                       inspect.getsource(validation))
    return {option: getattr(schema, const) for const, option in found}


def _flat(config: mlc.ConfigDict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, mlc.ConfigDict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _value(value) -> str:
    text = repr(value)
    return f"`{_cell(text)}`" if len(text) <= 60 else f"<code>{_cell(text)}</code>"


def schema_section() -> list[str]:
    """The options table of every section, in schema order."""
    options, sections = schema_comments()
    choices = enum_choices()
    values = _flat(schema.base_config())
    missing = sorted(set(values) - set(options))
    if missing:
        raise RuntimeError(f"options of base_config() not found in schema.py's source: {missing}")
    lines, current = [], None
    for name in options:  # schema order
        value = values[name]
        section = name.rpartition(".")[0]
        if section != current:
            current = section
            lines += ["", f"### `{section or '(top level)'}`", ""]
            if sections.get(section):
                lines += [sections[section], ""]
            lines += ["| option | default | description |", "| --- | --- | --- |"]
        text = options[name]
        if name in choices:
            text += f" One of: {', '.join(f'`{c}`' for c in choices[name])}."
        lines.append(f"| `{name}` | {_value(value)} | {_cell(text.strip())} |")
    return lines


@contextlib.contextmanager
def _recording_variant_flags(seen: list[dict]):
    """Records the flag defaults every `variants.parse_arg` call declares."""
    original = variants.parse_arg

    def recording(arg, **defaults):
        seen.append(dict(defaults))
        return original(arg, **defaults)

    variants.parse_arg = recording
    try:
        yield
    finally:
        variants.parse_arg = original


def config_files_section(configs_dir: pathlib.Path) -> list[str]:
    """Per `configs/*.py`: summary, variant flags, options changed from the schema."""
    root = str(configs_dir.parent.absolute())
    if root not in sys.path:
        sys.path.insert(0, root)
    base = _flat(schema.base_config())
    order = list(schema_comments()[0])  # schema order
    lines = []
    for path in sorted(configs_dir.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = importlib.import_module(f"{configs_dir.name}.{path.stem}")
        seen: list[dict] = []
        with _recording_variant_flags(seen):
            config = module.get_config(None)
        summary = " ".join(inspect.getdoc(module).split("\n\n")[0].split())
        flags = ", ".join(f"`{k}` ({v!r})" for k, v in (seen[0] if seen else {}).items())
        lines += ["", f"### `configs/{path.name}`", "", summary, "",
                  f"Variant flags (default): {flags or 'none'}.", "",
                  "| option | value | schema default |", "| --- | --- | --- |"]
        values = _flat(config)
        for name in order:
            if values[name] != base[name]:
                lines.append(f"| `{name}` | {_value(values[name])} | {_value(base[name])} |")
    return lines


def render(configs_dir: str | pathlib.Path | None = None) -> str:
    """The whole page (Markdown). configs_dir: the `configs/` folder (default: the one next to
    the package in a source checkout; omitted when there is none)."""
    if configs_dir is None:
        configs_dir = pathlib.Path(__file__).resolve().parents[2] / "configs"
    configs_dir = pathlib.Path(configs_dir)
    variant_doc = inspect.getdoc(variants).split("\n\n")
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m rankseg_jax.config.reference > docs/configs.md`; do not "
        "edit. tests/docs/test_configs_reference.py fails when it is out of date. -->",
        "",
        "Every option, its default and its comment come from `rankseg_jax/config/schema.py`"
        " (`base_config()`); config files only change values. Override any option on the "
        "command line with `--config.<option>=<value>` (tuples as `'(512, 512)'`). "
        "Options are validated once, before anything compiles (`rankseg_jax/config/"
        "validation.py`); an error names the option.",
        "",
        "## Config files and variants",
        "",
        "A config file takes variant flags after a colon, e.g. `configs/ade20k.py:vit_l` or "
        "`configs/demo.py:steps=300` (`rankseg_jax/config/variants.py`):",
        "",
        " ".join(variant_doc[1].split()),
        "",
        "```",
        *variant_doc[2].splitlines(),
        "```",
        "",
        *(" ".join(paragraph.split()) + "\n" for paragraph in variant_doc[3:]),
    ]
    if configs_dir.is_dir():
        lines += config_files_section(configs_dir)
    lines += ["", "## Options", *schema_section(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
