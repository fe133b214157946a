"""Reads compiled once per shape: the hottest reads skip the ORM's per-request building and compiling.

Building and compiling a queryset costs more than PostgreSQL takes to run it: for a page of 50
capacity requests, about 1 ms of the ORM against 0.6 ms of the database. `remember(key, make)` keeps
a compiled statement under a key that names everything its SQL and its parameters depend on (the
user and their roles, the query string, the page), so a repeated read sends the cached SQL at once.

The SQL is always the ORM's own, its values left as parameters: nothing is interpolated. What a read
returns is what iterating its queryset returns, the fields' database converters included (JSON fields
need them on every database; SQLite, the zero-setup default, also for datetimes and decimals): dicts
for a values() queryset (`rows`), model instances for any other (`instances`, built by the ORM's own
select_related populators). A key must name all that the statement depends on: scope a key to a user
with `user_key`, and cache only querysets whose other inputs (filters, ordering) are in the key too;
`bind` takes the values a read is called with as parameters, so they need not be in the key.
"""

from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.query import ModelIterable, get_related_populators
from django.utils import timezone

from portal import roles

Converters = list[tuple[int, list[Callable[..., Any]], Any]]


@dataclass(frozen=True)
class Instances:
    """How a model statement's rows become instances, as the ORM's ModelIterable builds them: the
    model's columns from `start` to `end`, its select_related objects by Django's own populators."""

    model: type[Model]
    init_list: tuple[str, ...]
    start: int
    end: int
    populators: tuple[Any, ...]  # django.db.models.query.RelatedPopulator: stateless per row
    annotations: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Statement:
    sql: str | None  # None: the ORM found the query matches nothing (EmptyResultSet), so none is sent
    params: tuple[Any, ...]
    using: str
    names: tuple[str, ...] = ()  # a values() statement's keys, in column order
    converters: Converters = field(default_factory=list)  # (column, converters, expression)
    # A bound statement's: per parameter, the position of the bound value it takes (None: compiled in).
    slots: tuple[int | None, ...] = ()
    instances: Instances | None = None  # a model statement's (model_statement)


_STATEMENTS: dict[Hashable, Statement] = {}
_STATEMENTS_MAX = 4096


def remember(key: Hashable, make: Callable[[], Statement]) -> Statement:
    found = _STATEMENTS.get(key)
    if found is None:
        found = make()
        if len(_STATEMENTS) >= _STATEMENTS_MAX:
            # Users and query strings come and go, so a long-lived process must not grow: the oldest
            # entry goes, one at a time, so a burst of new keys never drops every hot statement at once.
            _STATEMENTS.pop(next(iter(_STATEMENTS)), None)
        _STATEMENTS[key] = found
    return found


def user_key(user: Any) -> tuple[Any, ...]:
    """What a read scoped to `user` may depend on besides its query: who they are, every role flag a
    scope looks at, and the time zone their datetimes are read in. Their teams are not part of it:
    scoped querysets read memberships in the SQL itself (portal.querysets.visible_to)."""
    return (
        user.pk,
        roles.is_admin(user),
        roles.sees_everything(user),
        roles.is_read_only(user),
        timezone.get_current_timezone_name(),
    )


def values_statement(queryset: QuerySet[Any]) -> Statement:
    """A values() queryset compiled: `rows` gives what iterating the queryset would."""
    query = queryset.query
    if not query.values_select and not query.annotation_select:
        raise ValueError("values_statement() takes a values() queryset")
    compiler = query.get_compiler(queryset.db)
    try:
        sql, params = compiler.as_sql()
    except EmptyResultSet:
        return Statement(None, (), queryset.db)
    # As Django's own ValuesIterable names the columns of each row.
    names = tuple(query.selected or (*query.extra_select, *query.values_select, *query.annotation_select))
    return Statement(sql, tuple(params), queryset.db, names, _converters(compiler))


def _converters(compiler: Any) -> Converters:
    expressions = [column[0] for column in compiler.select[: compiler.col_count]]
    return [
        (position, funcs, expression)
        for position, (funcs, expression) in compiler.get_converters(expressions).items()
    ]


def model_statement(queryset: QuerySet[Any]) -> Statement:
    """A queryset of model instances compiled: `instances` gives what iterating it would, its
    select_related objects, deferred fields and annotations included."""
    if queryset._iterable_class is not ModelIterable:
        raise ValueError("model_statement() takes a queryset of model instances, not values()")
    if queryset._prefetch_related_lookups or queryset._known_related_objects:
        raise ValueError("model_statement() builds no prefetch_related or related-manager caches")
    compiler = queryset.query.get_compiler(queryset.db)
    try:
        sql, params = compiler.as_sql()
    except EmptyResultSet:
        return Statement(None, (), queryset.db)
    # Compiling filled in what ModelIterable reads after executing: the columns and the related klass_info.
    select, klass_info = compiler.select, compiler.klass_info
    start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
    build = Instances(
        model=klass_info["model"],
        init_list=tuple(column[0].target.attname for column in select[start:end]),
        start=start,
        end=end,
        populators=tuple(get_related_populators(klass_info, select, queryset.db)),
        annotations=tuple(compiler.annotation_col_map.items()),
    )
    return Statement(sql, tuple(params), queryset.db, converters=_converters(compiler), instances=build)


def count_statement(queryset: QuerySet[Any]) -> Statement:
    """count() of a queryset compiled. The rows are counted through a subquery of their keys, which
    PostgreSQL flattens: the same plan as the ORM's own count()."""
    inner = queryset.select_related(None).order_by().values("pk")
    try:
        sql, params = inner.query.get_compiler(queryset.db).as_sql()
    except EmptyResultSet:
        return Statement(None, (), queryset.db)
    # `sql` is the ORM's compiled text, its values left in `params`: nothing is interpolated.
    return Statement(f'SELECT COUNT(*) FROM ({sql}) AS "counted"', tuple(params), queryset.db)  # noqa: S608


def _convert(statement: Statement, fetched: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
    if not statement.converters:
        return fetched
    connection = connections[statement.using]
    converted = [list(row) for row in fetched]
    for row in converted:
        for position, funcs, expression in statement.converters:
            value = row[position]
            for convert in funcs:
                value = convert(value, expression, connection)
            row[position] = value
    return converted


def _fetch(statement: Statement, params: Sequence[Any] | None) -> Sequence[Sequence[Any]]:
    if statement.sql is None:
        return []
    with connections[statement.using].cursor() as cursor:
        cursor.execute(statement.sql, statement.params if params is None else tuple(params))
        return _convert(statement, cursor.fetchall())


def _rows(statement: Statement, fetched: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    # Not strict, as values(): with distinct() the ORM selects the ORDER BY columns too, after these.
    names = statement.names
    return [dict(zip(names, row, strict=False)) for row in fetched]


def _instances(statement: Statement, fetched: Sequence[Sequence[Any]]) -> list[Any]:
    build = statement.instances
    if build is None:
        if statement.sql is None:
            return []
        raise ValueError("instances() takes a model statement")
    found = []
    for row in fetched:
        obj = build.model.from_db(statement.using, build.init_list, row[build.start : build.end])
        for populator in build.populators:
            populator.populate(row, obj)
        for name, position in build.annotations:
            setattr(obj, name, row[position])
        found.append(obj)
    return found


def _first(statement: Statement, fetched: Sequence[Sequence[Any]]) -> Sequence[Any] | None:
    return fetched[0] if fetched else None


def rows(statement: Statement, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """The rows of a values statement as dicts. `params`, for a bound statement, replace the
    compiled ones (see `bind`)."""
    return _rows(statement, _fetch(statement, params))


def instances(statement: Statement, params: Sequence[Any] | None = None) -> list[Any]:
    """The model instances of a model statement, built as iterating its queryset builds them."""
    return _instances(statement, _fetch(statement, params))


# ----------------------------------------------------------------------------------------------
# Reads in one round trip. A page that polls several reads waits for the database once per read;
# on a busy machine each wait is a wake-up of PostgreSQL's backend and of the web process, which
# cost more than the reads. A plan is a generator that yields the reads it needs next (a tuple of
# `Read`) and is sent their results; `together` runs plans side by side, sending every plan's next
# reads in one round trip (psycopg's pipeline mode on PostgreSQL, one after another elsewhere) in
# the order they were yielded, each in its own statement as without the pipeline.


@dataclass(frozen=True)
class Read:
    """A statement to send, and how its rows become the result the plan is sent."""

    statement: Statement
    params: tuple[Any, ...] | None
    shape: Callable[[Statement, Sequence[Sequence[Any]]], Any]


def rows_read(statement: Statement, params: Sequence[Any] | None = None) -> Read:
    """A read whose result is `rows(statement, params)`."""
    return Read(statement, None if params is None else tuple(params), _rows)


def first_row_read(statement: Statement, params: Sequence[Any] | None = None) -> Read:
    """A read whose result is the statement's first row as a tuple (None when it has none)."""
    return Read(statement, None if params is None else tuple(params), _first)


def bound_rows_read(key: Hashable, build: Callable[..., QuerySet[Any]], /, **values: Any) -> Read:
    """A read whose result is `bound_rows(key, build, **values)`."""
    statement, params = bind(key, build, **values)
    return Read(statement, params, _rows)


def bound_instances_read(key: Hashable, build: Callable[..., QuerySet[Any]], /, **values: Any) -> Read:
    """A read whose result is `bound_instances(key, build, **values)`."""
    statement, params = _bind(key, build, model_statement, values)
    return Read(statement, params, _instances)


T = TypeVar("T")
Plan = Generator[tuple[Read, ...], list[Any], T]


def _send(reads: Sequence[Read]) -> list[Sequence[Sequence[Any]]]:
    """The rows of each read, converted; one round trip per database when there are several."""
    fetched: list[Sequence[Sequence[Any]]] = [[] for _ in reads]
    by_database: dict[str, list[int]] = {}
    for index, read in enumerate(reads):
        if read.statement.sql is not None:  # matches nothing: nothing to send
            by_database.setdefault(read.statement.using, []).append(index)
    for using, indexes in by_database.items():
        connection = connections[using]
        if len(indexes) == 1 or connection.vendor != "postgresql":
            for index in indexes:
                fetched[index] = _fetch(reads[index].statement, reads[index].params)
            continue
        cursors = [connection.cursor()]  # the first one connects (and checks the connection's health)
        try:
            # A failed statement is raised when the pipeline syncs, outside any cursor: as Django's error.
            with connection.wrap_database_errors, connection.connection.pipeline():
                for position, index in enumerate(indexes):
                    if position:
                        cursors.append(connection.cursor())
                    statement, params = reads[index].statement, reads[index].params
                    cursors[position].execute(statement.sql, statement.params if params is None else params)
            for cursor, index in zip(cursors, indexes, strict=True):
                fetched[index] = _convert(reads[index].statement, cursor.fetchall())
        finally:
            for cursor in cursors:
                cursor.close()
    return fetched


def together(*plans: Plan[Any]) -> list[Any]:
    """What each plan returns, in order. Each round sends the reads every unfinished plan yielded in
    one round trip; a plan whose next reads depend on earlier results yields again (another round)."""
    results: list[Any] = [None] * len(plans)
    waiting: dict[int, tuple[Read, ...]] = {}

    def advance(index: int, answer: list[Any] | None) -> None:
        try:
            waiting[index] = next(plans[index]) if answer is None else plans[index].send(answer)
        except StopIteration as done:
            results[index] = done.value

    for index in range(len(plans)):
        advance(index, None)
    while waiting:
        sent = list(waiting.items())
        waiting.clear()
        answers = iter(fetch(*(read for _, reads in sent for read in reads)))
        for index, reads in sent:
            advance(index, [next(answers) for _ in reads])
    return results


def fetch(*reads: Read) -> list[Any]:
    """The result of each read, in order, in one round trip."""
    return [read.shape(read.statement, rows) for read, rows in zip(reads, _send(reads), strict=True)]


def run(plan: Plan[T]) -> T:
    """What `plan` returns, its reads sent round by round."""
    result: T = together(plan)[0]
    return result


def scalar(statement: Statement) -> int:
    """The number a count_statement answers."""
    if statement.sql is None:
        return 0
    with connections[statement.using].cursor() as cursor:
        cursor.execute(statement.sql, statement.params)
        return cursor.fetchone()[0]


# Placeholders a bound statement is compiled with, one per value. Ints stay positive and within 32
# bits, so that no integer field's range check folds the lookup away ("matches nothing" or
# "matches everything"); text never holds NUL. Compiled twice, with two sets, so that a parameter
# that merely equals a placeholder is never taken for a slot.
_INT_PLACEHOLDERS = (2_000_000_000, 2_100_000_000)


def _placeholder(value: Any, position: int, generation: int) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        # None (IS NULL) or a bool would change the SQL itself, not only a parameter.
        raise TypeError(f"a bound value is an int or a str, not {type(value).__name__}")
    if isinstance(value, int):
        return _INT_PLACEHOLDERS[generation] + position
    return f"\x00bound {generation} {position}\x00"


def bind(
    key: Hashable, build: Callable[..., QuerySet[Any]], /, **values: Any
) -> tuple[Statement, tuple[Any, ...]]:
    """The values statement of build(**values), compiled once per key and shape, and the parameters
    to send it with (see `_bind`)."""
    return _bind(key, build, values_statement, values)


def _bind(
    key: Hashable,
    build: Callable[..., QuerySet[Any]],
    compile_statement: Callable[[QuerySet[Any]], Statement],
    values: dict[str, Any],
) -> tuple[Statement, tuple[Any, ...]]:
    """compile_statement(build(**values)), compiled once per key and shape, and the parameters to
    send it with. It is compiled with a placeholder in place of each value (a list: of each item;
    its length is part of the shape), so `key` names only what else the SQL depends on (e.g. the
    user, by `user_key`). build() must not branch on a value (it is called with placeholders, never
    with the real ones): what it branches on goes in the key. Raises ValueError when a value does
    not reach the parameters unchanged (e.g. a `contains` lookup wraps it) or changes the SQL."""
    flat: list[Any] = []
    shape: list[tuple[str, int | None]] = []
    for name, value in values.items():
        items = list(value) if isinstance(value, (list, tuple)) else None
        flat.extend(items if items is not None else [value])
        shape.append((name, None if items is None else len(items)))

    def compiled(generation: int) -> tuple[Statement, tuple[int | None, ...]]:
        placeholders: dict[str, Any] = {}
        position = 0
        for name, length in shape:
            count = 1 if length is None else length
            marks = [_placeholder(flat[position + i], position + i, generation) for i in range(count)]
            placeholders[name] = marks[0] if length is None else marks
            position += count
        statement = compile_statement(build(**placeholders))
        wanted = {_placeholder(v, i, generation): i for i, v in enumerate(flat)}
        return statement, tuple(
            wanted.get(p) if isinstance(p, (int, str)) else None for p in statement.params
        )

    def make() -> Statement:
        (statement, slots), (again, slots_again) = compiled(0), compiled(1)
        if statement.sql != again.sql or slots != slots_again:
            raise ValueError(f"{key!r}: the statement's SQL depends on the bound values")
        if statement.sql is not None and set(range(len(flat))) - set(slots):
            raise ValueError(f"{key!r}: a bound value does not reach the statement's parameters unchanged")
        return replace(statement, slots=slots)

    statement = remember((key, compile_statement.__name__, tuple(shape)), make)
    params = tuple(
        p if slot is None else flat[slot] for p, slot in zip(statement.params, statement.slots, strict=True)
    )
    return statement, params


def bound_rows(key: Hashable, build: Callable[..., QuerySet[Any]], /, **values: Any) -> list[dict[str, Any]]:
    """What iterating build(**values) gives, through `bind`."""
    return rows(*bind(key, build, **values))


def model_columns(model: type[Model]) -> tuple[str, ...]:
    """The columns Model.from_db takes for a whole instance: its concrete fields' attribute names."""
    return tuple(f.attname for f in model._meta.concrete_fields)


def bound_instances(key: Hashable, build: Callable[..., QuerySet[Any]], /, **values: Any) -> list[Any]:
    """What iterating build(**values) gives, a queryset of model instances (select_related, only and
    defer included), compiled once per key and shape as `bind` compiles a values statement."""
    return instances(*_bind(key, build, model_statement, values))


class CompiledRows:
    """What Django's Paginator pages through: count() and a slice of the rows of a values() queryset,
    each compiled once per key and slice. `build()` returns the queryset of rows and the queryset
    counted (the same rows without the joins only the page shows); it runs only on a first read,
    and must depend on nothing `key` does not name."""

    def __init__(self, key: Hashable, build: Callable[[], tuple[QuerySet[Any], QuerySet[Any]]]) -> None:
        self.key = key
        self._build = build
        self._built: tuple[QuerySet[Any], QuerySet[Any]] | None = None

    def _querysets(self) -> tuple[QuerySet[Any], QuerySet[Any]]:
        if self._built is None:
            self._built = self._build()
        return self._built

    def count(self) -> int:
        return scalar(remember((self.key, "count"), lambda: count_statement(self._querysets()[1])))

    def __getitem__(self, page: slice) -> list[dict[str, Any]]:
        if not isinstance(page, slice):
            raise TypeError("CompiledRows pages in slices")

        def make() -> Statement:
            return values_statement(self._querysets()[0][page])

        return rows(remember((self.key, page.start, page.stop), make))
