"""The cardinality guard's counting, against the plain definitions it speeds up."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from deskpulse.exporters.cardinality import (
    VOLUME_FIELDS,
    Rule,
    count_present,
    needs,
    rank,
    volume,
)

NAMES = [*VOLUME_FIELDS, "ca_in", "cs_sat", "fr_sk:3"]
groups_strategy = st.dictionaries(
    st.tuples(st.sampled_from("ab"), st.sampled_from("xyz"), st.sampled_from("12")),
    st.dictionaries(st.sampled_from(NAMES), st.integers(-3, 5), max_size=8),
    max_size=12,
)
rules_strategy = st.lists(
    st.builds(
        Rule,
        st.integers(1, 4),
        st.lists(st.sampled_from(NAMES), max_size=3, unique=True).map(tuple),
    ),
    min_size=1,
    max_size=5,
)


@given(groups=groups_strategy, rules=rules_strategy, kept_count=st.integers(0, 12))
def test_presence_and_volume_are_the_rules_and_sums_they_stand_for(
    groups: dict[tuple[str, ...], dict[str, int]], rules: list[Rule], kept_count: int
) -> None:
    """A group's volume is the sum of its positive sample counts; a rule has series for a
    group when one of its fields is positive (or it names none), counted per rule."""
    for fields in groups.values():
        assert volume(fields) == sum(max(0, fields.get(name, 0)) for name in VOLUME_FIELDS)
    order = rank(groups)
    assert needs(groups, order, rules) == [
        [p for p, key in enumerate(order) if rule.present(groups[key])] for rule in rules
    ]
    kept = order[:kept_count]
    assert count_present(groups, kept, rules) == [
        sum(1 for key, fields in groups.items() if key not in kept and rule.present(fields))
        for rule in rules
    ]
