"""The README's Python API example runs as written against a tiny trained run."""

import re
import shutil
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example(section: str) -> str:
    """The first ```python block under the README heading `section`."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", body, re.S)
    assert match, f"no python block under '## {section}'"
    return match.group(1)


def test_readme_python_api_example_runs(cli_run, tmp_path, capsys, monkeypatch):
    code = python_example("Python API")
    assert 'Detector.load("runs/my_product")' in code and "predict_image(" in code
    shutil.copytree(cli_run, tmp_path / "runs" / "my_product")
    monkeypatch.chdir(tmp_path)  # the example's relative run path, as a user would run it
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    assert printed and printed[0].startswith("score ") and "anomalous: " in printed[0]
    assert printed[1].startswith("found at (") and printed[1].endswith(")")
    assert printed[-2:] and all(line.isdigit() for line in printed[-2:])  # predict_images: two defect areas
