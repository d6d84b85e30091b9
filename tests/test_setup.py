"""setup.py's floors are the versions that CI installs exactly and tests together.

.ci/run's "oldest" job installs .ci/oldest-constraints.txt and runs the smoke subset;
a floor raised or lowered in one file but not in the other would leave it untested.
"""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENT = re.compile(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9a-z.]*)")


def normalized(name):
    """The name as PyPI compares names (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def setup_requirements():
    """install_requires and extras_require of setup.py's setup() call, read without
    running it."""
    tree = ast.parse((REPO / "setup.py").read_text())
    [call] = [node for node in ast.walk(tree)
              if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"]
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords
                if k.arg in ("install_requires", "extras_require")}
    return keywords["install_requires"], keywords["extras_require"]


def floors(requirements):
    """{name: floor} of the requirements that have a `>=` floor."""
    found = {}
    for requirement in requirements:
        match = REQUIREMENT.fullmatch(requirement.strip())
        if match:
            found[normalized(match[1])] = match[2]
    return found


def pins():
    found = {}
    for line in (REPO / ".ci" / "oldest-constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            found[normalized(name)] = version
    return found


def test_floors_parse_as_expected():
    # By hand: the parser sees an extra's brackets and a one-word name alike.
    assert floors(["jax[cuda12]>=0.10.0", "clu>=0.0.12", "torch==2.14.1", "ml_collections"]) == {
        "jax": "0.10.0", "clu": "0.0.12"}
    assert normalized("importlib_resources") == normalized("Importlib.Resources")


def test_every_requirement_has_a_floor_pinned_in_the_oldest_constraints():
    install, extras = setup_requirements()
    required = floors(install)
    assert len(required) == len(install), "every install requirement needs a >= floor"
    pinned = pins()
    assert {name: pinned.get(name) for name in required} == required
    # JAX's accelerator builds start where jax does; the test tools' pytest is pinned too.
    assert floors(extras["gpu"]) == floors(extras["tpu"]) == {"jax": required["jax"]}
    assert floors(extras["test"])["pytest"] == pinned["pytest"]
    # Nothing pinned that setup.py does not require: a stale pin would go untested.
    assert set(pinned) == set(required) | {"pytest"}
