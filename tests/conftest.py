pytest_plugins = ["pytester"]

# Written into every pytester session: keeps pytest-asyncio quiet and predictable, and the
# order of tests as written (pytest-randomly, when installed, is tested on its own).
INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
addopts = -p no:randomly
"""


def line(pytester, marker, filename="test_it.py"):
    """The number of the first line of ``filename`` (in the pytester dir) containing ``marker``."""
    lines = (pytester.path / filename).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if marker in text)
