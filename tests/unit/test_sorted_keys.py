"""The sorted order of a set of keys kept from one read to the next: always ``sorted`` of
the set asked, the very tuple when the set did not change."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from deskpulse.streams.store import SortedKeys

NAMES = st.text(alphabet="abcxyz-|é", max_size=4)
KEYS = st.tuples(NAMES, NAMES, NAMES)


@given(st.lists(st.sets(KEYS, max_size=60), min_size=1, max_size=8))
def test_the_order_is_sorted_of_each_set_asked(sets: list[set[tuple[str, str, str]]]) -> None:
    order: SortedKeys[tuple[str, ...]] = SortedKeys()
    for keys in sets:
        assert order.of(keys) == tuple(sorted(keys))


@given(st.sets(NAMES, min_size=20, max_size=80), st.data())
def test_a_few_keys_in_and_out_are_put_in_their_places(
    names: set[str], data: st.DataObject
) -> None:
    order: SortedKeys[str] = SortedKeys()
    order.of(names)
    gone = data.draw(st.sets(st.sampled_from(sorted(names)), max_size=2))
    new = data.draw(st.sets(NAMES, max_size=2))
    changed = (names - gone) | new
    assert order.of(changed) == tuple(sorted(changed))
    # any iterable of the keys, in any order, duplicates too
    assert order.of(sorted(changed, reverse=True) * 2) == tuple(sorted(changed))


def test_the_same_set_gets_the_same_tuple() -> None:
    order: SortedKeys[str] = SortedKeys()
    first = order.of({"b", "a", "c"})
    assert first == ("a", "b", "c")
    assert order.of(["c", "a", "b"]) is first
    assert order.of(frozenset("abc")) is first
    assert order.of(set()) == ()
