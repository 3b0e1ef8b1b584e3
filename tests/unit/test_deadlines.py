"""The deadline index against a plain dict model: same due keys, in deadline order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.deadlines import DeadlineIndex


def test_pop_due_returns_keys_strictly_before_now_earliest_first() -> None:
    index = DeadlineIndex()
    index.set("b", 20)
    index.set("a", 10)
    index.set("c", 30)
    assert index.pop_due(10) == []
    assert index.pop_due(21) == ["a", "b"]
    assert len(index) == 1 and index.get("c") == 30 and index.next() == 30


def test_moving_or_clearing_a_deadline_leaves_no_ghost() -> None:
    index = DeadlineIndex()
    index.set("a", 10)
    index.set("a", 50)  # moved later
    index.set("b", 5)
    index.set("b", None)  # nothing left to wait for
    assert index.pop_due(40) == []
    assert index.next() == 50
    assert index.pop_due(51) == ["a"]
    assert len(index) == 0 and index.next() is None


ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from("abcdefgh"), st.none() | st.integers(0, 100)),
        st.tuples(st.just("pop"), st.integers(0, 110), st.none()),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_matches_a_dict_model(steps: list[tuple[str, object, object]]) -> None:
    index, model = DeadlineIndex(), {}
    for op, a, b in steps:
        if op == "set":
            index.set(str(a), b)  # type: ignore[arg-type]
            if b is None:
                model.pop(str(a), None)
            else:
                model[str(a)] = b
        else:
            now = int(a)  # type: ignore[call-overload]
            due = sorted((d, k) for k, d in model.items() if d < now)
            assert [(model[k], k) for k in index.pop_due(now)] == due
            for _, k in due:
                del model[k]
        assert len(index) == len(model)
        assert index.next() == (min(model.values()) if model else None)


def test_pop_due_with_a_limit_takes_the_earliest_and_leaves_the_rest_due() -> None:
    index = DeadlineIndex()
    for i, key in enumerate("abcdefg"):
        index.set(key, 10 + i)
    index.set("z", 100)  # not due
    assert index.pop_due(50, limit=3) == ["a", "b", "c"]
    assert len(index) == 5
    assert index.pop_due(50, limit=3) == ["d", "e", "f"]
    assert index.pop_due(50, limit=3) == ["g"]
    assert index.pop_due(50, limit=3) == []
    assert index.get("z") == 100
