"""Documentation the code and notebooks point at must exist and resolve."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "docs" / "sprint_plan.md"


def cited_cards() -> set[str]:
    """Card ids cited in notebooks/ and lib/: 'J4-03' and 'J1 card 3' (a bare 'card 3' in J1's notebook)."""
    cited = set()
    for path in [*REPO.glob("notebooks/*.ipynb"), *REPO.glob("lib/**/*.py"), REPO / "README.md"]:
        text = path.read_text(encoding="utf-8")
        cited |= set(re.findall(r"\bJ[1-5]-\d{2}\b", text))
        cited |= {f"J{d} card {n}" for d, n in re.findall(r"\bJ([1-5]) card (\d+)", text)}
        if path.name.startswith("J1_"):
            cited |= {f"J1 card {n}" for n in re.findall(r"(?<!J1 )\bcard (\d+)", text, flags=re.I)}
    return cited


def test_every_cited_card_is_explained_in_the_sprint_plan_summary():
    cited = cited_cards()
    assert {"J1 card 3", "J4-03", "J4-13", "J4-15", "J3-03"} <= cited  # the search finds the citations
    explained = set(re.findall(r"^- \*\*(J[1-5]-\d{2}|J[1-5] card \d+)\*\* - \S", PLAN.read_text(encoding="utf-8"), re.M))
    assert not cited - explained, f"cited but not explained in {PLAN.name}: {sorted(cited - explained)}"


def test_readme_names_the_gpu_test_report_and_the_constraints():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "outputs/gpu_tests/report.json" in readme and "make test-gpu" in readme
    assert "constraints.txt" in readme and "docs/sprint_plan.md" in readme


def test_readme_leads_a_newcomer_to_what_runs_here_and_names_where_things_are():
    import json

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    toolkit = readme.split("## Config-driven training", 1)[1].split("The report's workflow", 1)[0]
    first = next(line for line in toolkit.splitlines() if line.startswith("python -m fastcifar."))
    assert "configs/cifar10.yaml" in first  # the config `make data` provides the data for
    assert "python -m fastcifar.data --download cifar100" in toolkit
    assert "`outputs/smoke/notebooks/`" in readme and "on the terminal" in readme
    assert "(see above)" not in readme
    assert "`total_s` in `outputs/pipeline_J1_J2_J3_J4_J5.json`" in readme
    assert "total_s" in json.loads((REPO / "outputs" / "pipeline_J1_J2_J3_J4_J5.json").read_text())
    assert "`outputs/runs/`" in readme and "--logdir outputs/runs" in readme and "--wait" in readme
    assert "recomputed over the new length" in readme  # what resuming a cosine run with more epochs does
