"""The docs cannot go stale silently: every command the README and docs/ show names a command, flags and files that
exist, every recipe they show holds only known fields, and every link reaches its file and heading. Parsing only
(each command's --help), so this stays in the fast tier; tests/test_first_hour.py runs the README's own commands.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
from pathlib import Path

import pytest
import yaml

from hf_segformer.cli import COMMANDS
from hf_segformer.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
USER_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ALL_DOCS = [*USER_DOCS, ROOT / "benchmarks/README.md"]
# Folders of the repository: a path a doc names under one of them must exist.
REPO_FOLDERS = ("recipes/", "accelerate_configs/", "benchmarks/", "data_cards/", "docs/", "tests/", "hf_segformer/",
                ".ci/")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
NOT_A_RECIPE = "<!-- not-a-recipe -->"


def blocks(doc: Path, language: str) -> list[tuple[str, str]]:
    """(the line just above the fence, the block's text) for each ```language block of a doc."""
    text = doc.read_text()
    found = []
    for match in FENCE.finditer(text):
        if match.group(1) == language:
            above = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            found.append((above, match.group(2)))
    return found


def shell_commands(block: str) -> list[list[str]]:
    """The block's command lines as words: continuations joined, comments dropped, `&&` chains split."""
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return commands


def doc_commands(docs: list[Path]) -> list[tuple[str, list[str]]]:
    return [(f"{doc.relative_to(ROOT)}: {' '.join(words)}", words)
            for doc in docs for _, block in blocks(doc, "bash") for words in shell_commands(block)]


@functools.cache
def command_options(command: str) -> frozenset[str]:
    """Every --option `hf-segformer COMMAND --help` lists (aliases included)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0, f"hf-segformer {command} --help failed"
    text = out.getvalue()
    words = (word.strip("[](),") for word in text.split())
    options = {word.split("=")[0] for word in words if word.startswith("--")}
    # train and check-data read --config before their parser (config/parser.py), so their --help does not list it;
    # commands whose --help says "options are recipe fields" take any of them.
    if command in ("train", "check-data"):
        options.add("--config")
    if "recipe fields" in " ".join(text.split()):
        options |= {f"--{name}" for name in recipe_fields()} | {"--config"}
    return frozenset(options)


@functools.cache
def accelerate_launch_options() -> frozenset[str]:
    from accelerate.commands.launch import launch_command_parser

    return frozenset(option for action in launch_command_parser()._actions for option in action.option_strings)


def flags(words: list[str]) -> list[str]:
    return [word.split("=")[0] for word in words if word.startswith("--")]


def repo_paths(words: list[str]) -> list[str]:
    return [word.split("=")[-1] for word in words if word.split("=")[-1].startswith(REPO_FOLDERS)]


def check_command(words: list[str]) -> list[str]:
    """What in one command line does not exist: its command, a flag, a file of the repository."""
    problems = [f"no file {path}" for path in repo_paths(words) if not (ROOT / path).exists()]
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # HF_HUB_OFFLINE=1 command ...
        words = words[1:]
    program = Path(words[0]).name
    if program == "hf-segformer":
        if len(words) < 2 or words[1] not in COMMANDS:
            return [*problems, f"no command {words[1:2]}"]
        known = command_options(words[1])
        problems += [f"hf-segformer {words[1]} has no option {flag}" for flag in flags(words[2:]) if flag not in known]
    elif program == "accelerate" and words[1:2] == ["launch"]:
        script_at = next((i for i, word in enumerate(words) if word.endswith(".py")), None)
        assert script_at is not None, "accelerate launch without a script"
        launcher, script, script_args = words[2:script_at], words[script_at], words[script_at + 1:]
        problems += [f"accelerate launch has no option {flag}" for flag in flags(launcher)
                     if flag not in accelerate_launch_options()]
        command = {"recipes/finetune.py": "train", "recipes/evaluate.py": "evaluate"}.get(script)
        assert command, f"accelerate launch of an unknown script {script}"
        known = command_options(command)
        problems += [f"{script} has no option {flag}" for flag in flags(script_args) if flag not in known]
    elif program == "python" and words[1:2] and words[1].startswith("benchmarks/"):
        source = (ROOT / words[1]).read_text() if (ROOT / words[1]).is_file() else ""
        problems += [f"{words[1]} has no option {flag}" for flag in flags(words[2:])
                     if f'"{flag}"' not in source and f"'{flag}'" not in source]
    return problems


@pytest.mark.parametrize(("where", "words"), doc_commands(ALL_DOCS), ids=lambda value: None)
def test_every_command_a_doc_shows_exists_with_its_flags_and_files(where, words):
    assert not check_command(words), where


def test_the_docs_show_the_commands_users_run():
    programs = {" ".join(Path(word).name for word in words[:2]) for _, words in doc_commands(USER_DOCS)}
    named = set(re.findall(r"hf-segformer [a-z-]+", "\n".join(doc.read_text() for doc in USER_DOCS)))
    assert not {f"hf-segformer {name}" for name in COMMANDS} - named, "a command no doc names"
    readme = (ROOT / "README.md").read_text()
    assert not {name for name in COMMANDS if f"`hf-segformer {name}" not in readme}, "a command missing in the README"
    assert "accelerate launch" in programs and "hf-segformer train" in programs


def recipe_fields() -> set[str]:
    from hf_segformer.training.arguments import RECIPE_DATACLASSES

    return {name for dataclass in RECIPE_DATACLASSES for name in dataclass.__dataclass_fields__}


def test_every_recipe_a_doc_shows_holds_known_fields():
    fields = recipe_fields()
    shown = 0
    for doc in ALL_DOCS:
        for above, block in blocks(doc, "yaml"):
            if NOT_A_RECIPE in above:
                continue
            recipe = yaml.safe_load(block)
            assert isinstance(recipe, dict), f"{doc.name}: a yaml block that is not a recipe: mark it {NOT_A_RECIPE}"
            unknown = set(recipe) - fields
            assert not unknown, f"{doc.relative_to(ROOT)}: unknown recipe fields {sorted(unknown)} in\n{block}"
            shown += 1
    assert shown >= 5


def test_a_broken_doc_fails_the_checks():
    """The checks above can fail: a misspelt flag, command, file and recipe field are each caught."""
    assert check_command(["hf-segformer", "evaluate", "--modle", "x"]) == [
        "hf-segformer evaluate has no option --modle"]
    assert check_command(["hf-segformer", "tran"]) == ["no command ['tran']"]
    assert check_command(["hf-segformer", "train", "--config", "recipes/nope.yaml"]) == ["no file recipes/nope.yaml"]
    assert check_command(["accelerate", "launch", "--config_file", "accelerate_configs/default.yaml",
                          "recipes/finetune.py", "--learning_rat", "1"]) == [
        "recipes/finetune.py has no option --learning_rat"]
    assert "learning_rate" in recipe_fields() and "learning_rat" not in recipe_fields()


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = FENCE.sub("", doc.read_text())
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_every_link_and_path_a_doc_names_exists():
    problems = []
    for doc in ALL_DOCS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (doc.parent / file_part).resolve() if file_part else doc
            if not linked.exists():
                problems.append(f"{doc.name}: link to missing {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{doc.name}: no heading #{anchor} in {linked.name}")
        for path in re.findall(r"`([^`\s]+)`", FENCE.sub("", text)):
            path = path.rstrip(".,:;")
            if path.startswith(REPO_FOLDERS) and not re.search(r"[*<…{]", path) and not (ROOT / path).exists():
                problems.append(f"{doc.name}: names missing `{path}`")
    assert not problems, "\n".join(problems)


def test_user_docs_are_for_users():
    """No issue numbers, commit hashes, development folders or machine stories in README and docs/."""
    for doc in USER_DOCS:
        text = doc.read_text()
        for pattern in (r"issue #\d+", r"\bcommit [0-9a-f]{7,40}\b", r"\.\./shared/", r"load average",
                        r"development machine", r"prototype"):
            assert not re.search(pattern, text, re.I), f"{doc.relative_to(ROOT)}: {pattern}"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    first_screen = "\n".join(lines[:25])
    assert "bash .ci/setup-env" in first_screen and "pytest tests" in first_screen and '-m "not slow"' in first_screen
    recipes = {str(path.relative_to(ROOT)) for path in (ROOT / "recipes").rglob("*.yaml")}
    assert not {recipe for recipe in recipes if f"`{recipe}`" not in "\n".join(lines)}, "a recipe missing in the table"


def test_help_texts_and_recipes_point_at_docs_that_exist():
    """--help texts, recipes and Accelerate configs send users to docs: the file must exist, and a section they name
    in quotes after it must begin a heading there (the README is a front page: sections live in docs/)."""
    sources = [*(ROOT / "hf_segformer").rglob("*.py"), *(ROOT / "recipes").rglob("*.yaml"),
               *(ROOT / "accelerate_configs").rglob("*")]
    problems = []
    for source in sources:
        if not source.is_file():
            continue
        text = source.read_text()
        for doc, section in re.findall(r"((?:docs/[a-z_]+|benchmarks/README|README)\.md|README),? \\?\"([^\"\\]+)",
                                       text):
            target = ROOT / (doc if doc.endswith(".md") else "README.md")
            if not target.is_file():
                problems.append(f"{source.relative_to(ROOT)}: no {doc}")
            elif not any(anchor.startswith(slug(" ".join(section.replace("#", " ").split())))
                         for anchor in anchors(target)):
                problems.append(f"{source.relative_to(ROOT)}: no section \"{section}\" in {doc}")
        problems += [f"{source.relative_to(ROOT)}: no {doc}" for doc in re.findall(r"docs/[a-z_]+\.md", text)
                     if not (ROOT / doc).is_file()]
    assert not problems, "\n".join(problems)
