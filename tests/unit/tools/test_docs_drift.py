"""The generated docs match the code that generates them.

Why: docs/flags.md is generated from the flag schema (DESIGN.md, convention 2); a flag added,
renamed or re-documented without regenerating it leaves users reading the wrong reference.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from tuning.config.schema import all_flags
from tuning.tools import docs_gen

REPO_ROOT = Path(__file__).resolve().parents[3]
FLAGS_DOC = REPO_ROOT / "docs" / "flags.md"


def test_flags_doc_matches_schema():
    expected = docs_gen.render_flags_markdown()
    actual = FLAGS_DOC.read_text(encoding="utf-8") if FLAGS_DOC.is_file() else ""
    if actual != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    actual.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    "docs/flags.md (committed)",
                    "docs/flags.md (generated)",
                )
            )[:40]
        )
        pytest.fail(f"docs/flags.md is out of date: run make docs and commit it.\n{diff}")


def test_flags_doc_is_registered_as_generated():
    assert docs_gen.generated_docs()["docs/flags.md"] is docs_gen.render_flags_markdown


def test_render_is_deterministic():
    assert docs_gen.render_flags_markdown() == docs_gen.render_flags_markdown()


def test_every_flag_and_alias_is_documented():
    text = docs_gen.render_flags_markdown()
    for spec in all_flags().values():
        shown = f"`{spec.name}`" if spec.section == "launcher" else f"`--{spec.name}`"
        assert shown in text, spec.name
        for alias in spec.aliases:
            assert f"`--{alias}`" in text, alias


def test_intro_explains_how_flags_are_given():
    text = docs_gen.render_flags_markdown()
    for needle in (
        "--target_modules q_proj v_proj",
        "--packing false",
        "SFT_TRAINER_CONFIG_JSON_PATH",
        "SFT_TRAINER_CONFIG_JSON_ENV_VAR",
        "override the JSON job",
        "backslash escapes decoded",
    ):
        assert needle in text, needle


def test_choices_render_as_one_table_cell():
    line = next(
        line for line in docs_gen.render_flags_markdown().splitlines() if "`--peft_method`" in line
    )
    # 4 columns -> 5 unescaped pipes; the choices' separators are escaped.
    assert line.replace("\\|", "").count("|") == 5
    assert "`lora` \\| `pt` \\| `alora` \\| `none`" in line


@pytest.mark.parametrize(
    ("help_text", "first"),
    [
        ("Does a thing. Then more.", "Does a thing."),
        ("Uses e.g. this. Then more.", "Uses e.g. this."),
        ("Runs (PyTorch only). 0 means main process.", "Runs (PyTorch only)."),
        ("Version 1.5 is used", "Version 1.5 is used"),
    ],
)
def test_first_sentence(help_text, first):
    assert docs_gen.first_sentence(help_text) == first


def test_check_mode_reports_drift_and_write_mode_fixes_it(tmp_path, capsys):
    assert docs_gen.main(["--root", str(tmp_path), "--check"]) == 1
    assert "docs/flags.md" in capsys.readouterr().out

    assert docs_gen.main(["--root", str(tmp_path)]) == 0
    assert (tmp_path / "docs" / "flags.md").read_text() == docs_gen.render_flags_markdown()
    assert docs_gen.main(["--root", str(tmp_path), "--check"]) == 0

    (tmp_path / "docs" / "flags.md").write_text("stale\n")
    assert docs_gen.main(["--root", str(tmp_path), "--check"]) == 1
    out = capsys.readouterr().out
    assert "out of date: docs/flags.md" in out
    assert "make docs" in out


def test_only_writes_the_docs_named(tmp_path):
    assert docs_gen.main(["--root", str(tmp_path), "docs/flags.md"]) == 0
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["flags.md"]


def test_unknown_doc_name_is_refused(tmp_path):
    with pytest.raises(SystemExit) as excinfo:
        docs_gen.main(["--root", str(tmp_path), "docs/nope.md"])
    assert excinfo.value.code == 2


@pytest.mark.parametrize("doc", ["docs/flags.md", "docs/data-config.md", "docs/handlers.md"])
def test_every_generated_doc_matches_the_code(doc):
    from tuning.tools.docs_gen import REPO_ROOT, generated_docs

    render = generated_docs()[doc]
    on_disk = (REPO_ROOT / doc).read_text()
    assert on_disk.rstrip("\n") == render().rstrip("\n"), f"{doc} drifted: run `make docs`"
