"""What a release promises besides the code: one version, named by the
changelog; a README that the package index renders without junk; a bare
install that imports, and clear errors for the extras it lacks."""

import configparser
import html.parser
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import readme_renderer.rst
import trove_classifiers
from packaging.version import Version

import reconnecting

ROOT = Path(__file__).resolve().parent.parent


def latest_changelog_entry() -> tuple[str, str]:
    """The version and the date (or "unreleased") of the top section."""
    text = (ROOT / "CHANGELOG.rst").read_text()
    match = re.search(r"^(\S+) \(([^)]+)\)\n-+\n", text, re.MULTILINE)
    assert match, "CHANGELOG.rst has no section titled 'VERSION (DATE)'"
    return match.group(1), match.group(2)


def test_version_is_the_changelogs_latest_entry():
    version = Version(reconnecting.__version__)
    entry, date = latest_changelog_entry()
    if date == "unreleased":
        # A development version leads to the release the changelog prepares.
        assert version.is_devrelease or version.is_prerelease, version
        assert version.base_version == entry
    else:
        assert str(version) == entry
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date), date


def test_setup_cfg_reads_the_version_from_the_package():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["version"] == "attr: reconnecting.__version__"


def test_classifiers_are_known_to_the_package_index():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    classifiers = list(filter(None, setup["metadata"]["classifiers"].splitlines()))
    assert classifiers
    assert set(classifiers) <= trove_classifiers.classifiers


def test_pre_commit_runs_the_ruff_that_the_test_extra_pins():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    pinned = re.findall(
        r"^ruff == (\S+)$", setup["options.extras_require"]["test"], re.M
    )
    hooked = set(
        re.findall(r'"ruff==([^"]+)"', (ROOT / ".pre-commit-config.yaml").read_text())
    )
    assert pinned and hooked == set(pinned), (pinned, hooked)


class VisibleText(html.parser.HTMLParser):
    """The text a reader of the rendered page sees (comments are not)."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_readme_renders_on_the_package_index_without_junk():
    # readme_renderer is what the package index renders descriptions with.
    source = (ROOT / "README.rst").read_text()
    messages = io.StringIO()
    rendered = readme_renderer.rst.render(source, stream=messages)
    assert rendered is not None, messages.getvalue()
    assert messages.getvalue() == ""
    parser = VisibleText()
    parser.feed(rendered)
    visible = "".join(parser.text)
    # Sybil's directives and the code they hide stay out of sight ...
    for directive in re.findall(r"^\.\. ([\w-]+):(?!:)", source, re.MULTILINE):
        assert directive not in visible
    hidden = re.findall(
        r"^\.\. invisible-code-block: python\n\n((?:    .*\n|\n)+)", source, re.M
    )
    assert len(hidden) == source.count(".. invisible-code-block:")
    for block in hidden:
        assert block.strip(), "an invisible-code-block with no indented code"
        for line in filter(None, (line.strip() for line in block.splitlines())):
            assert line not in visible
    # ... while the examples themselves are shown.
    assert "&gt;&gt;&gt; from reconnecting import" in rendered


@pytest.mark.parametrize(
    "blocked, statement, extra",
    [
        ("psycopg2", "import reconnecting.testing", "testing"),
        ("transaction", "import reconnecting.zope.adapter", "zope"),
        ("zope", "import reconnecting.zope.adapter", "zope"),
    ],
)
def test_a_missing_extra_is_named(blocked, statement, extra):
    # A None in sys.modules makes importing that name fail, as if it were
    # not installed.
    script = f"import sys; sys.modules[{blocked!r}] = None\n{statement}"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ModuleNotFoundError: reconnecting.")
    assert f"pip install 'reconnecting[{extra}]'" in last_line


def test_the_core_needs_no_driver_and_no_extra():
    script = (
        "import sys\n"
        "for name in ('psycopg2', 'psycopg', 'zope', 'transaction'):\n"
        "    sys.modules[name] = None\n"
        "import reconnecting\n"
        "db = reconnecting.ReconnectingConnection(lambda: None)\n"
        "print(reconnecting.__version__, db.closed)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT
    )
    assert result.stderr == ""
    assert result.stdout == f"{reconnecting.__version__} False\n"


def test_pytest_starts_without_the_testing_extra(tmp_path):
    # The package registers a pytest plugin; a project that installed the
    # package without the testing extra must still be able to run pytest.
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    script = (
        "import sys; sys.modules['psycopg2'] = None\n"
        "import pytest; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
