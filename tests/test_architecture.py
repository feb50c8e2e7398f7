"""The architecture's import rules (README, "Architecture"), enforced.

Parts, top to bottom; a module imports only from its own part or from parts
below it, and never from a sibling on its own row:

    server                      assembly and entry point
    handlers                    HTTP routes
    jobs                        previews and peaks, made from a queue in PostgreSQL
    streaming                   the byte path
    web                         what wraps every request
    storage | metrics | schemas media at rest, Prometheus, API shapes
    db                          PostgreSQL (with sql/)
    settings                    every knob

So the data layer imports only itself and settings, the byte path no
route, and nothing imports server. Leaves import less than their row
allows: settings, metrics and storage nothing of ours, schemas only db and
settings. No import cycle anywhere. Only the data layer touches the
database drivers: outside db/ no module imports one (re-exported or not),
calls their query methods, or holds SQL text. Product code is server.py,
settings.py and every top-level folder with .py files but NOT_PRODUCT's;
each is a part in LAYERS. Imports include `__import__` and
`importlib.import_module` of a literal name. A failure names the rule and
the file:line.
"""

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = (
    ("server",),
    ("handlers",),
    ("jobs",),
    ("streaming",),
    ("web",),
    ("storage", "metrics", "schemas"),
    ("db",),
    ("settings",),
)
# Parts that import less of ours than their row allows: these only.
LEAVES = {
    "settings": frozenset(),
    "metrics": frozenset(),
    "storage": frozenset(),
    "schemas": frozenset({"db", "settings"}),
}
DRIVERS = frozenset({"asyncpg", "psycopg", "yoyo"})
# asyncpg's query methods (connection, pool, prepared statement): a call of
# one outside db/ is a query written in a route, however the driver got there.
DRIVER_CALLS = frozenset(
    {
        "fetch", "fetchrow", "fetchval", "execute", "executemany", "prepare",
        "copy_records_to_table", "copy_from_query", "acquire", "transaction",
    }
)  # fmt: skip
# Top-level folders that are not product code, whatever they hold: the suite,
# the benchmark, yoyo migrations (which may be .py), the container and
# monitoring files, uploaded media; dot-folders (.venv, .git, .ci) too. Every
# other folder holding a .py file, package or not, is product code.
NOT_PRODUCT = frozenset({"tests", "bench", "migrations", "deploy", "media"})
# A string that opens, after whitespace and `--` or `/* */` comments, with a
# statement in any case. Each verb needs SQL's shape after it, so English
# ("Select a clip", "Update the set with...", "Copy the bytes to disk") is
# not SQL: of the 330,000 strings in this repository and its dependencies,
# it matched SQL statements only (and pygments' keyword 'Drop table').
SQL_TEXT = re.compile(
    r"""\A (\s* (--[^\n]* | /\*.*?\*/))* \s*
    ( SELECT \s+ (\* | DISTINCT\b | [\w.$*]+ (\(.*?\))? \s* (, | \bFROM\b | \bAS\b))
    | SELECT \s+ ([\d$][\w.]* | \w+\(.*?\)) \s* (; | \Z)
    | INSERT \s+ INTO \s+ [\w.]+
    | UPDATE \s+ [\w.]+ \s+ SET \s+ [\w.]+ \s* =
    | DELETE \s+ FROM \s+ [\w.]+
    | WITH \s+ (RECURSIVE \s+)? \w+ (\s*\([^)]*\))? \s+ AS \s* \(
    | TRUNCATE \s+ (TABLE \s+)? [\w.]+ \s* ([,;] | \Z | (RESTART | CONTINUE | CASCADE | RESTRICT)\b)
    | (ALTER | CREATE (\s+ (OR \s+ REPLACE | UNIQUE | TEMP | TEMPORARY))* | DROP) \s+
      (TABLE | INDEX | VIEW | MATERIALIZED | SEQUENCE | SCHEMA | EXTENSION | FUNCTION
       | TRIGGER | TYPE | ROLE | DATABASE) \b
    | COPY \s+ ([\w.]+ (\s*\([^)]*\))? | \(.*\)) \s+ (FROM | TO) \s+ (STDIN | STDOUT | PROGRAM | ')
    | GRANT \s+ (ALL | SELECT | INSERT | UPDATE | DELETE | TRUNCATE | REFERENCES | TRIGGER
      | USAGE | CONNECT | CREATE | TEMP\w* | EXECUTE) \b [\w\s,]*? \s ON \s
    )""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)


def product_modules(root: Path) -> dict[str, Path]:
    """Every module of the product, by dotted name."""
    modules = {path.stem: path for path in sorted(root.glob("*.py"))}
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name in NOT_PRODUCT or folder.name.startswith("."):
            continue
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def dynamic_import(node: ast.AST) -> str | None:
    """The module a call imports by a literal name, as in
    `__import__("web.problems")` or `importlib.import_module("db")`."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    name = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
    called = getattr(node.func, "id", getattr(node.func, "attr", None))
    return name if isinstance(name, str) and called in ("__import__", "import_module") else None


def absolute(package: str, base: str, level: int) -> str:
    """`base` imported `level` dots up from `package`."""
    if not level:
        return base
    anchor = package.split(".")[: len(package.split(".")) - level + 1]
    return ".".join([*anchor, base] if base else anchor)


def imports(modules: dict[str, Path]) -> Iterator[tuple[str, str, int]]:
    """(importer, imported, line) for every import statement, including
    those inside functions, and every import by a literal name (a leading
    dot is relative to the importer's package). `from package import name`
    imports the module package.name when there is one, else the package;
    a name that is a driver's imports the driver too (a re-export of it,
    as `from db import asyncpg`, is still the driver)."""
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield name, alias.name, node.lineno
            elif isinstance(node, ast.ImportFrom):
                base = absolute(package, node.module or "", node.level)
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    yield name, target if target in modules else base, node.lineno
                    if alias.name in DRIVERS:
                        yield name, alias.name, node.lineno
            elif literal := dynamic_import(node):
                relative = literal.lstrip(".")
                yield name, absolute(package, relative, len(literal) - len(relative)), node.lineno


def part_of(module: str) -> str:
    return module.split(".")[0]


def layer_violations(root: Path) -> list[str]:
    rank = {part: row for row, parts in enumerate(LAYERS) for part in parts}
    modules = product_modules(root)
    strays: dict[str, Path] = {}  # each part not in LAYERS, by its first module
    for module, path in modules.items():
        if part_of(module) not in rank:
            strays.setdefault(part_of(module), path)
    problems = [
        f"{path.relative_to(root)}: {part} is no part of LAYERS: place it in the architecture"
        for part, path in strays.items()
    ]
    for importer, imported, line in imports(modules):
        source, target = part_of(importer), part_of(imported)
        if target not in rank or source == target or source not in rank:
            continue
        if rank[target] <= rank[source]:
            allowed = ", ".join(p for row in LAYERS[rank[source] + 1 :] for p in row)
            problems.append(
                f"{modules[importer].relative_to(root)}:{line}: {importer} imports {imported};"
                f" {source} may import {f'only {allowed}' if allowed else 'nothing of ours'}"
            )
    return problems


def leaf_violations(root: Path) -> list[str]:
    modules = product_modules(root)
    ours = {part_of(module) for module in modules}
    problems = []
    for importer, imported, line in imports(modules):
        source, target = part_of(importer), part_of(imported)
        if source in LEAVES and target in ours - {source} - LEAVES[source]:
            allowed = ", ".join(sorted(LEAVES[source]))
            problems.append(
                f"{modules[importer].relative_to(root)}:{line}: {importer} imports {imported};"
                f" {source} may import {f'only {allowed}' if allowed else 'nothing of ours'}"
            )
    return problems


def cycles(root: Path) -> list[list[str]]:
    """Import cycles among product modules (strongly connected components
    of more than one module, or a module importing itself)."""
    modules = product_modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for importer, imported, _ in imports(modules):
        if imported in modules:
            graph[importer].add(imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while (top := stack.pop()) != module:
                component.append(top)
            component.append(module)
            if len(component) > 1 or module in graph[module]:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def driver_imports(root: Path) -> list[str]:
    modules = product_modules(root)
    return [
        f"{modules[importer].relative_to(root)}:{line}: {importer} imports {imported}"
        for importer, imported, line in imports(modules)
        if imported.split(".")[0] in DRIVERS and part_of(importer) != "db"
    ]


def aiohttp_prepare(call: ast.Call) -> bool:
    """`response.prepare(request)`: aiohttp's StreamResponse.prepare, which
    the byte path calls to send headers. The one driver-call name used
    outside db/ (streaming/proxy.py, streaming/stored.py); asyncpg's
    prepare takes a query, never the request."""
    return (
        getattr(call.func, "attr", None) == "prepare"
        and len(call.args) == 1
        and ast.unparse(call.args[0]).rpartition(".")[2] == "request"
    )


def driver_calls(root: Path) -> list[str]:
    found = []
    for name, path in product_modules(root).items():
        if part_of(name) == "db":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) in DRIVER_CALLS
                and not aiohttp_prepare(node)
            ):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node.func)}()")
    return found


def strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, text) for every string; an f-string as one text, each
    replacement field read as `x`, so f"SELECT {columns} FROM clips" is SQL."""
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
            yield node.lineno, text
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts
        ):
            yield node.lineno, node.value


def sql_outside_the_data_layer(root: Path) -> list[str]:
    found = []
    for name, path in product_modules(root).items():
        if part_of(name) == "db":
            continue
        for line, text in strings(ast.parse(path.read_text(), str(path))):
            if SQL_TEXT.match(text):
                found.append(f"{path.relative_to(root)}:{line}: {text[:40]!r}")
    return found


def test_layers_point_down():
    """settings is a leaf, db imports only itself and settings, the byte
    path never imports a route, nothing imports server."""
    assert layer_violations(ROOT) == []


def test_leaves_import_only_what_they_promise():
    """settings, metrics and storage import nothing of ours; schemas only
    db and settings."""
    assert leaf_violations(ROOT) == []


def test_no_import_cycles():
    assert cycles(ROOT) == []


def test_only_the_data_layer_uses_the_database_drivers():
    assert driver_imports(ROOT) == []


def test_only_the_data_layer_calls_the_drivers_query_methods():
    assert driver_calls(ROOT) == []


def test_sql_lives_in_sql_files_and_the_data_layer():
    assert sql_outside_the_data_layer(ROOT) == []


def test_the_rules_catch_a_tree_that_breaks_them(tmp_path):
    """The checks above can fail: a small tree breaking each rule once."""
    files = {
        "settings.py": "from web import problems\nimport importlib\nimportlib.import_module('db')",
        "server.py": "import handlers.clips\n",
        "web/__init__.py": "",
        "web/problems.py": "from web.auth import KEY\n",
        "web/auth.py": "from web import problems\nKEY = 1\n",
        "db/__init__.py": "from handlers import clips\n",
        "handlers/__init__.py": "",
        "handlers/streams.py": "from db import asyncpg as apg\n",
        "handlers/health.py": "async def ping(request, pool):\n"
        "    await pool.fetchval(SQL['ping'], 1)\n"
        "    async with pool.acquire() as conn:\n"
        "        await conn.prepare('q')\n"
        "    await request.app[RESPONSE].prepare(request)\n",
        "handlers/clips.py": "import asyncpg\nQUERY = 'SELECT id FROM clips'\n",
        "streaming/__init__.py": "from handlers.clips import QUERY\n",
        "streaming/sneaky.py": (
            '"""Select a clip, update the set with it, copy the bytes to disk,\n'
            'drop the connection, create the table of contents, grant access."""\n'
            "A = 'select id from clips where id = $1'\n"
            "B = '-- one clip\\n  SELECT 1;'\n"
            "C = 'truncate clips'\n"
            "D = 'alter table clips add column x int'\n"
            "E = 'Create Unique Index clips_title ON clips (title)'\n"
            "F = 'drop table if exists clips'\n"
            "G = 'COPY clips (id) FROM STDIN'\n"
            "H = 'grant select, insert on clips to reader'\n"
            "I = f'SELECT {COLUMNS} FROM clips'\n"
        ),
        "gadgets/__init__.py": "",
        "storage/__init__.py": "import settings\n",
        "schemas/__init__.py": "from db import POOL\nimport settings\n",
        "utils/x.py": "import psycopg\n",  # a folder without __init__.py
        "metrics/__init__.py": "__import__('web.problems')\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)

    broken = "\n".join(layer_violations(tmp_path))
    assert "settings imports web.problems" in broken
    assert "db imports handlers.clips" in broken
    assert "streaming imports handlers.clips" in broken
    assert "gadgets/__init__.py: gadgets is no part of LAYERS" in broken
    assert "utils/x.py: utils is no part of LAYERS" in broken
    assert "settings.py:3: settings imports db;" in broken
    assert "metrics/__init__.py:1: metrics imports web.problems;" in broken
    assert "server imports" not in broken  # server may import everything
    leaves = "\n".join(leaf_violations(tmp_path))
    assert "settings.py:3: settings imports db; settings may import nothing of ours" in leaves
    assert "metrics/__init__.py:1: metrics imports web.problems; metrics may" in leaves
    assert "storage/__init__.py:1: storage imports settings; storage may import nothing" in leaves
    assert "schemas" not in leaves  # schemas may import db and settings
    assert cycles(tmp_path) == [["web.auth", "web.problems"]]
    assert driver_imports(tmp_path) == [
        "handlers/clips.py:1: handlers.clips imports asyncpg",
        "handlers/streams.py:1: handlers.streams imports asyncpg",
        "utils/x.py:1: utils.x imports psycopg",
    ]
    assert driver_calls(tmp_path) == [
        "handlers/health.py:2: pool.fetchval()",
        "handlers/health.py:3: pool.acquire()",
        "handlers/health.py:4: conn.prepare()",
    ]  # but not aiohttp's response.prepare(request)
    sql = sql_outside_the_data_layer(tmp_path)
    assert sql[0] == "handlers/clips.py:2: 'SELECT id FROM clips'"
    # Every statement in sneaky.py, in any case, after a comment: not its docstring.
    assert [found.split(": ")[0] for found in sql[1:]] == [
        f"streaming/sneaky.py:{line}" for line in range(3, 12)
    ]
