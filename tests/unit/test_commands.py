"""The jobs as users run them: every console command of pyproject.toml answers `--help` from the
installed venv, every `python jobs/<job>.py` answers it from a checkout, and every command the
docs show (README.md, docs/*.md, cluster/*.md) uses only flags that its job's `--help` lists."""

from __future__ import annotations

import functools
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, which pytest (the dev extra) requires there
    import tomli as tomllib

COMMANDS: dict[str, str] = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
    "scripts"
]
"""Console command -> 'module:function' ([project.scripts])."""
DOCS = [
    REPO_ROOT / "README.md",
    *sorted((REPO_ROOT / "docs").glob("*.md")),
    *sorted((REPO_ROOT / "cluster").glob("*.md")),
]
JOBS = {target.split(":")[0].removeprefix("jobs."): c for c, target in COMMANDS.items()}
"""jobs/<script>.py -> its console command (whose target is jobs.<script>:main)."""
JOB_CALL = re.compile(
    rf"(?:\bpython\S*\s+(?:\S*/)?jobs/(?P<script>{'|'.join(JOBS)})\.py"
    rf"|(?<![\w/:.-])(?P<command>{'|'.join(COMMANDS)}))(?![\w-])"
    r"(?P<args>[^|;&#>`\n]*)"
)
"""A job run in a doc: `python jobs/train.py ...` or `unet-train ...`, up to a pipe, `;`, `&&`,
a comment, a redirect or the end of an inline code span."""
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
"""A Markdown link or image: [text](target) or ![alt](target "title"); group 1 is the target."""


@functools.cache
def help_text(command: str) -> str:
    """`<command> --help` of the venv's console command (the same parser as the script's)."""
    executable = Path(sys.executable).parent / command
    assert executable.is_file(), (
        f"{executable} is missing: install the project into this venv (pip install -e '.[dev]')"
    )
    proc = subprocess.run(
        [str(executable), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert proc.returncode == 0, f"{command} --help failed:\n{proc.stderr[-2000:]}"
    return proc.stdout


def listed_flags(command: str) -> set[str]:
    return set(FLAG.findall(help_text(command)))


def doc_commands() -> list[tuple[str, str, str]]:
    """(doc, command, its arguments) for every job run in a fenced code block or inline code."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
        spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
        for chunk in [*blocks, *spans]:
            for match in JOB_CALL.finditer(chunk.replace("\\\n", " ")):
                command = match["command"] or JOBS[match["script"]]
                found.append((str(doc.relative_to(REPO_ROOT)), command, match["args"]))
    return found


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_console_command_help(command):
    module, function = COMMANDS[command].split(":")
    assert callable(getattr(importlib.import_module(module), function))
    assert help_text(command).startswith(f"usage: {command} ")  # named as the user typed it


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_script_help_from_a_checkout(command):
    """`python jobs/<job>.py --help` from the checkout (what `ray job submit` runs)."""
    script = REPO_ROOT / (COMMANDS[command].split(":")[0].replace(".", "/") + ".py")
    proc = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    usage = proc.stdout.split("\n", 1)[0]
    assert usage.startswith(f"usage: jobs/{script.stem}.py"), usage
    assert set(FLAG.findall(proc.stdout)) == listed_flags(command)


def test_every_entry_script_is_a_console_command():
    """Each thin entry script jobs/<job>.py is also `unet-<job>` ([project.scripts])."""
    scripts = {p.stem for p in (REPO_ROOT / "jobs").glob("*.py") if p.stem != "__init__"}
    assert scripts == set(JOBS), f"scripts {sorted(scripts)}, console commands {JOBS}"
    assert {"report": "unet-report", "segment": "unet-segment"}.items() <= JOBS.items()


def test_docs_show_both_forms_of_a_job():
    commands = {command for _, command, _ in doc_commands()}
    assert {"unet-train", "unet-segment", "unet-evaluate", "unet-export"} <= commands
    readme = (REPO_ROOT / "README.md").read_text()
    assert "python jobs/train.py" in readme and "unet-train" in readme


def test_doc_commands_use_only_listed_flags():
    runs = doc_commands()
    assert len(runs) >= 10, runs  # the parser finds the docs' commands at all
    wrong = sorted(
        {
            (doc, command, flag)
            for doc, command, args in runs
            for flag in FLAG.findall(args)
            if flag not in listed_flags(command)
        }
    )
    assert not wrong, f"flags the jobs' --help does not list (doc, command, flag): {wrong}"


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped,
    spaces to hyphens, a -1, -2 ... suffix on repeats."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def prose(text: str) -> str:
    """The text outside fenced code blocks, where a Markdown link is a link."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def test_relative_links_point_at_files():
    """Every relative link or image in README.md, docs/*.md and cluster/*.md names a file of the
    checkout (and, with #anchor, one of that Markdown file's headings)."""
    docs = [
        REPO_ROOT / "README.md",
        *sorted((REPO_ROOT / "docs").glob("*.md")),
        *sorted((REPO_ROOT / "cluster").glob("*.md")),
    ]
    assert len(docs) > 1, "docs/*.md is missing"
    links, broken = 0, []
    for doc in docs:
        for target in LINK.findall(re.sub(r"`[^`\n]*`", "", prose(doc.read_text()))):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            links += 1
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(REPO_ROOT)}: {target}"
            if not file.exists():
                broken.append(f"{where} (no file {file})")
            elif (
                anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text())
            ):
                broken.append(f"{where} (no heading #{anchor} in {file.name})")
    assert links >= 5, links  # the pattern finds the docs' links at all
    assert not broken, "broken relative links:\n" + "\n".join(broken)


# --- cluster/README.md: every shell command of its path -------------------------------------

CLUSTER_README = REPO_ROOT / "cluster" / "README.md"
CANNOT_RUN_HERE = {"aws", "kubectl", "docker", "git", "sed", "export", "curl", "base64"}
"""Programs of cluster/README.md that need AWS, a Kubernetes cluster, a docker daemon with the
base image, or change the checkout: not run here; the repository paths, kustomize component
labels and files they name are checked instead."""
REPO_PATH = re.compile(r"^(?:cluster|configs|jobs|unet_core)/[\w./*-]*$")


def shell_commands(doc: Path) -> list[list[str]]:
    """Every simple command of the doc's ```bash blocks (also those indented in a list item):
    continuations joined, comments dropped, split at pipes, `;`, `&&` and `&` (inside `$(...)`
    too), loop keywords stripped."""
    import shlex

    commands = []
    for block in re.findall(r"^ *```bash\n(.*?)^ *```", doc.read_text(), flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
            lexer.whitespace_split, lexer.commenters = True, "#"
            words, current = list(lexer), []
            for word in [*words, ";"]:
                if word.strip("|&;") == "":  # an operator
                    if current and current[0] not in ("for", "done"):
                        commands.append(current[1:] if current[0] == "do" else current)
                    current = []
                else:
                    current.append(word)
    return commands


def check_ray_command(words: list[str]) -> None:
    """`ray <group> <command> --flags ... [-- entrypoint]`: Ray 2.60's own CLI has it."""
    from ray.scripts.scripts import cli

    command, args = cli, words[1:]
    while hasattr(command, "commands") and args and args[0] in command.commands:
        command, args = command.commands[args[0]], args[1:]
    assert command is not cli and not hasattr(command, "commands"), f"no such command: {words}"
    own = args[: args.index("--")] if "--" in args else args
    options = {o for p in command.params for o in [*p.opts, *p.secondary_opts]}
    unknown = [
        a.split("=", 1)[0] for a in own if a.startswith("-") and a.split("=")[0] not in options
    ]
    assert not unknown, f"{' '.join(words[:3])}: Ray's CLI has no {unknown}"


def test_cluster_readme_commands_are_checked():
    import ray
    import yaml

    commands = shell_commands(CLUSTER_README)
    assert len(commands) >= 25, commands  # the parser finds the path's commands at all
    labels = {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]
        for path in (REPO_ROOT / "cluster" / "kuberay").glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") != "Kustomization"
    }
    for words in commands:
        program = words[0]
        for word in words:  # every repository path a command names exists
            for path in [word.split("=", 1)[-1]] if REPO_PATH.match(word.split("=", 1)[-1]) else []:
                assert list(REPO_ROOT.glob(path)), f"{' '.join(words)}: no {path}"
        if program == "ray":
            check_ray_command(words)
        elif program in ("python", "unet-train", "unet-segment"):
            pass  # test_doc_commands_use_only_listed_flags checks the job's flags
        elif program == "pip":
            assert words[1] == "install" and words[2] == f"ray[default]=={ray.__version__}"
        elif program == "kubectl" and "-k" in words:
            assert (REPO_ROOT / words[words.index("-k") + 1] / "kustomization.yaml").is_file()
            if "-l" in words:
                key, _, value = words[words.index("-l") + 1].partition("=")
                assert key == "app.kubernetes.io/component" and value in labels, words
        else:
            assert program in CANNOT_RUN_HERE, f"cluster/README.md runs {program}: check it here"
