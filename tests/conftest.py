pytest_plugins = ["pytester"]

# Written into every pytester session: keeps pytest-asyncio quiet and predictable.
INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""
